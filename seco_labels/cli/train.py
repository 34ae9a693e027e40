"""``seco train``: train SeCo on images with class tags."""

from __future__ import annotations

import click

from ..runtime.pretrained import PAPER_BACKBONE_WEIGHTS
from . import cli
from .options import (
    allow_changes_option,
    classes_option,
    config_key_option,
    config_options,
    iters_option,
    lock_out,
    log_option,
    out_option,
    preset_configs,
    preset_option,
    resolve_config,
    resume_option,
    schedule_kept_on_resume,
    starts_fresh,
    val_split_option,
)
from .run_output import exit_interrupted, format_summary, report_finished, report_resume


@cli.command("train")
@preset_option()
@config_options(preset_configs)
@config_key_option("data.root", "--data-root", type=click.Path(file_okay=False), help="Dataset root (data.root).")
@config_key_option("data.layout", "--layout",
                   help="Dataset layout: voc | coco | coco-seco | folder (images/ + tags.csv; data.layout). "
                        "Default: folder when --data-root holds images/ and tags.csv or tags.jsonl, else the "
                        "preset's.")
@config_key_option("data.train_split", "--split", configs=preset_configs, help="Training split (data.train_split).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Folder layout without split lists: draw --split/--val-split at random (this fraction for "
                   "validation, seeded by --split-seed) into DATA/splits/, or check the lists there are this draw.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the --val-fraction draw.")
@val_split_option(preset_configs)
@classes_option
@out_option("--out", "run_dir", required=True, help="Run folder.")
@config_key_option("model.backbone_weights", "--backbone-weights", metavar="TAG|hf-hub:ORG/NAME|FILE|random",
                   configs=preset_configs,
                   help=f"Pretrained ViT weights (model.backbone_weights): a timm tag (the paper's: "
                        f"{PAPER_BACKBONE_WEIGHTS}), a Hugging Face repo, a local state dict, or random. Names "
                        "download once into the Hugging Face cache (HF_HUB_CACHE).")
@iters_option(preset_configs)
@config_key_option("data.batch_size", "--batch-size", type=int, configs=preset_configs,
                   help="Images per step, summed over processes under torchrun (data.batch_size).")
@log_option(preset_configs)
@resume_option
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
