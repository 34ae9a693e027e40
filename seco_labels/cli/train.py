"""``seco train``: train SeCo on images with class tags.

Also the resume/interrupt reporting that ``seco demo`` and ``seco fit-segmenter`` share (:func:`report_resume`,
:func:`exit_interrupted`, :func:`format_summary`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import cli
from .options import (
    classes_option,
    config_key_option,
    config_options,
    lock_out,
    out_option,
    resolve_config,
    schedule_kept_on_resume,
    starts_fresh,
)

#: log fields that count things: printed as integers
COUNT_KEYS = ("crops_tagged", "crops_rectified", "steps")


def allow_changes_option(func):
    """``--allow-changes``: resume even though the config differs from the checkpoint's in a way that alters the
    run (the changes are recorded in RUN_DIR/config_changes.jsonl)."""
    return click.option(
        "--allow-changes", is_flag=True,
        help="With --resume: continue even if the config changes the run (lr, loss weights, seed, crops...); the "
             "changes are recorded in RUN_DIR/config_changes.jsonl. Extending train.iters needs no flag.",
    )(func)


def format_summary(result: dict[str, Any]) -> str:
    """``key value`` pairs of a trainer's result: counts as integers, the lr in scientific notation, other numbers
    to 4 decimals; the step index, the step time and None values are left out."""
    parts = []
    for k, v in result.items():
        if k in ("step", "time") or v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if k in COUNT_KEYS:
            parts.append(f"{k} {int(v)}")
        elif k == "lr":
            parts.append(f"lr {v:.3e}")
        else:
            parts.append(f"{k} {v:.4f}")
    return ", ".join(parts)


def report_resume(trainer: Any, run_dir: str | Path, spec: str | None) -> None:
    """Say on stderr what :meth:`seco_labels.training.run_state.RunState.resume` did: the step it continues at and the
    recorded config changes, or that ``--resume auto`` found no checkpoint and the run starts at step 0."""
    if trainer.resumed_from is not None:
        click.echo(f"resuming {run_dir} at step {trainer.step}", err=True)
        if trainer.config_changes:
            listed = ", ".join(str(c) for c in trainer.config_changes)
            click.echo(f"config changed since the checkpoint: {listed} (recorded in "
                       f"{Path(run_dir) / 'config_changes.jsonl'})", err=True)
    elif spec == "auto":
        click.echo(f"no checkpoint in {run_dir}: starting at step 0", err=True)


def report_finished(trainer: Any, run_dir: str | Path, result: dict[str, Any]) -> None:
    """For a run that had already finished: say so, with the last logged losses and validation."""
    click.echo(f"{run_dir} already finished at step {trainer.step}/{trainer.cfg.train.iters}; nothing to do")
    summary = format_summary(result)
    if summary:
        click.echo(f"last logged: {summary}")


def exit_interrupted(e: Any, hint: str, *, echo: bool = True) -> None:
    """Print the :class:`~seco_labels.training.run_state.TrainingInterrupted` message with ``hint`` (how to continue) and exit
    with its code (130 after SIGINT, 143 after SIGTERM)."""
    if echo:
        click.echo(f"{e}; {hint}", err=True)
    raise click.exceptions.Exit(e.exit_code)


@cli.command("train")
@config_options
@config_key_option("data.root", "--data-root", type=click.Path(file_okay=False), help="Dataset root (data.root).")
@config_key_option("data.layout", "--layout",
                   help="Dataset layout: voc | coco | coco-seco | folder (images/ + tags.csv; data.layout). "
                        "Default: folder when --data-root holds images/ and tags.csv or tags.jsonl, else the "
                        "preset's.")
@config_key_option("data.train_split", "--split", help="Training split (data.train_split).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Folder layout without split lists: draw --split/--val-split at random (this fraction for "
                   "validation, seeded by --split-seed) into DATA/splits/, or check the lists there are this draw.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the --val-fraction draw.")
@config_key_option("data.val_split", "--val-split",
                   help="Validation split with GT masks (data.val_split); '' for none.")
@classes_option
@out_option("--out", "run_dir", required=True, help="Run folder.")
@config_key_option("model.backbone_weights", "--backbone-weights", metavar="TAG|hf-hub:ORG/NAME|FILE|random",
                   help="Pretrained ViT weights (model.backbone_weights): a timm tag (the voc and coco presets: "
                        "vit_base_patch16_224.orig_in21k_ft_in1k, the paper's), a Hugging Face repo, a local state "
                        "dict, or random. Names download once into the Hugging Face cache (HF_HUB_CACHE).")
@config_key_option("train.iters", "--iters", type=int, help="Training iterations (train.iters).")
@config_key_option("data.batch_size", "--batch-size", type=int,
                   help="Images per step, summed over processes under torchrun (data.batch_size).")
@config_key_option("train.log", "--log", type=click.Choice(["jsonl", "tensorboard"]),
                   help="tensorboard: also write RUN_DIR/tensorboard/ (loss terms, lr, validation scores and images; "
                        "needs pip install \"seco-labels[tensorboard]\"). RUN_DIR/metrics.jsonl is always written "
                        "(train.log; default jsonl).")
@click.option("--resume", default=None, metavar="auto|PATH",
              help="Continue RUN_DIR/last.pt (auto; starts at step 0 when there is none) or the given checkpoint.")
@allow_changes_option
def train_cmd(preset, config_file, overrides, quiet, val_fraction, split_seed, run_dir, resume, allow_changes):
    """Train SeCo; writes RUN_DIR/config.yaml, RUN_DIR/last.pt and RUN_DIR/metrics.jsonl.

    Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves RUN_DIR/last.pt and exits with 130 (SIGINT) or
    143 (SIGTERM); --resume auto continues from there. When stderr is not a terminal, a plain progress line is
    written every train.log_every steps.

    Under torchrun (torchrun --nproc_per_node N -m seco_labels.cli train ...) the N processes train one model
    with DistributedDataParallel; see docs/distributed.md.
    """
    from ..runtime.distributed import is_primary_process, shutdown_distributed
    from ..training.run_folder import RUN_LOCK
    from ..training.signals import TrainingInterrupted
    from ..training.sinks import require_log
    from ..training.trainer import Trainer, resolve_backbone_weights

    lock_out(run_dir, RUN_LOCK, "a training run")
    cfg = resolve_config(preset, config_file, overrides)
    require_log(cfg.train.log)  # a missing tensorboard stops the run now, not after the model and data are built
    if val_fraction is not None:
        from ..data import FolderReader, write_folder_splits

        if cfg.data.layout != FolderReader.layout:
            raise click.UsageError(f"--val-fraction draws the split lists of the folder layout, not of layout "
                                   f"{cfg.data.layout!r} (its lists are part of the dataset)")
        if not cfg.data.val_split:
            raise click.UsageError("--val-fraction needs a validation split name: drop --val-split ''")
        write_folder_splits(cfg.data.root, val_fraction, split_seed, train=cfg.data.train_split,
                            val=cfg.data.val_split, require_masks=True)
    # the weights before the data: a missing download stops a new run at once (a resume does not read them)
    weights = resolve_backbone_weights(cfg.model) if starts_fresh(run_dir, resume) else None
    try:
        trainer = Trainer(cfg, run_dir, quiet=quiet, weights=weights)
        primary = trainer.dist.is_primary
        trainer.resume(resume, allow_changes=allow_changes, keep=schedule_kept_on_resume())
        if primary:
            report_resume(trainer, run_dir, resume)
        result = trainer.fit()
    except TrainingInterrupted as e:
        exit_interrupted(e, "to continue, run the same command with --resume auto", echo=is_primary_process())
    finally:
        shutdown_distributed()
    if not primary:
        return
    if trainer.already_finished:
        report_finished(trainer, run_dir, result)
        return
    procs = f" with {trainer.dist.world_size} processes" if trainer.dist.distributed else ""
    click.echo(f"trained {trainer.step} steps into {run_dir}{procs}: {format_summary(result)}")
