"""``seco evaluate``: score pseudo masks against ground-truth masks; print a table, write the reports."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import cli
from .options import defaults_file_option


def _art_config(folders: list[Path]) -> dict:
    """The ``data`` section of the first ``config.yaml`` found in ``folders`` ({} if none)."""
    from ..config import load_config_file

    for folder in folders:
        path = folder / "config.yaml"
        if path.is_file():
            data = load_config_file(path).get("data") or {}
            return data if isinstance(data, dict) else {}
    return {}


def _resolve_pred(pred: Path, split: str, want_cams: bool):
    """(mask source or None, CAM source or None, artifact folder) for --pred: an ART folder (masks_<split>/ or
    cams_<split>.h5), a cams_<split>.h5 file, or a folder of <id>.png masks."""
    from ..artifacts import ArtifactFile, h5_path, masks_dir
    from ..evaluate import PngMaskFolder

    if pred.is_file():
        if pred.suffix != ".h5":
            raise click.BadParameter(f"{pred} is neither a folder nor an .h5 artifact", param_hint="--pred")
        h5 = ArtifactFile(pred)
        return h5, (h5 if want_cams else None), pred.parent
    if not pred.is_dir():
        raise click.BadParameter(f"{pred} not found", param_hint="--pred")
    h5_file = h5_path(pred, split)
    h5 = ArtifactFile(h5_file) if h5_file.is_file() else None
    cams = h5 if want_cams else None
    if want_cams and h5 is None:
        raise click.ClickException(f"--cams needs {h5_file} (CAMs are only in the HDF5 artifact); export with "
                                   "--format h5 or h5,png")
    if masks_dir(pred, split).is_dir():
        return PngMaskFolder(masks_dir(pred, split)), cams, pred
    if h5 is not None:
        return h5, cams, pred
    if any(pred.glob("*.png")):
        art = pred.parent if pred.name == f"masks_{split}" else pred
        return PngMaskFolder(pred), None, art
    raise click.ClickException(
        f"no predictions for split {split!r} in {pred}: expected {masks_dir(pred, split)}/, {h5_file} or <id>.png "
        "files; run seco export-masks first"
    )


@cli.command("evaluate")
@click.option("--pred", "pred", type=click.Path(), required=True,
              help="Artifact folder (masks_<split>/ or cams_<split>.h5), a cams_<split>.h5 file, or a folder of "
                   "<id>.png masks.")
@click.option("--split", required=True, help="Split whose ids are scored (a list file of the GT dataset).")
@click.option("--gt", "gt_root", type=click.Path(file_okay=False), default=None,
              help="Ground-truth dataset root (default: the exported dataset, from ART_DIR/manifest_<split>.json "
                   "or config.yaml).")
@click.option("--layout", default=None, help="GT layout: voc | coco | coco-seco (default: config's, else voc).")
@click.option("--num-classes", type=int, default=None, help="K, background included (default: config's/layout's).")
@click.option("--cams", "with_cams", is_flag=True,
              help="Also score the raw CAMs of cams_<split>.h5, sweeping the background threshold "
                   "(writes cams_metrics.json and cams_per_class.csv).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where metrics.json and per_class.csv go (default: ART_DIR).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no table (the mIoU line is still printed).")
@defaults_file_option
def evaluate_cmd(pred, split, gt_root, layout, num_classes, with_cams, out_dir, quiet):
    """Per-class IoU, precision, recall and FP/TP of pseudo masks; writes metrics.json and per_class.csv."""
    from ..evaluate import evaluate_masks, open_ground_truth, sweep_cam_threshold, write_reports

    masks, cams, art_dir = _resolve_pred(Path(pred), split, with_cams)
    from ..artifacts import read_manifest

    manifest = read_manifest(art_dir, split)
    if manifest is not None:  # per split: an ART folder may hold splits of different datasets
        data = {"root": manifest.get("dataset_root"), "layout": manifest.get("layout"),
                "num_classes": manifest.get("num_classes")}
    else:
        data = _art_config([art_dir, Path(pred)])
    if gt_root is None:
        gt_root = data.get("root") or None
        if gt_root is None:
            raise click.UsageError(
                f"no ground truth: {art_dir / 'config.yaml'} does not record data.root; pass --gt DATA_ROOT"
            )
    layout = layout or data.get("layout") or "voc"
    if num_classes is None and data.get("num_classes") is not None and (layout == data.get("layout", "voc")):
        num_classes = int(data["num_classes"])

    reader = open_ground_truth(gt_root, split, layout=layout, num_classes=num_classes)
    show_bar = not quiet and sys.stderr.isatty()
    out = out_dir or art_dir
    results = [("", "pseudo masks", "", evaluate_masks(masks, reader, progress=show_bar))]
    if cams is not None:
        sweep = sweep_cam_threshold(cams, reader, progress=show_bar)
        results.append(("cams_", f"raw CAMs, best background threshold {sweep.best_threshold:.2f}",
                        f"CAM (threshold {sweep.best_threshold:.2f}) ", sweep.best))
    for prefix, what, short, result in results:
        json_path, csv_path = write_reports(result, out, prefix=prefix)
        miou = result.summary()["miou"]
        if quiet:
            click.echo(f"{short}mIoU {100 * miou:.2f}" if miou is not None else f"{short}mIoU -")
        else:
            click.echo(f"== {what} ==")
            click.echo(result.format_table())
        click.echo(f"wrote {json_path} and {csv_path}", err=True)
