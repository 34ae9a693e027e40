"""``seco export-masks``: CAMs and pseudo masks of a split from a trained checkpoint."""

from __future__ import annotations

from typing import Any, Callable

import click

from . import cli
from .options import (
    checkpoint_option,
    data_root_option,
    defaults_file_option,
    device_option,
    layout_option,
    lock_out,
    option,
    out_option,
    parse_scales,
    quiet_option,
    skip_bad_option,
)


def _export_default(name: str) -> Callable[[], Any]:
    """The default of :class:`~seco_labels.inference.export.ExportOptions` field ``name``, read when an option or
    the help needs it (the exporter imports timm, which every other command would pay for)."""
    def default() -> Any:
        from ..inference.export import ExportOptions

        value = getattr(ExportOptions(), name)
        return ",".join(value) if name == "formats" else value

    return default


def _formats(ctx, param, value: str) -> tuple[str, ...]:
    formats = tuple(v.strip() for v in value.split(",") if v.strip())
    if not formats or set(formats) - {"h5", "png", "coco-json", "hf-dataset", "cvat", "label-studio"}:
        raise click.BadParameter(f"{value!r}: choose from h5, png, coco-json, hf-dataset, cvat and label-studio, "
                                 "e.g. h5,png")
    if "hf-dataset" in formats:
        from ..artifacts.hf_dataset import require_pyarrow
        from ..errors import ConfigError

        try:
            require_pyarrow()  # before any work: the dataset is written last
        except ConfigError as e:
            raise click.BadParameter(str(e)) from None
    return formats


@cli.command("export-masks")
@checkpoint_option
@click.option("--split", required=True, help="Split to export, e.g. train.")
@out_option("--out", "out_dir", required=True, help="Artifact folder.")
@data_root_option("Dataset root (default: the training run's).")
@layout_option("Dataset layout (default: the training run's).")
@option("--format", "formats", default=_export_default("formats"), show_default=True, callback=_formats,
        help="h5 (CAMs + masks in cams_<split>.h5), png (masks_<split>/<id>.png), coco-json (COCO RLE annotations in "
             "coco_<split>.json), hf-dataset (a Hugging Face dataset in hf_<split>/; needs the hf extra), cvat (a "
             "CVAT Segmentation mask 1.1 archive, cvat_<split>.zip), label-studio (Label Studio tasks with BrushLabels "
             "predictions, label_studio_<split>.json and .xml); the last four are built from the h5 or png masks; "
             "comma-separated.")
@option("--uncertain-as", type=click.Choice(["label", "background"]), default=_export_default("uncertain_as"),
        show_default=True, help="cvat, label-studio: the uncertain pixels (255) as a label of their own, 'uncertain', "
                                "to correct by hand, or as background.")
@option("--label-studio-prefix", default=_export_default("label_studio_prefix"), show_default=True,
        help="label-studio: prefix of each task's image URL, before the image path relative to the dataset root "
             "(the default is Label Studio's local-files serving, rooted at the dataset root).")
@click.option("--scales", default="default", show_default=True, callback=parse_scales,
              help="CAM scales, comma-separated, or a preset: default, seeds, train-voc, published-ms.")
@option("--flip/--no-flip", default=_export_default("flip"), show_default=True, help="Add horizontally flipped CAMs.")
@option("--cam-source", type=click.Choice(["final", "aux"]), default=_export_default("cam_source"), show_default=True)
@option("--tags", type=click.Choice(["given", "predicted"]), default=_export_default("tags"), show_default=True,
        help="given: the dataset's class tags; predicted: the classifier's (for untagged images).")
@option("--tag-threshold", type=click.FloatRange(0, 1), default=_export_default("tag_threshold"), show_default=True,
        help="Sigmoid score above which a class counts as present with --tags predicted.")
@click.option("--crf", is_flag=True, help="Refine each pseudo mask with the dense CRF (needs the crf extra).")
@click.option("--high-thre", type=float, default=None, help="Default: the checkpoint's cam.high_thre.")
@click.option("--low-thre", type=float, default=None, help="Default: the checkpoint's cam.low_thre.")
@click.option("--input-size", type=int, default=None, help="Images are resized to this square (default: crop size).")
@click.option("--overwrite", is_flag=True, help="Delete this split's earlier outputs in --out (HDF5, PNGs, parts) and export every image again.")
@skip_bad_option
@option("--batch-size", type=int, default=_export_default("batch_size"), show_default=True,
        help="Images per forward pass (per process).")
@option("--num-workers", type=int, default=_export_default("num_workers"), show_default=True)
@device_option()
@quiet_option()
@defaults_file_option
def export_cmd(checkpoint, split, out_dir, data_root, layout, formats, uncertain_as, label_studio_prefix, scales, flip,
               cam_source, tags, tag_threshold, crf, high_thre, low_thre, input_size, overwrite, skip_bad, batch_size,
               num_workers, device, quiet):
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
                            low_thre=low_thre, input_size=input_size, formats=formats, uncertain_as=uncertain_as,
                            label_studio_prefix=label_studio_prefix, overwrite=overwrite,
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
