"""``seco demo``: the whole pipeline on the bundled demo images, sized for a CPU in minutes
(:func:`seco_labels.demo.pipeline.run_demo`)."""

from __future__ import annotations

import click

from . import cli
from .options import config_key_option, config_options, lock_out, out_option, resolve_config, schedule_kept_on_resume
from .train import allow_changes_option, exit_interrupted, report_resume


@cli.command("demo")
@config_options
@out_option("--out", "out_dir", default="seco-demo", show_default=True,
            help="Folder for the demo's outputs (re-running continues it).")
@config_key_option("train.iters", "--iters", type=int, help="Training iterations (default: the demo preset's).")
@click.option("--seg-iters", type=int, default=80, show_default=True,
              help="Iterations of each segmenter (deeplabv3plus/resnet18 on the pseudo masks and on the GT).")
@allow_changes_option
def demo_cmd(preset, config_file, overrides, quiet, out_dir, seg_iters, allow_changes):
    """The pipeline on the bundled demo data: train SeCo (a tiny ViT, 128 px crops, 300 steps by default), export
    pseudo masks of the train split, score them against the demo's ground truth (and draw four with seco show's
    panels), train a DeepLabV3+ on them and on the GT (the upper bound), and compare the two on the val split.

    Re-running continues the same --out folder; Ctrl-C during training saves a checkpoint first (exit 130)."""
    from ..demo.pipeline import run_demo
    from ..segmenters.compare import format_markdown
    from ..training.signals import TrainingInterrupted

    lock_out(out_dir, ".lock", "seco demo")  # its train/, artifacts/ and segmenter folders lock themselves too
    cfg = resolve_config(preset or "demo", config_file, overrides)
    try:
        result = run_demo(cfg, out_dir, seg_iters=seg_iters, quiet=quiet, allow_changes=allow_changes,
                          echo=click.echo, on_resume=lambda trainer, run_dir: report_resume(trainer, run_dir, "auto"),
                          keep=schedule_kept_on_resume())
    except TrainingInterrupted as e:
        exit_interrupted(e, f"to continue, run seco demo again with --out {out_dir}")
    if not quiet:
        click.echo(format_markdown(result["segmenters"]), nl=False)


# The shared --preset help says the default is the config file's preset, else voc; the demo's is demo.
for _param in demo_cmd.params:
    if _param.name == "preset":
        _param.help = "Starting values (default: demo)."
