"""``seco demo``: the whole pipeline on the bundled demo images, sized for a CPU in minutes."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from .options import config_options, lock_out, out_option, resolve_config
from .train import allow_changes_option, exit_interrupted, report_resume


def _num(x: float | None, scale: float = 1.0) -> str:
    return "-" if x is None or x != x else f"{scale * x:.2f}"


STEPS = 5  # train, export, evaluate, fit-segmenter (pseudo masks and GT), compare


@cli.command("demo")
@config_options
@out_option("--out", "out_dir", default="seco-demo", show_default=True,
            help="Folder for the demo's outputs (re-running continues it).")
@click.option("--iters", type=int, default=None, help="Training iterations (default: the demo preset's).")
@click.option("--seg-iters", type=int, default=80, show_default=True,
              help="Iterations of each segmenter (deeplabv3plus/resnet18 on the pseudo masks and on the GT).")
@allow_changes_option
def demo_cmd(preset, config_file, overrides, seed, device, quiet, out_dir, iters, seg_iters, allow_changes):
    """The pipeline on the bundled demo data: train SeCo (a tiny ViT, 128 px crops, 300 steps by default), export
    pseudo masks of the train split, score them against the demo's ground truth (and draw four with seco show's
    panels), train a DeepLabV3+ on them and on the GT (the upper bound), and compare the two on the val split.

    Re-running continues the same --out folder; Ctrl-C during training saves a checkpoint first (exit 130)."""
    from ..evaluate import evaluate_masks, open_ground_truth, sweep_cam_threshold, write_reports
    from ..artifacts import ArtifactFile, h5_path
    from ..export import ExportOptions, export_split
    from ..show import write_strips
    from ..run_state import TrainingInterrupted
    from ..train import Trainer

    lock_out(out_dir, ".lock", "seco demo")  # its train/, artifacts/ and segmenter folders lock themselves too
    cfg = resolve_config(preset or "demo", config_file, overrides,
                         **{"train.seed": seed, "train.device": device, "train.iters": iters})
    run_dir = Path(out_dir) / "train"
    hint = f"to continue, run seco demo again with --out {out_dir}"
    trainer = Trainer(cfg, run_dir, quiet=quiet)
    trainer.resume("auto", allow_changes=allow_changes)
    report_resume(trainer, run_dir, "auto")
    try:
        result = trainer.fit()
    except TrainingInterrupted as e:
        exit_interrupted(e, hint)
    done = " (already finished; nothing to do)" if trainer.already_finished else ""
    click.echo(f"[1/{STEPS}] train: {trainer.step} steps in {run_dir}{done}")
    for key in ("loss_cls", "loss_lil", "loss_lig", "loss_seg", "cam_miou", "cam_aux_miou", "seg_miou"):
        if result.get(key) is not None:
            click.echo(f"  {key:>14}: {result[key]:.4f}")
    click.echo(f"  checkpoint: {run_dir / 'last.pt'}  metrics: {run_dir / 'metrics.jsonl'}")

    split, art = cfg.data.train_split, Path(out_dir) / "artifacts"
    exported = export_split(run_dir / "last.pt", split, art, options=ExportOptions(device=cfg.train.device),
                            quiet=quiet)
    secs = exported["seconds"]
    click.echo(f"[2/{STEPS}] export-masks: {exported['exported']} image(s) of {split} "
               f"({exported['skipped_done']} already done) in {secs['total']:.1f} s -> {art}")

    reader = open_ground_truth(cfg.data.root, split, layout=cfg.data.layout, num_classes=cfg.data.num_classes,
                               class_names=cfg.data.class_names or None)
    h5 = ArtifactFile(h5_path(art, split))
    masks = evaluate_masks(h5, reader)
    cams = sweep_cam_threshold(h5, reader)
    masks_report, _ = write_reports(masks, art, split_in_name=True)
    cams_report, _ = write_reports(cams.best, art, prefix="cams_", split_in_name=True)
    m = masks.summary()
    click.echo(f"[3/{STEPS}] evaluate on {split}: pseudo masks mIoU {_num(m['miou'], 100)}, precision "
               f"{_num(m['mean_precision'], 100)}, recall {_num(m['mean_recall'], 100)}, FP/TP {_num(m['fp_tp'])}; "
               f"raw CAMs mIoU {_num(cams.best_miou, 100)} at background threshold {cams.best_threshold:.2f}")
    shown = write_strips(reader.ids[:4], reader, h5, art / f"show_{split}", cams=h5, split=split)
    click.echo(f"  reports: {masks_report}, {cams_report}; pictures: {shown[0].parent}")

    from ..segmenters.compare import compare_runs, format_markdown, load_run
    from ..segmenters.config import segmenter_config
    from ..segmenters.train import SegmenterTrainer

    seg_runs = []
    for labels, name in ((str(art), "pseudo"), ("gt", "gt")):
        seg_dir = Path(out_dir) / f"segmenter-{name}"
        seg_cfg = segmenter_config(**{
            "model.arch": "deeplabv3plus", "model.encoder": "resnet18", "data.labels": labels,
            "data.root": cfg.data.root, "data.layout": cfg.data.layout, "data.num_classes": cfg.data.num_classes,
            "data.split": split, "data.val_split": cfg.data.val_split, "data.crop_size": cfg.data.crop_size,
            "data.batch_size": 4, "data.num_workers": 2, "train.iters": seg_iters, "train.seed": cfg.train.seed,
            "train.device": cfg.train.device,
        })
        seg = SegmenterTrainer(seg_cfg, seg_dir, quiet=quiet)
        seg.resume("auto", allow_changes=allow_changes)
        try:
            summary = seg.fit()
        except TrainingInterrupted as e:
            exit_interrupted(e, hint)
        seg_runs.append(load_run(seg_dir, f"deeplabv3plus ({name})"))
        click.echo(f"[4/{STEPS}] fit-segmenter on {'pseudo masks' if name == 'pseudo' else 'GT masks'}: "
                   f"{seg.step} steps, val mIoU {_num(summary.get('val_miou'), 100)} -> {seg_dir}")
    paths = compare_runs(seg_runs, out_dir, stem="compare", title="demo: pseudo masks vs GT (val IoU %)")
    click.echo(f"[5/{STEPS}] compare: {paths['md']}, {paths['csv']}, {paths['png']}")
    if not quiet:
        click.echo(format_markdown(seg_runs), nl=False)


# The shared --preset help says the default is the config file's preset, else voc; the demo's is demo.
for _param in demo_cmd.params:
    if _param.name == "preset":
        _param.help = "Starting values (default: demo)."
