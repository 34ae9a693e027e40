"""``seco export-masks``: CAMs and pseudo masks of a split from a trained checkpoint."""

from __future__ import annotations

import click

from . import cli
from .options import defaults_file_option, device_option, lock_out, out_option, parse_scales, quiet_option


def _formats(ctx, param, value: str) -> tuple[str, ...]:
    formats = tuple(v.strip() for v in value.split(",") if v.strip())
    if not formats or set(formats) - {"h5", "png", "coco-json"}:
        raise click.BadParameter(f"{value!r}: choose from h5, png and coco-json, e.g. h5,png")
    return formats


@cli.command("export-masks")
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True, help="RUN_DIR/last.pt of seco train.")
@click.option("--split", required=True, help="Split to export, e.g. train.")
@out_option("--out", "out_dir", required=True, help="Artifact folder.")
@click.option("--data-root", default=None, help="Dataset root (default: the training run's).")
@click.option("--layout", default=None, help="Dataset layout (default: the training run's).")
@click.option("--format", "formats", default="h5,png", show_default=True, callback=_formats,
              help="h5 (CAMs + masks in cams_<split>.h5), png (masks_<split>/<id>.png), coco-json (COCO RLE "
                   "annotations in coco_<split>.json, built from the h5 or png masks); comma-separated.")
@click.option("--scales", default="default", show_default=True, callback=parse_scales,
              help="CAM scales, comma-separated, or a preset: default, seeds, train-voc, published-ms.")
@click.option("--flip/--no-flip", default=True, show_default=True, help="Add horizontally flipped CAMs.")
@click.option("--cam-source", type=click.Choice(["final", "aux"]), default="final", show_default=True)
@click.option("--tags", type=click.Choice(["given", "predicted"]), default="given", show_default=True,
              help="given: the dataset's class tags; predicted: the classifier's (for untagged images).")
@click.option("--tag-threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Sigmoid score above which a class counts as present with --tags predicted.")
@click.option("--crf", is_flag=True, help="Refine each pseudo mask with the dense CRF (needs the crf extra).")
@click.option("--high-thre", type=float, default=None, help="Default: the checkpoint's cam.high_thre.")
@click.option("--low-thre", type=float, default=None, help="Default: the checkpoint's cam.low_thre.")
@click.option("--input-size", type=int, default=None, help="Images are resized to this square (default: crop size).")
@click.option("--overwrite", is_flag=True, help="Delete this split's earlier outputs in --out (HDF5, PNGs, parts) and export every image again.")
@click.option("--skip-bad", is_flag=True, help="Log unreadable images and go on instead of stopping.")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Images per forward pass (per process).")
@click.option("--num-workers", type=int, default=2, show_default=True)
@device_option()
@quiet_option()
@defaults_file_option
def export_cmd(checkpoint, split, out_dir, data_root, layout, formats, scales, flip, cam_source, tags, tag_threshold,
               crf, high_thre, low_thre, input_size, overwrite, skip_bad, batch_size, num_workers, device, quiet):
    """Export refined CAMs and pseudo masks; resumable (finished ids are skipped unless --overwrite).

    Under torchrun (torchrun --nproc_per_node N -m seco_labels.cli export-masks ...) the N processes share the
    images and rank 0 merges their parts into one cams_<split>.h5, identical to a one-process export.
    """
    from ..artifacts import lock_name
    from ..inference.export import ExportOptions, export_split
    from ..runtime.distributed import is_primary_process, shutdown_distributed

    lock_out(out_dir, lock_name(split), f"split {split}")
    options = ExportOptions(scales=scales, flip=flip, cam_source=cam_source, tags=tags, tag_threshold=tag_threshold,
                            crf=crf, high_thre=high_thre,
                            low_thre=low_thre, input_size=input_size, formats=formats, overwrite=overwrite,
                            skip_bad=skip_bad, batch_size=batch_size, num_workers=num_workers, device=device)
    try:
        result = export_split(checkpoint, split, out_dir, data_root=data_root, layout=layout, options=options,
                              quiet=quiet)
    finally:
        shutdown_distributed()
    if not is_primary_process():
        return
    bad = f", {len(result['bad'])} bad image(s) skipped" if result["bad"] else ""
    secs = result["seconds"]
    rate = result["exported"] / secs["total"] if secs["total"] > 0 else 0.0
    click.echo(f"exported {result['exported']} image(s) of {split} to {out_dir} "
               f"({result['skipped_done']} already done{bad}; {rate:.2f} img/s)")
