"""The commands of the co-occurrence benchmark (``python -m benchmarks.cooc --help``): ``generate``, ``pretrain``,
``baselines``, ``run`` and ``ablate``; the package's docstring shows them in use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import click

from benchmarks.ablation import CONTEXT_SETTINGS, DEFAULT_VARIANTS, VARIANTS, int_list, variant_list

from .dataset import DatasetError, generate
from .runs import ablate, run
from .scores import baselines
from .spec import DEFAULT_BACKBONE_KWARGS, RunSpec
from .stage1 import pretrain
from .study import STUDY_SEEDS, STUDY_VARIANTS, study, study_sets
from .tables import format_paired, paired_differences, read_rows


class BenchmarkCommand(click.Command):
    """A :class:`DatasetError` (sources or settings that cannot make the dataset) ends the command with its
    message and exit 1, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DatasetError as e:
            raise click.ClickException(str(e)) from None


class BenchmarkGroup(click.Group):
    command_class = BenchmarkCommand


# -- option values --------------------------------------------------------------------------------------------
def pair_list(ctx: click.Context, param: click.Parameter, value: str) -> list[tuple[str, str]]:
    """Callback of ``--pairs``: comma-separated ``A:B`` pairs of two different class names."""
    pairs = []
    for item in filter(None, (t.strip() for t in value.split(","))):
        a, sep, b = item.partition(":")
        if not sep or not a.strip() or not b.strip() or a.strip() == b.strip():
            raise click.BadParameter(f"{item!r}: give pairs as A:B with two class names, e.g. dog:person", ctx, param)
        pairs.append((a.strip(), b.strip()))
    return pairs


def scale_range(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    """Callback of ``--scale``: ``MIN,MAX`` shares of the image side, 0 < MIN <= MAX <= 1."""
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give the scale as MIN,MAX, e.g. 0.35,0.75", ctx, param) from None
    if not 0 < low <= high <= 1:
        raise click.BadParameter(f"{value!r}: need 0 < MIN <= MAX <= 1 (shares of the image side)", ctx, param)
    return low, high


def json_mapping(ctx: click.Context, param: click.Parameter, value: str) -> dict:
    """Callback of ``--backbone-kwargs``: a JSON object of timm arguments."""
    try:
        mapping = json.loads(value)
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, dict):
        raise click.BadParameter(f"{value!r} is not a JSON object; e.g. '{{\"patch_size\": 8, \"depth\": 6}}'",
                                 ctx, param)
    return mapping


SCALE_HELP = "MIN,MAX: an object's longest side, as shares of the image side."
COLOURS_HELP = ("The digits' colours: random (the class is in the shape alone) or class (a hue per class, shared "
                "by each pair: only shape tells A from B).")
CONTEXT_HELP = "A class kept on green backgrounds in train and on any in val (the context set)."
BACKBONE_KWARGS = json.dumps(DEFAULT_BACKBONE_KWARGS)
SOURCE = click.Path(exists=True, file_okay=False, path_type=Path)


def _options(*decorators: Callable) -> Callable:
    """The ``decorators`` (click options) applied in the order listed, so ``--help`` lists them in that order."""
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


# -- commands -------------------------------------------------------------------------------------------------
@click.group(cls=BenchmarkGroup, context_settings=CONTEXT_SETTINGS)
def cli() -> None:
    """A co-occurrence benchmark a CPU can learn: generate the data, pretrain the ViT (stage 1), score the trivial
    baselines, run one seed end to end, the ablation over seeds, or the mechanism study over two sets."""


@cli.command("generate")
@_options(
    click.option("--source", "sources", type=SOURCE, multiple=True, required=True,
                 help="A VOC- or COCO-layout dataset with GT masks (repeatable)."),
    click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                 help="The dataset folder to write."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--pairs", default="", callback=pair_list, help="Co-occurring pairs A:B, comma-separated."),
    click.option("--classes", default=None, help="Comma-separated class names [default: the most instanced]."),
    click.option("--num-classes", type=click.IntRange(min=1), default=5, show_default=True,
                 help="Foreground classes when --classes is not given."),
    click.option("--train", "n_train", type=click.IntRange(min=1), default=2000, show_default=True,
                 help="Train images."),
    click.option("--val", "n_val", type=click.IntRange(min=1), default=300, show_default=True, help="Val images."),
    click.option("--size", type=click.IntRange(min=8), default=128, show_default=True, help="Image side, pixels."),
    click.option("--cooc", type=click.FloatRange(0, 1), default=0.85, show_default=True,
                 help="Share of A's train images that hold B."),
    click.option("--context", default=None, help=CONTEXT_HELP),
    click.option("--min-area", type=int, default=400, show_default=True, help="Smallest instance, source pixels."),
    click.option("--min-visible", type=int, default=40, show_default=True,
                 help="Visible pixels for a pasted class to be tagged."),
    click.option("--digits", is_flag=True,
                 help="Objects: the bundled handwritten digits (classes zero..nine); --source gives backgrounds."),
    click.option("--background-blur", type=click.FloatRange(min=0), default=0.0, show_default=True,
                 help="Gaussian blur of the backgrounds, pixels."),
    click.option("--scale", default="0.35,0.75", show_default=True, callback=scale_range, help=SCALE_HELP),
    click.option("--colours", type=click.Choice(["random", "class"]), default="random", show_default=True,
                 help=COLOURS_HELP),
)
def generate_command(sources: tuple[Path, ...], out: Path, classes: str | None, **settings) -> None:
    """Write the dataset (a VOC layout every seco command reads) and print its statistics."""
    info = generate(list(sources), out, classes=classes.split(",") if classes else None, **settings)
    click.echo(json.dumps({k: info[k] for k in ("classes", "images", "instances", "cooccurrence", "seconds")},
                          indent=1))


@cli.command("pretrain")
@_options(
    click.option("--data", required=True, type=SOURCE, help="A dataset written by generate."),
    click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                 help="The weights file to write (for seco train --backbone-weights)."),
    click.option("--backbone", default="vit_tiny_patch16_224", show_default=True, help="timm ViT name."),
    click.option("--backbone-kwargs", default=BACKBONE_KWARGS, show_default=True, callback=json_mapping,
                 help="JSON timm arguments of the ViT."),
    click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True),
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Mosaics per step (each of mosaic x mosaic images)."),
    click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (one-cycle)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--device", default="cpu", show_default=True, help="cpu | cuda | cuda:N"),
    click.option("--pool", type=click.Choice(["max", "mean", "cls"]), default="max", show_default=True,
                 help="How the head pools its patch logits, or cls: it reads the class token."),
    click.option("--mosaic", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Train on k x k mosaics, each tile classified alone."),
    click.option("--position", type=click.Choice(["sincos", "frozen"]), default="sincos", show_default=True,
                 help="Position embedding: learnt from 2D sin-cos, or SeCo's frozen random one."),
)
def pretrain_command(data: Path, out: Path, **settings) -> None:
    """Stage 1: classification pretraining of the ViT on a generated set; prints its scores."""
    click.echo(json.dumps(pretrain(data, out, **settings), indent=1))


@cli.command("baselines")
@click.option("--data", required=True, type=SOURCE, help="A dataset written by generate.")
@click.option("--split", default="train", show_default=True)
def baselines_command(data: Path, split: str) -> None:
    """Tag-only masks' mIoU on a generated split: what a pseudo label must beat."""
    click.echo(json.dumps(baselines(data, split), indent=1))


def run_spec_options(f: Callable) -> Callable:
    """The options of ``run`` and ``ablate`` that make a :class:`RunSpec` (:func:`spec_from_options`)."""
    return _options(
        click.option("--source", "sources", type=SOURCE, multiple=True, required=True,
                     help="A VOC- or COCO-layout dataset with GT masks (repeatable)."),
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Results folder; a second call resumes it."),
        click.option("--pairs", default="dog:person", show_default=True, callback=pair_list,
                     help="Co-occurring pairs A:B, comma-separated."),
        click.option("--num-classes", type=click.IntRange(min=1), default=5, show_default=True),
        click.option("--train", "n_train", type=click.IntRange(min=1), default=2000, show_default=True,
                     help="Train images."),
        click.option("--val", "n_val", type=click.IntRange(min=1), default=300, show_default=True,
                     help="Val images."),
        click.option("--size", type=click.IntRange(min=8), default=128, show_default=True,
                     help="Image side, pixels (and SeCo's crop)."),
        click.option("--digits", is_flag=True, help="Objects: the bundled handwritten digits."),
        click.option("--background-blur", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="Gaussian blur of the backgrounds, pixels."),
        click.option("--scale", default="0.35,0.75", show_default=True, callback=scale_range, help=SCALE_HELP),
        click.option("--colours", type=click.Choice(["random", "class"]), default="random", show_default=True,
                     help=COLOURS_HELP),
        click.option("--context", default=None, help=CONTEXT_HELP + " The result adds its spread (val: the "
                     "SeCo decoder's predictions)."),
        click.option("--backbone-kwargs", default=BACKBONE_KWARGS, show_default=True, callback=json_mapping,
                     help="JSON timm arguments of the ViT (stage 1 and SeCo)."),
        click.option("--pretrain-steps", type=click.IntRange(min=1), default=2000, show_default=True),
        click.option("--pretrain-lr", type=float, default=1e-3, show_default=True),
        click.option("--mosaic", type=click.IntRange(1, 5), default=1, show_default=True,
                     help="Stage 1 on k x k mosaics (1: whole images)."),
        click.option("--seg-iters", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Segmenter steps (0: no segmenter step)."),
        click.option("--iters", type=click.IntRange(min=1), default=300, show_default=True, help="SeCo steps."),
        click.option("--device", default="cpu", show_default=True, help="cpu | cuda | cuda:N"),
        click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Torch threads of each seco command."),
    )(f)


def spec_from_options(sources: tuple[Path, ...], **settings) -> RunSpec:
    """The :class:`RunSpec` of ``run``'s or ``ablate``'s options (``--out`` and the per-call ones taken out)."""
    return RunSpec(sources=sources, **settings)


@cli.command("run")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--variant", type=click.Choice(list(VARIANTS)), default="full", show_default=True,
              help="An ablation variant (benchmarks/ablation.py).")
@click.option("--data", type=SOURCE, default=None, help="A dataset already generated [default: OUT/data].")
@run_spec_options
def run_command(out: Path, seed: int, variant: str, **settings) -> None:
    """One seed end to end: generate, stage 1, SeCo, export, scores (resumable); prints result_<variant>.json."""
    click.echo(json.dumps(run(spec_from_options(**settings), out, seed=seed, variant=variant), indent=1))


@cli.command("ablate")
@click.option("--seeds", default="0,1,2", show_default=True, callback=int_list,
              help="Comma-separated seeds: one dataset and stage 1 per seed, shared by its variants.")
@click.option("--variants", default=",".join(DEFAULT_VARIANTS), show_default=True, callback=variant_list,
              help="Comma-separated subset of " + ", ".join(VARIANTS) + ".")
@run_spec_options
def ablate_command(out: Path, seeds: list[int], variants: list[str], **settings) -> None:
    """The ablation variants over seeds, tabulated (resumable); prints ablation.md."""
    click.echo(ablate(spec_from_options(**settings), out, seeds=seeds, variants=variants))


@cli.command("paired")
@click.option("--csv", "csv_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An ablation.csv (ablate, study).")
def paired_command(csv_path: Path) -> None:
    """The paired differences and verdicts of an ablation's runs, seed by seed; prints the table."""
    click.echo(format_paired(paired_differences(read_rows(csv_path))), nl=False)


@cli.command("study")
@click.option("--source", "sources", type=SOURCE, multiple=True, required=True,
              help="A VOC- or COCO-layout dataset with GT masks (repeatable): the backgrounds.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Results folder (OUT/colours, OUT/context, OUT/study.md); a second call resumes it.")
@click.option("--seeds", default=",".join(map(str, STUDY_SEEDS)), show_default=True, callback=int_list,
              help="Comma-separated seeds: one dataset and stage 1 per seed and set, shared by its variants.")
@click.option("--variants", default=",".join(STUDY_VARIANTS), show_default=True, callback=variant_list,
              help="Comma-separated subset of " + ", ".join(VARIANTS) + ".")
@click.option("--jobs", type=click.IntRange(1, 2), default=2, show_default=True, help="Sets run side by side.")
@click.option("--tables-only", is_flag=True, help="Run nothing: write the tables of the runs finished so far.")
def study_command(sources: tuple[Path, ...], out: Path, seeds: list[int], variants: list[str], jobs: int,
                  tables_only: bool) -> None:
    """The mechanism study: both sets (class colours; the same with a context class) x variants x seeds, then
    each mechanism's verdict (resumable); prints the verdict table."""
    click.echo(study(study_sets(sources), out, seeds=seeds, variants=variants, jobs=jobs,
                     run_missing=not tables_only))


def main() -> None:
    cli(prog_name="python -m benchmarks.cooc")
