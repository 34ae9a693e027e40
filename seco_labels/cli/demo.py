"""``seco demo``: the whole pipeline on the bundled demo images, sized for a CPU in minutes."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from .options import config_options, resolve_config


@cli.command("demo")
@config_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="seco-demo", show_default=True,
              help="Folder for the demo's run (re-running continues it).")
@click.option("--iters", type=int, default=None, help="Training iterations (default: the demo preset's).")
def demo_cmd(preset, config_file, overrides, seed, device, quiet, out_dir, iters):
    """Train SeCo on the bundled demo data (a tiny ViT, 128 px crops, 300 steps by default)."""
    from ..train import Trainer

    cfg = resolve_config(preset or "demo", config_file, overrides,
                         **{"train.seed": seed, "train.device": device, "train.iters": iters})
    run_dir = Path(out_dir) / "train"
    trainer = Trainer(cfg, run_dir, quiet=quiet)
    if trainer.resume("auto"):
        click.echo(f"continuing {run_dir} from step {trainer.step}", err=True)
    result = trainer.fit()
    click.echo(f"[1/1] train: {trainer.step} steps in {run_dir}")
    for key in ("loss_cls", "loss_lil", "loss_lig", "loss_seg", "cam_miou", "cam_aux_miou", "seg_miou"):
        if result.get(key) is not None:
            click.echo(f"  {key:>14}: {result[key]:.4f}")
    click.echo(f"checkpoint: {run_dir / 'last.pt'}  metrics: {run_dir / 'metrics.jsonl'}")
