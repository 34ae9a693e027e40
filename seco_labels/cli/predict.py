"""``seco predict``: class masks of new images from a fit-segmenter model or the SeCo decoder."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from .options import (
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
    skip_bad_option,
)


def _optional_scales(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """--scales is SeCo-only: None when not given, so an smp model can refuse it."""
    return None if value is None else parse_scales(ctx, param, value)


@cli.command("predict")
@click.option("--model", "model_path", type=click.Path(), required=True,
              help="A fit-segmenter run (SEG_DIR or SEG_DIR/model) or a seco train checkpoint (RUN_DIR/last.pt or "
                   "RUN_DIR).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of .jpg/.jpeg/.png/.webp/.bmp images (subfolders too); OUT keeps their relative paths.")
@click.option("--split", default=None, help="Or a dataset split, e.g. val (with --data-root/--layout).")
@data_root_option("Dataset root of --split (default: the model's training data).")
@layout_option("Dataset layout of --split (default: the model's training data).")
@out_option("--out", "out_dir", required=True,
            help="Folder: <id>.png masks (VOC palette), overlay/<id>.jpg, manifest_predict.json.")
@click.option("--overlay", is_flag=True, help="Also write OUT/overlay/<id>.jpg: the image blended with the mask.")
@click.option("--flip/--no-flip", default=None,
              help="Add the mirror image's logits (default: on for the SeCo decoder, off for smp models).")
@option("--scales", default=None, callback=_optional_scales, shown_default=decoder_scales,
        help="SeCo decoder: multiples of the input size, max over scales.")
@click.option("--crf", is_flag=True, help="SeCo decoder: dense-CRF post-processing (needs the crf extra).")
@click.option("--input-size", type=int, default=None, help="SeCo decoder: base square size (default: training crop).")
@click.option("--overwrite", is_flag=True,
              help="Predict every image again, also with other settings than OUT's (other files are kept).")
@skip_bad_option
@device_option()
@quiet_option()
@defaults_file_option
def predict_cmd(model_path, images_dir, split, data_root, layout, out_dir, overlay, flip, scales, crf, input_size,
                overwrite, skip_bad, device, quiet):
    """Predict class masks of a folder of images or of a split, with a fit-segmenter model (one pass at the image's
    size) or the SeCo decoder (seco segment's multi-scale + flip protocol). Resumable: finished images are skipped
    unless --overwrite."""
    from ..errors import ConfigError
    from ..inference.predict_folder import LOCK_NAME, ImageFolder, predict_to_folder, split_images
    from ..inference.predictors import load_predictor

    lock_out(out_dir, LOCK_NAME, "seco predict")
    if (images_dir is None) == (split is None):
        raise ConfigError("pass either --images DIR or --split SPLIT")
    if images_dir is not None and (data_root or layout):
        raise ConfigError("--data-root and --layout go with --split, not --images")
    # images are listed before the model loads, so an empty folder fails at once
    images = ImageFolder(images_dir, exclude=out_dir) if images_dir is not None else None
    predictor = load_predictor(model_path, device=device, scales=scales, flip=flip, crf=crf, input_size=input_size)
    if images is None:
        images = split_images(predictor, split, data_root=data_root, layout=layout, skip_bad=skip_bad)
    result = predict_to_folder(predictor, images, out_dir, overlay=overlay, overwrite=overwrite, skip_bad=skip_bad,
                               quiet=quiet)
    what = f"split {split}" if split is not None else str(Path(images_dir))
    bad = f", {len(result['bad'])} bad image(s) skipped" if result["bad"] else ""
    click.echo(f"predicted {result['predicted']} image(s) of {what} into {out_dir} with the {predictor.kind} model "
               f"({result['skipped_done']} already done{bad}; {result['seconds']:.1f} s)")
