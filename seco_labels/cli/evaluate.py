"""``seco evaluate``: score pseudo masks against ground-truth masks; print a table, write the reports."""

from __future__ import annotations

import sys

import click

from ..artifacts import open_split
from ..io import check_writable_dir
from . import cli
from .options import defaults_file_option, layout_option, out_option, quiet_option


@cli.command("evaluate")
@click.option("--pred", "pred", type=click.Path(), required=True,
              help="Artifact folder (masks_<split>/ or cams_<split>.h5), a cams_<split>.h5 file, or a folder of "
                   "<id>.png masks.")
@click.option("--split", required=True, help="Split whose ids are scored (a list file of the GT dataset).")
@click.option("--gt", "gt_root", type=click.Path(file_okay=False), default=None,
              help="Ground-truth dataset root (default: the exported dataset, from ART_DIR/manifest_<split>.json "
                   "or config.yaml).")
@layout_option("GT layout: voc | coco | coco-seco | folder (default: config's, else voc).")
@click.option("--num-classes", type=int, default=None, help="K, background included (default: config's/layout's).")
@click.option("--cams", "with_cams", is_flag=True,
              help="Also score the raw CAMs of cams_<split>.h5, sweeping the background threshold "
                   "(writes cams_metrics_<split>.json and cams_per_class_<split>.csv).")
@out_option("--out", "out_dir", default=None,
            help="Where metrics_<split>.json and per_class_<split>.csv go (default: ART_DIR); reports of "
                 "other splits in it are kept.")
@quiet_option("No progress bar, no table (the mIoU line is still printed).")
@defaults_file_option
def evaluate_cmd(pred, split, gt_root, layout, num_classes, with_cams, out_dir, quiet):
    """Per-class IoU, precision, recall and FP/TP of pseudo masks; writes metrics_<split>.json and
    per_class_<split>.csv (the split is in the names, so one folder holds the reports of several splits)."""
    from ..evaluation.evaluate import evaluate_masks, open_ground_truth, sweep_cam_threshold, write_reports

    source = open_split(pred, split)
    cams = source.require_cams() if with_cams else None
    out = out_dir or check_writable_dir(source.folder)  # before any scoring: a read-only export folder fails now
    gt = source.dataset.resolve(root=gt_root, layout=layout, num_classes=num_classes)
    if gt.root is None:
        raise click.UsageError(f"no ground truth: {source.folder} does not record the dataset the split was exported "
                               "from; pass --gt DATA_ROOT")
    reader = open_ground_truth(gt.root, split, layout=gt.layout, num_classes=gt.num_classes,
                               class_names=gt.class_names)
    show_bar = not quiet and sys.stderr.isatty()
    bound = gt.max_side or 0  # masks and CAMs exported at a bounded size are scored at the GT's (docs/export.md)
    results = [("", "pseudo masks", "", evaluate_masks(source.masks, reader, progress=show_bar, max_side=bound))]
    if cams is not None:
        sweep = sweep_cam_threshold(cams, reader, progress=show_bar, max_side=bound)
        results.append(("cams_", f"raw CAMs, best background threshold {sweep.best_threshold:.2f}",
                        f"CAM (threshold {sweep.best_threshold:.2f}) ", sweep.best))
    for prefix, what, short, result in results:
        json_path, csv_path = write_reports(result, out, prefix=prefix, split_in_name=True)
        miou = result.summary()["miou"]
        if quiet:
            click.echo(f"{short}mIoU {100 * miou:.2f}" if miou is not None else f"{short}mIoU -")
        else:
            click.echo(f"== {what} ==")
            click.echo(result.format_table())
        click.echo(f"wrote {json_path} and {csv_path}", err=True)
