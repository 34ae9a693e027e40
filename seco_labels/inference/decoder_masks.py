"""Segment images with the trained SeCo decoder, as the paper scores it (``seco segment``).

The published protocol (zwyang6/SeCo ``tools/infer_seg_voc.py``): the image is resized to ``scale x`` the
training crop for each scale of (1.0, 1.25, 1.5), the decoder's logits of the image and of its mirror image are
summed, upsampled to the original size, and the maximum over scales is taken; then the argmax, optionally after
the dense CRF of :func:`seco_labels.method.refine.dense_crf` (its defaults are the published post-processing). The
paper's 74.0 mIoU on VOC val is this with the CRF.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..artifacts import ArtifactWriter, lock_name, segment_report_path
from ..config_io import config_to_dict, save_config
from ..data import build_reader, normalize
from ..io import atomic_write_text, folder_lock
from ..method.cams import check_scales
from ..method.refine import dense_crf, require_crf
from ..models import SeCoNet
from ..runtime.checkpoint import load_seco, seco_provenance
from ..runtime.device import resolve_device

__all__ = ["SEG_SCALES", "multi_scale_seg_logits", "segment_image", "segment_split"]

#: published segmentation inference scales (multiples of the training crop size)
SEG_SCALES: tuple[float, ...] = (1.0, 1.25, 1.5)


@torch.no_grad()
def multi_scale_seg_logits(model: SeCoNet, x: torch.Tensor, scales: Sequence[float], size: tuple[int, int], *,
                           flip: bool = True) -> torch.Tensor:
    """Decoder logits over scales (published ``infer_seg_voc._validate``).

    Shape:
        - x: (B, 3, S, S) normalised images at the base size S.
        - output: (B, K, H, W) at ``size`` = (H, W): per scale, the logits of x resized to ``scale * S`` (plus
          those of its mirror image, flipped back, when ``flip``), bilinearly upsampled; max over scales.
    """
    s = x.shape[-1]
    per_scale = []
    for sc in scales:
        xs = F.interpolate(x, size=(int(s * sc), int(s * sc)), mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        seg = F.interpolate(model(batch).seg.float(), size=size, mode="bilinear", align_corners=False)
        if flip:
            seg = seg[: x.shape[0]] + seg[x.shape[0] :].flip(-1)  # published: sum of image and mirror logits
        per_scale.append(seg)
    return torch.stack(per_scale).amax(dim=0)


@torch.no_grad()
def segment_image(model: SeCoNet, rgb: np.ndarray, *, input_size: int, scales: Sequence[float] = SEG_SCALES,
                  flip: bool = True, crf: bool = False, device: torch.device | str = "cpu") -> np.ndarray:
    """The paper's segmentation of one image: ``rgb`` (H, W, 3) uint8 resized to ``input_size`` squared,
    :func:`multi_scale_seg_logits` back at (H, W), optionally dense-CRF refined, argmax -> (H, W) uint8 classes."""
    x = F.interpolate(normalize(rgb)[None], size=(input_size, input_size), mode="bilinear",
                      align_corners=False).to(device)
    logits = multi_scale_seg_logits(model, x, scales, rgb.shape[:2], flip=flip)[0]  # (K, H, W)
    if crf:
        pred = dense_crf(np.ascontiguousarray(rgb), logits.softmax(0).cpu().numpy()).argmax(0)
    else:
        pred = logits.argmax(0).cpu().numpy()
    return pred.astype(np.uint8)


def segment_split(
    checkpoint: str | Path,
    split: str,
    out_dir: str | Path,
    *,
    data_root: str | None = None,
    layout: str | None = None,
    scales: Sequence[float] = SEG_SCALES,
    flip: bool = True,
    crf: bool = False,
    input_size: int | None = None,
    overwrite: bool = False,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Write ``OUT/masks_<split>/<id>.png`` (VOC palette, class indices 0..K-1, no ignore value; each (H, W) at
    its image's original size) for every image of ``split``, plus ``OUT/manifest_<split>.json`` (the settings),
    ``OUT/config.yaml`` (so ``seco evaluate --pred OUT`` finds the ground truth) and ``OUT/segment_<split>.json``
    (counts, settings and seconds, which this function also returns).

    Resumable, with ``seco export-masks``' rules (the same :class:`~seco_labels.artifacts.ArtifactWriter`, PNG
    only): the settings that determine the masks (checkpoint sha256, scales, flip, crf, input size, dataset root
    and layout, the checkpoint's config) are recorded in the manifest when the run starts; a rerun with the same
    settings skips the images whose PNG exists, a rerun with other settings is refused, and ``overwrite``
    deletes the split's earlier masks and manifest and segments every image again.

    Raises:
        ConfigError: a scale that leaves less than one patch of the backbone, or ``out_dir`` holding
            this split made with other settings (names them, old -> new) and not ``overwrite``.
        CheckpointError: unreadable checkpoint. DataError: missing split or images.
        CrfUnavailableError: ``crf`` without the crf extra.
    """
    if crf:
        require_crf()
    dev = resolve_device(device)
    model, cfg = load_seco(checkpoint, dev)
    size = input_size or cfg.data.crop_size
    check_scales(scales, size, model.encoder.patch_size)
    root, lay = data_root or cfg.data.root, layout or cfg.data.layout
    reader = build_reader(lay, root, split, num_classes=cfg.data.num_classes,
                          class_names=cfg.data.class_names or None, ignore_index=cfg.data.ignore_index,
                          require_tags=False)
    # The keys export records too, so that the writer's settings check also refuses to mix these masks with an
    # export's pseudo masks of the same split in one folder (background_policy and the scales differ).
    attrs = {
        "dataset_root": str(Path(root).resolve()), "layout": lay, "class_names": list(reader.class_names),
        "num_classes": cfg.data.num_classes, "ignore_index": cfg.data.ignore_index,
        "background_policy": "none: argmax of the decoder's logits (seco segment)", **seco_provenance(cfg, checkpoint),
        "scales": list(scales), "flip": flip, "crf": crf,
        "input_size": size, "package_version": __version__, "config": config_to_dict(cfg),
    }
    out = Path(out_dir)
    # the writer locks the split too; held from here, the report and config.yaml are written under the lock
    with folder_lock(out, lock_name(split), what=f"split {split}"):
        report = segment_report_path(out, split)
        if overwrite:
            report.unlink(missing_ok=True)  # it describes the masks about to be deleted
        start = time.perf_counter()
        with ArtifactWriter(out, split, attrs, formats=("png",), overwrite=overwrite, verb="segmented") as writer:
            done = writer.done_ids()
            todo = [i for i in reader.ids if i not in done]
            bar = tqdm(todo, desc=f"segment {split}", unit="img", disable=quiet or not sys.stderr.isatty())
            for image_id in bar:
                pred = segment_image(model, reader.load_image(image_id), input_size=size, scales=scales,
                                     flip=flip, crf=crf, device=dev)
                # no CAMs here: an empty (0, H, W) CAM, which a PNG-only writer never stores
                writer.add(image_id, np.zeros((0, *pred.shape), np.float16), np.zeros(0, np.int64), pred)
        cfg.data.root, cfg.data.layout = str(root), lay
        save_config(cfg, out / "config.yaml")
        result = {"split": split, "images": len(reader.ids), "segmented": len(todo),
                  "skipped_done": len(reader.ids) - len(todo), "scales": list(scales), "flip": flip, "crf": crf,
                  "input_size": size, "seconds": round(time.perf_counter() - start, 3),
                  "checkpoint": str(checkpoint)}
        atomic_write_text(report, json.dumps(result, indent=2))
        return result
