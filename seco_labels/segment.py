"""Segment images with the trained SeCo decoder, as the paper scores it (``seco segment``).

The published protocol (zwyang6/SeCo ``tools/infer_seg_voc.py``): the image is resized to ``scale x`` the
training crop for each scale of (1.0, 1.25, 1.5), the decoder's logits of the image and of its mirror image are
summed, upsampled to the original size, and the maximum over scales is taken; then the argmax, optionally after
the dense CRF of :func:`seco_labels.refine.dense_crf` (its defaults are the published post-processing). The
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

from .artifacts import save_mask_png
from .config import save_config
from .data import build_reader, normalize
from .export import check_scales, load_trained_model
from .io import atomic_write_text
from .models import SeCoNet
from .refine import dense_crf, require_crf
from .train import resolve_device

__all__ = ["SEG_SCALES", "multi_scale_seg_logits", "segment_split"]

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
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Write ``OUT/masks_<split>/<id>.png`` (VOC palette, class indices, no ignore) for every image of ``split``,
    plus ``OUT/config.yaml`` (so ``seco evaluate --pred OUT`` finds the ground truth) and ``OUT/segment_<split>.json``.

    Resumable: images whose PNG exists are skipped (PNGs are written atomically).

    Raises:
        ConfigError: a scale that does not give a multiple of the backbone's patch size.
        CheckpointError: unreadable checkpoint. DataError: missing split or images.
        CrfUnavailableError: ``crf`` without the crf extra.
    """
    if crf:
        require_crf()
    dev = resolve_device(device)
    model, cfg = load_trained_model(checkpoint, dev)
    size = input_size or cfg.data.crop_size
    check_scales(scales, size, model.encoder.patch_size)
    root, lay = data_root or cfg.data.root, layout or cfg.data.layout
    reader = build_reader(lay, root, split, num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index,
                          require_tags=False)
    out = Path(out_dir)
    masks = out / f"masks_{split}"
    masks.mkdir(parents=True, exist_ok=True)
    todo = [i for i in reader.ids if not (masks / f"{i}.png").is_file()]
    start = time.perf_counter()
    for image_id in tqdm(todo, desc=f"segment {split}", unit="img", disable=quiet or not sys.stderr.isatty()):
        rgb = reader.load_image(image_id)
        x = F.interpolate(normalize(rgb)[None], size=(size, size), mode="bilinear", align_corners=False).to(dev)
        logits = multi_scale_seg_logits(model, x, scales, rgb.shape[:2], flip=flip)[0]  # (K, H, W)
        if crf:
            probs = dense_crf(np.ascontiguousarray(rgb), logits.softmax(0).cpu().numpy())
            pred = probs.argmax(0)
        else:
            pred = logits.argmax(0).cpu().numpy()
        save_mask_png(masks / f"{image_id}.png", pred.astype(np.uint8))
    cfg.data.root, cfg.data.layout = str(root), lay
    save_config(cfg, out / "config.yaml")
    result = {"split": split, "images": len(reader.ids), "segmented": len(todo),
              "skipped_done": len(reader.ids) - len(todo), "scales": list(scales), "flip": flip, "crf": crf,
              "input_size": size, "seconds": round(time.perf_counter() - start, 3), "checkpoint": str(checkpoint)}
    atomic_write_text(out / f"segment_{split}.json", json.dumps(result, indent=2))
    return result
