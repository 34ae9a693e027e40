"""``seco demo``: the whole pipeline on the bundled demo images, sized for a CPU in minutes
(:func:`seco_labels.demo.pipeline.run_demo`)."""

from __future__ import annotations

import click

from ..demo.pipeline import SEG_ITERS
from . import cli
from .options import (
    allow_changes_option,
    config_options,
    iters_option,
    lock_out,
    out_option,
    preset_configs,
    preset_option,
    resolve_config,
    schedule_kept_on_resume,
)
from .run_output import exit_interrupted, report_resume

#: the preset ``seco demo`` starts from
DEMO_PRESET = "demo"


@cli.command("demo")
@preset_option(DEMO_PRESET)
@config_options(preset_configs)
@out_option("--out", "out_dir", default="seco-demo", show_default=True,
            help="Folder for the demo's outputs (re-running continues it).")
@iters_option(preset_configs)
@click.option("--seg-iters", type=int, default=SEG_ITERS, show_default=True,
              help="Iterations of each segmenter (deeplabv3plus/resnet18 on the pseudo masks and on the GT).")
@allow_changes_option
def demo_cmd(preset, config_file, overrides, quiet, out_dir, seg_iters, allow_changes):
    """The pipeline on the bundled demo data: train SeCo (the demo preset: a tiny ViT on small crops, a short
    schedule), export pseudo masks of the train split, score them against the demo's ground truth (and draw four
    with seco show's panels), train a DeepLabV3+ on them and on the GT (the upper bound), and compare the two on the
    val split.

    Re-running continues the same --out folder: each stage resumes its own run (--allow-changes lets a changed
    config go on); Ctrl-C during training saves a checkpoint first (exit 130)."""
    from ..demo.pipeline import run_demo
    from ..segmenters.compare import format_markdown
    from ..training.signals import TrainingInterrupted

    lock_out(out_dir, ".lock", "seco demo")  # its train/, artifacts/ and segmenter folders lock themselves too
    cfg = resolve_config(preset, config_file, overrides)
    try:
        result = run_demo(cfg, out_dir, seg_iters=seg_iters, quiet=quiet, allow_changes=allow_changes,
                          echo=click.echo, on_resume=lambda trainer, run_dir: report_resume(trainer, run_dir, "auto"),
                          keep=schedule_kept_on_resume())
    except TrainingInterrupted as e:
        exit_interrupted(e, f"to continue, run seco demo again with --out {out_dir}")
    if not quiet:
        click.echo(format_markdown(result["segmenters"]), nl=False)

