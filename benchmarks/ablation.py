"""SeCo's ablation on any dataset: train variants with identical seeds and data, export, evaluate, tabulate.

    # the offline proxy committed to docs/benchmarks.md (2-core CPU, random-init tiny ViT, voc-mini)
    python -m benchmarks.ablation --out ablation/voc-mini --data-root ../shared/data/voc-mini --preset demo \\
        --seeds 0,1,2 --jobs 2

    # the paper's ablation: one GPU, full VOC, ImageNet ViT-B/16 weights (docs/reproduce.md)
    python -m benchmarks.ablation --out ablation/voc --data-root VOC2012 --preset voc --split train_aug \\
        --eval-split train --val-split val --seg-crf --device cuda --seeds 0,1,2

Variants (each is a config switch of the model and losses, :data:`VARIANTS`; no code fork):

- ``baseline``: classification + aux classification + segmentation (with its CRF-energy regulariser) only;
- ``no_lig``, ``no_lil``: full SeCo without the local-to-global / local-to-local contrast;
- ``no_rectify``: full SeCo without the rectification of noisy crop tags;
- ``full``: the preset as it is;
- ``no_contrast`` (not run by default): SeCo without LIG and LIL, so ``baseline`` + PTC: what PTC alone adds.

Every (variant, seed) runs the real commands: ``seco train`` -> ``seco export-masks --split EVAL`` -> ``seco
evaluate --cams``, in ``OUT/<variant>/seed<k>/``; finished steps are kept, so an interrupted ablation resumes.
Reported per variant as mean ± std (sample std) over seeds:

- **CAM mIoU**: raw multi-scale CAMs at the best background threshold of the sweep (``cams_metrics_<split>.json``);
- **pseudo-mask mIoU**: the exported masks after PAR and the background thresholds; their uncertain pixels are
  skipped, as in ``seco evaluate`` (``metrics_<split>.json``);
- **FP/TP**: the confusion ratio of the pseudo masks (SeCo Table 3; lower is better);
- with ``--val-split``: the **decoder mIoU** on that split, from ``seco segment`` (multi-scale + flip, with
  ``--seg-crf`` the dense CRF: the paper's protocol; its ablation reports this on VOC val).

Writes ``OUT/ablation.md`` (table + settings), ``OUT/ablation.csv`` (one row per run) and ``OUT/ablation.png``.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from PIL import Image

from benchmarks.commands import run_logged, seco_command
from seco_labels.config import get_preset
from seco_labels.evaluation.plots import draw_grouped_bars, nice_ceil
from seco_labels.io import atomic_path, atomic_write_text

#: name -> (description, config overrides on top of the preset)
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "baseline": ("cls + aux + seg only", {"loss.ptc.weight": 0, "loss.lig.weight": 0, "loss.lil.weight": 0}),
    "no_lig": ("SeCo without LIG", {"loss.lig.weight": 0}),
    "no_lil": ("SeCo without LIL", {"loss.lil.weight": 0}),
    "no_rectify": ("SeCo without rectification", {"loss.rectify": False}),
    "full": ("SeCo", {}),
    "no_contrast": ("SeCo without LIG and LIL", {"loss.lig.weight": 0, "loss.lil.weight": 0}),
}
#: the published ablation's variants, run when none are named
DEFAULT_VARIANTS = ("baseline", "no_lig", "no_lil", "no_rectify", "full")
#: (key, label, is a fraction shown in %)
METRICS = (("cam_miou", "CAM mIoU", True), ("mask_miou", "pseudo-mask mIoU", True), ("fp_tp", "FP/TP", False))


@dataclass(frozen=True)
class AblationSpec:
    """What every (variant, seed) of one ablation shares: where it writes, the data, the preset and the commands'
    options. ``None`` leaves a setting to the preset."""

    out: Path  #: results folder: one ``<variant>/seed<k>/`` per run
    data_root: str  #: the dataset ``seco train`` reads (``--data-root``)
    preset: str = "demo"
    split: str = "train"  #: the training split
    eval_split: str | None = None  #: the split exported and scored (None: the training split)
    val_split: str = ""  #: a split with GT on which ``seco segment`` scores the decoder ("" : none)
    seg_crf: bool = False  #: the dense CRF in ``seco segment`` (the paper's protocol)
    #: export and segment with the mirror image too (False for classes that are not mirror-symmetric)
    export_flip: bool = True
    iters: int | None = None
    crop: int | None = None  #: training crop size, pixels
    config: str | None = None  #: a config file on top of the preset
    backbone_weights: str | None = None
    sets: tuple[str, ...] = ()  #: extra ``KEY=VALUE`` overrides, after the variant's own
    device: str = "auto"

    @property
    def scored_split(self) -> str:
        """The split exported and scored."""
        return self.eval_split or self.split


def run_one(spec: AblationSpec, variant: str, seed: int, threads: int) -> dict:
    """Train, export and evaluate one (variant, seed) in ``spec.out/<variant>/seed<seed>/`` with ``threads`` OpenMP
    threads per command; returns its scores (cached in ``result.json``: a finished run is read, not redone).

    Raises:
        KeyError: ``variant`` is not in :data:`VARIANTS`.
        RuntimeError: a ``seco`` command failed (the message names the log).
    """
    overrides = VARIANTS[variant][1]
    folder = Path(spec.out) / variant / f"seed{seed}"
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    log, run, art = folder / "log.txt", folder / "run", folder / "art"
    split = spec.scored_split
    sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()] + list(spec.sets)
    if spec.crop:
        sets.append(f"data.crop_size={spec.crop}")
    train = ["train", "--preset", spec.preset, "--data-root", str(spec.data_root), "--split", spec.split,
             "--val-split", "", "--seed", str(seed), "--out", str(run), "--device", spec.device, "--quiet",
             "--resume", "auto"]
    optional = (("--config", spec.config), ("--iters", spec.iters), ("--backbone-weights", spec.backbone_weights))
    for opt, value in optional:
        if value is not None:
            train += [opt, str(value)]
    for s in sets:
        train += ["--set", s]
    t0 = time.perf_counter()
    run_logged(seco_command(*train), threads, log)
    t1 = time.perf_counter()
    run_logged(seco_command("export-masks", "--checkpoint", str(run / "last.pt"), "--split", split, "--out", str(art),
                            "--device", spec.device, "--num-workers", "0", "--quiet",
                            *([] if spec.export_flip else ["--no-flip"])), threads, log)
    run_logged(seco_command("evaluate", "--pred", str(art), "--split", split, "--cams", "--quiet"), threads, log)
    masks = json.loads((art / f"metrics_{split}.json").read_text())
    cams = json.loads((art / f"cams_metrics_{split}.json").read_text())
    seg_miou = None
    if spec.val_split:  # the paper's metric: the decoder, multi-scale + flip (+ CRF), on the val split
        seg = folder / "seg"
        run_logged(seco_command("segment", "--checkpoint", str(run / "last.pt"), "--split", spec.val_split,
                                "--out", str(seg), "--device", spec.device, "--quiet",
                                *(["--crf"] if spec.seg_crf else []),
                                *([] if spec.export_flip else ["--no-flip"])), threads, log)
        run_logged(seco_command("evaluate", "--pred", str(seg), "--split", spec.val_split, "--quiet"), threads, log)
        seg_miou = json.loads((seg / f"metrics_{spec.val_split}.json").read_text())["miou"]
    result = {
        "variant": variant, "seed": seed, "cam_miou": cams["miou"], "cam_threshold": cams["cam_threshold"],
        "mask_miou": masks["miou"], "fp_tp": masks["fp_tp"], "fp_tp_bg": masks["fp_tp_bg"],
        "fp_tp_fg": masks["fp_tp_fg"], "seg_miou": seg_miou,
        "train_seconds": round(t1 - t0, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(result_file, json.dumps(result, indent=2))
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict], variants: list[str],
              columns: tuple[tuple[str, str, bool], ...] = METRICS) -> dict[str, dict[str, tuple[float, float]]]:
    """variant -> metric of ``columns`` -> (mean, sample std) over its seeds (NaN when no seed has a value)."""
    out = {}
    for v in variants:
        rows = [r for r in results if r["variant"] == v]
        out[v] = {}
        for key, _, _ in columns:
            values = [r[key] for r in rows if r.get(key) is not None]
            out[v][key] = _mean_std(values) if values else (float("nan"), float("nan"))
        segs = [r["seg_miou"] for r in rows if r.get("seg_miou") is not None]
        if segs:
            out[v]["seg_miou"] = _mean_std(segs)
    return out


def format_markdown(summary: dict, results: list[dict], settings: str,
                    columns: tuple[tuple[str, str, bool], ...] = METRICS) -> str:
    """The table of ``summarize``: one row per variant, ``columns`` (key, label, shown in %) as mean ± std."""
    seeds = sorted({r["seed"] for r in results})
    seg = all("seg_miou" in m for m in summary.values())
    labels = [f"{label} (%)" if pct else label for _, label, pct in columns]
    head = "| variant | what | " + " | ".join(labels) + " |" + (" decoder mIoU (%) |" if seg else "")
    lines = [f"Mean ± std over seeds {', '.join(map(str, seeds))}. {settings}", "", head,
             "|---|---|" + "---|" * len(columns) + ("---|" if seg else "")]
    for v, m in summary.items():
        cells = [f"{100 * m[k][0]:.2f} ± {100 * m[k][1]:.2f}" if pct else f"{m[k][0]:.3f} ± {m[k][1]:.3f}"
                 for k, _, pct in columns]
        if seg:
            cells.append(f"{100 * m['seg_miou'][0]:.2f} ± {100 * m['seg_miou'][1]:.2f}")
        lines.append(f"| `{v}` | {VARIANTS[v][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    keys = list(results[0])
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(results)
    return buf.getvalue()


def draw(summary: dict, path: Path, title: str, extra: tuple = ()) -> None:
    """mIoU chart (CAM, pseudo mask) above the FP/TP chart, then the ``extra`` charts, each ``(((key, label), ...),
    title, scale, digits)``; bars = variants, whiskers = std."""
    names = list(summary)
    charts = []
    labelled = tuple((k, label) for k, label, _ in METRICS)

    def shown(x: float) -> float | None:  # a figure no seed has (FP/TP without a true positive) is NaN: no bar
        return x if math.isfinite(x) else None

    for columns, chart_title, scale, digits in (
        (labelled[:2], f"{title}: mIoU (%), mean ± std", 100.0, 1),
        (labelled[2:], "FP/TP (lower is better), mean ± std", 1.0, 2),
        *extra,
    ):
        groups = [(label, [shown(summary[v][k][0]) for v in names]) for k, label in columns]
        errors = [[shown(summary[v][k][1]) for v in names] for k, _ in columns]
        ends = [summary[v][k][0] + summary[v][k][1] for v in names for k, _ in columns]
        top = max([e for e in ends if math.isfinite(e)], default=1.0)  # and no part in the axis
        img, _ = draw_grouped_bars(groups, names, title=chart_title, errors=errors, axis_max=nice_ceil(top * 1.1),
                                   scale=scale, digits=digits)
        charts.append(img)
    canvas = Image.new("RGB", (max(c.width for c in charts), sum(c.height for c in charts)), "white")
    y = 0
    for c in charts:
        canvas.paste(c, (0, y))
        y += c.height
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def ablate(spec: AblationSpec, seeds: list[int], variants: list[str], jobs: int = 1) -> str:
    """Every (variant, seed) through :func:`run_one`, ``jobs`` at a time (each with its share of the CPU's threads),
    then ``OUT/ablation.md`` (:func:`format_markdown`, with the settings), ``OUT/ablation.csv`` and
    ``OUT/ablation.png``. Resumable. Returns the table."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    todo = [(v, s) for s in seeds for v in variants]
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, spec, v, s, threads): (v, s) for v, s in todo}
        for n, fut in enumerate(cf.as_completed(futures), 1):
            v, s = futures[fut]
            r = fut.result()
            print(f"[{n}/{len(todo)}] {v} seed {s}: CAM {100 * r['cam_miou']:.2f}, mask {100 * r['mask_miou']:.2f}, "
                  f"FP/TP {r['fp_tp']:.3f} ({r['total_seconds']:.0f} s)", file=sys.stderr, flush=True)
    results = [run_one(spec, v, s, threads) for v, s in todo]  # cached: reads result.json
    summary = summarize(results, variants)
    settings = (f"Preset `{spec.preset}`, training split `{spec.split}`, scored on `{spec.scored_split}` of "
                f"`{spec.data_root}`, {spec.iters or 'preset'} iterations"
                + (f", crop {spec.crop}" if spec.crop else "") + (f", overrides {list(spec.sets)}" if spec.sets else "")
                + (f", decoder scored on `{spec.val_split}`" + (" with CRF" if spec.seg_crf else "")
                   if spec.val_split else "")
                + f", backbone weights `{spec.backbone_weights or get_preset(spec.preset).model.backbone_weights}`"
                + f"; {time.perf_counter() - started:.0f} s wall.")
    table = format_markdown(summary, results, settings)
    atomic_write_text(out / "ablation.md", table)
    atomic_write_text(out / "ablation.csv", format_csv(results))
    draw(summary, out / "ablation.png", title=f"{spec.preset} on {Path(spec.data_root).name}")
    return table


# -- command line ----------------------------------------------------------------------------------------------
def int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    """Callback of a comma-separated list of integers (``--seeds 0,1,2``)."""
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give integers separated by commas, e.g. 0,1,2", ctx, param) from None
    if not values:
        raise click.BadParameter("give at least one, e.g. 0,1,2", ctx, param)
    return values


def variant_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    """Callback of a comma-separated list of :data:`VARIANTS` names (``--variants full,no_lig``)."""
    variants = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise click.BadParameter(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}", ctx, param)
    return variants


#: the click settings of the benchmarks' commands, as the ``seco`` command's
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=CONTEXT_SETTINGS, help=__doc__.split("\n\n")[0])
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Results folder; a second call resumes it (finished runs are read, not redone).")
@click.option("--data-root", required=True, type=click.Path(exists=True), help="The dataset seco train reads.")
@click.option("--preset", default="demo", show_default=True, help="Config preset.")
@click.option("--config", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Config file on top of the preset.")
@click.option("--split", default="train", show_default=True, help="Training split.")
@click.option("--eval-split", default=None, help="Split exported and scored [default: the training split].")
@click.option("--val-split", default="", help="Split (with GT) on which the decoder is scored with seco segment "
              "(the paper's table: val) [default: none].")
@click.option("--seg-crf", is_flag=True, help="Dense CRF in seco segment (the paper's protocol).")
@click.option("--export-flip/--no-export-flip", default=True, show_default=True,
              help="Export with the flipped CAMs; --no-export-flip for data whose classes are not mirror-symmetric.")
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help="Training iterations [default: the preset's].")
@click.option("--crop", type=click.IntRange(min=1), default=None, help="Training crop size [default: the preset's].")
@click.option("--seeds", default="0,1,2", show_default=True, callback=int_list,
              help="Comma-separated seeds; every variant runs once with each.")
@click.option("--variants", default=",".join(DEFAULT_VARIANTS), show_default=True, callback=variant_list,
              help="Comma-separated subset of " + ", ".join(VARIANTS) + ".")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Extra config override (repeatable).")
@click.option("--backbone-weights", default=None, help="Starting weights of the backbone [default: the preset's].")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs at once (on a CPU the threads are shared out).")
def cli(out: Path, data_root: str, preset: str, config: str | None, split: str, eval_split: str | None,
        val_split: str, seg_crf: bool, export_flip: bool, iters: int | None, crop: int | None, seeds: list[int],
        variants: list[str], sets: tuple[str, ...], backbone_weights: str | None, device: str, jobs: int) -> None:
    spec = AblationSpec(out=out, data_root=data_root, preset=preset, split=split, eval_split=eval_split,
                        val_split=val_split, seg_crf=seg_crf, export_flip=export_flip, iters=iters, crop=crop,
                        config=config, backbone_weights=backbone_weights, sets=tuple(sets), device=device)
    click.echo(ablate(spec, seeds, variants, jobs))


def main() -> None:
    cli(prog_name="python -m benchmarks.ablation")


if __name__ == "__main__":
    main()
