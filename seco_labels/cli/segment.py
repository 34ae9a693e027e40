"""``seco segment``: the trained SeCo decoder's segmentation of a split (the paper's protocol)."""

from __future__ import annotations

import click

from . import cli
from .options import (
    checkpoint_option,
    data_root_option,
    decoder_scales,
    defaults_file_option,
    device_option,
    layout_option,
    lock_out,
    option,
    out_option,
    parse_scales,
    quiet_option,
)


@cli.command("segment")
@checkpoint_option
@click.option("--split", required=True, help="Split to segment, e.g. val.")
@out_option("--out", "out_dir", required=True,
            help="Folder: masks_<split>/<id>.png, manifest_<split>.json (the settings), config.yaml, "
                 "segment_<split>.json.")
@data_root_option("Dataset root (default: the training run's).")
@layout_option("Dataset layout (default: the training run's).")
@option("--scales", default=lambda: ",".join(str(s) for s in decoder_scales()), show_default=True,
        callback=parse_scales, help="Multiples of the input size; the maximum of the logits over scales is taken.")
@click.option("--flip/--no-flip", default=True, show_default=True, help="Add the mirror image's logits.")
@click.option("--crf", is_flag=True, help="Dense-CRF post-processing, as published (needs the crf extra).")
@click.option("--input-size", type=int, default=None, help="Base square size (default: the training crop).")
@click.option("--overwrite", is_flag=True,
              help="Delete this split's earlier outputs in --out (masks_<split>/, manifest_<split>.json, and an "
                   "export's cams_<split>.h5) and segment every image again; needed to change the settings of a "
                   "split already there.")
@device_option()
@quiet_option()
@defaults_file_option
def segment_cmd(checkpoint, split, out_dir, data_root, layout, scales, flip, crf, input_size, overwrite, device,
                quiet):
    """Segment a split with the trained SeCo decoder: multi-scale + flip logits, optional dense CRF (the paper's
    segmentation protocol). Score the result with: seco evaluate --pred OUT --split SPLIT.

    A rerun with the same settings resumes (finished images are kept); one with other settings (checkpoint,
    scales, flip, crf, input size, dataset) is refused unless --overwrite."""
    from ..artifacts import lock_name
    from ..inference.decoder_masks import segment_split

    lock_out(out_dir, lock_name(split), f"split {split}")
    result = segment_split(checkpoint, split, out_dir, data_root=data_root, layout=layout, scales=scales, flip=flip,
                           crf=crf, input_size=input_size, overwrite=overwrite, device=device,
                           quiet=quiet)
    click.echo(f"segmented {result['segmented']} image(s) of {split} into {out_dir} "
               f"({result['skipped_done']} already done; {result['seconds']:.1f} s)")
