"""``seco evaluate``: score pseudo masks against ground-truth masks; print a table, write the reports."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import cli


def _art_config(folders: list[Path]) -> dict:
    """The ``data`` section of the first ``config.yaml`` found in ``folders`` ({} if none)."""
    from ..config import load_config_file

    for folder in folders:
        path = folder / "config.yaml"
        if path.is_file():
            data = load_config_file(path).get("data") or {}
            return data if isinstance(data, dict) else {}
    return {}


@cli.command("evaluate")
@click.option("--pred", "pred", type=click.Path(file_okay=False), required=True,
              help="Artifact folder holding masks_<split>/, or a folder of <id>.png masks.")
@click.option("--split", required=True, help="Split whose ids are scored (a list file of the GT dataset).")
@click.option("--gt", "gt_root", type=click.Path(file_okay=False), default=None,
              help="Ground-truth dataset root (default: data.root of ART_DIR/config.yaml).")
@click.option("--layout", default=None, help="GT layout: voc | coco | coco-seco (default: config's, else voc).")
@click.option("--num-classes", type=int, default=None, help="K, background included (default: config's/layout's).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where metrics.json and per_class.csv go (default: ART_DIR).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no table (the mIoU line is still printed).")
def evaluate_cmd(pred, split, gt_root, layout, num_classes, out_dir, quiet):
    """Per-class IoU, precision, recall and FP/TP of pseudo masks; writes metrics.json and per_class.csv."""
    from ..evaluate import PngMaskFolder, evaluate_masks, open_ground_truth, write_reports

    pred = Path(pred)
    if not pred.is_dir():
        raise click.BadParameter(f"{pred} is not a folder", param_hint="--pred")
    masks_dir = pred / f"masks_{split}"
    if masks_dir.is_dir():
        art_dir = pred
    elif any(pred.glob("*.png")):
        masks_dir = pred
        art_dir = pred.parent if pred.name == f"masks_{split}" else pred
    else:
        h5 = pred / f"cams_{split}.h5"
        hint = (f"; {h5} exists but HDF5 input is not supported yet: export with --format png"
                if h5.is_file() else "")
        raise click.ClickException(
            f"no predictions in {pred}: expected {masks_dir}/ or <id>.png files in {pred}{hint}"
        )
    data = _art_config([art_dir, masks_dir])
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
    result = evaluate_masks(PngMaskFolder(masks_dir), reader, progress=show_bar)
    json_path, csv_path = write_reports(result, out_dir or art_dir)
    if quiet:
        s = result.summary()
        click.echo(f"mIoU {100 * s['miou']:.2f}" if s["miou"] is not None else "mIoU -")
    else:
        click.echo(result.format_table())
    click.echo(f"wrote {json_path} and {csv_path}", err=True)
