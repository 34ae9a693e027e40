"""``seco train``: train SeCo on images with class tags."""

from __future__ import annotations

import click

from . import cli
from .options import config_options, resolve_config


@cli.command("train")
@config_options
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Dataset root (data.root).")
@click.option("--layout", default=None, help="Dataset layout: voc | coco | coco-seco (data.layout).")
@click.option("--split", default=None, help="Training split (data.train_split).")
@click.option("--val-split", default=None, help="Validation split with GT masks (data.val_split); '' for none.")
@click.option("--out", "run_dir", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--backbone-weights", type=click.Path(dir_okay=False), default=None,
              help="Local ViT weights file (model.backbone_weights); default random init.")
@click.option("--iters", type=int, default=None, help="Training iterations (train.iters).")
@click.option("--batch-size", type=int, default=None,
              help="Images per step, summed over processes under torchrun (data.batch_size).")
@click.option("--resume", default=None, metavar="auto|PATH",
              help="Continue RUN_DIR/last.pt (auto) or the given checkpoint.")
def train_cmd(preset, config_file, overrides, seed, device, quiet, data_root, layout, split, val_split, run_dir,
              backbone_weights, iters, batch_size, resume):
    """Train SeCo; writes RUN_DIR/config.yaml, RUN_DIR/last.pt and RUN_DIR/metrics.jsonl.

    Under torchrun (torchrun --nproc_per_node N -m seco_labels.cli train ...) the N processes train one model
    with DistributedDataParallel; see docs/distributed.md.
    """
    from ..distributed import shutdown_distributed
    from ..train import Trainer

    cfg = resolve_config(
        preset, config_file, overrides,
        **{
            "train.seed": seed, "train.device": device, "data.root": data_root, "data.layout": layout,
            "data.train_split": split, "data.val_split": val_split, "model.backbone_weights": backbone_weights,
            "train.iters": iters, "data.batch_size": batch_size,
        },
    )
    try:
        trainer = Trainer(cfg, run_dir, quiet=quiet)
        primary = trainer.dist.is_primary
        resumed = trainer.resume(resume)
        if resumed and primary:
            click.echo(f"resuming {run_dir} at step {trainer.step}", err=True)
        result = trainer.fit()
    finally:
        shutdown_distributed()
    if primary:
        summary = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float) and k != "time")
        procs = f" with {trainer.dist.world_size} processes" if trainer.dist.distributed else ""
        click.echo(f"trained {trainer.step} steps into {run_dir}{procs}: {summary}")
