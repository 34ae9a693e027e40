"""Visual reports of pseudo labels (``seco show``): one PNG strip per image, to judge the labels at a glance.

Panels, left to right, each under a caption: the image; the CAM of every tagged class as a heat map over the
image; the refined pseudo mask (VOC palette, uncertain pixels in the palette's 255 colour); the ground truth when
there is one; the error map (green right, red wrong, yellow uncertain where the GT has a label, grey where the GT
is ignored). Drawn with Pillow and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .data.classes import voc_palette
from .errors import DataError
from .io import atomic_path
from .plots import font

__all__ = ["ShowPanel", "heat_colors", "panels_for", "draw_strip", "write_strips", "ERROR_COLORS"]

#: error-map colours (RGB): prediction right, wrong, uncertain (255) on a labelled pixel, GT ignored
ERROR_COLORS = {"right": (40, 170, 60), "wrong": (220, 30, 30), "uncertain": (240, 200, 0), "ignored": (128, 128, 128)}
_PALETTE = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
# "jet"-like ramp: dark blue -> blue -> cyan -> yellow -> red -> dark red, at evenly spaced stops
_HEAT_STOPS = np.array([[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]], np.float32)


@dataclass
class ShowPanel:
    """One panel: its caption and an (H, W, 3) uint8 picture at the image's resolution."""

    caption: str
    pixels: np.ndarray


def heat_colors(cam: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8 on a jet-like ramp (values outside [0, 1] are clipped)."""
    x = np.clip(np.nan_to_num(cam.astype(np.float32)), 0.0, 1.0) * (len(_HEAT_STOPS) - 1)
    lo = np.minimum(np.floor(x).astype(np.int64), len(_HEAT_STOPS) - 2)
    t = (x - lo)[..., None]
    return ((1 - t) * _HEAT_STOPS[lo] + t * _HEAT_STOPS[lo + 1]).round().astype(np.uint8)


def _blend(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).round().astype(np.uint8)


def panels_for(
    image: np.ndarray,
    mask: np.ndarray,
    class_names: Sequence[str],
    *,
    cams: np.ndarray | None = None,
    keys: np.ndarray | None = None,
    gt: np.ndarray | None = None,
    ignore_index: int = 255,
) -> list[ShowPanel]:
    """The panels of one image.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) pseudo mask, class indices, ``ignore_index`` = uncertain.
        class_names: K names, background first (captions of the CAM panels).
        cams: (k, H, W) float CAMs in [0, 1] of the tagged classes, or None (no CAM panels).
        keys: (k,) class indices 1..K-1 of the CAM channels.
        gt: (H, W) ground truth, or None (no GT and error panels).
        ignore_index: the "no label" value of the masks.

    Raises:
        ValueError: a mask, CAM or GT whose size differs from the image's.
    """
    h, w = image.shape[:2]
    for name, arr in (("mask", mask), ("gt", gt)):
        if arr is not None and arr.shape != (h, w):
            raise ValueError(f"{name} is {arr.shape[0]}x{arr.shape[1]} but the image is {h}x{w}")
    if cams is not None and cams.shape[1:] != (h, w):
        raise ValueError(f"CAMs are {cams.shape[1]}x{cams.shape[2]} but the image is {h}x{w}")
    panels = [ShowPanel("image", image)]
    if cams is not None and keys is not None:
        for cam, key in zip(cams, keys):
            name = class_names[int(key)] if 0 <= int(key) < len(class_names) else str(int(key))
            panels.append(ShowPanel(f"CAM: {name}", _blend(image, heat_colors(cam), 0.6)))
    panels.append(ShowPanel("pseudo mask", _PALETTE[mask.astype(np.uint8)]))
    if gt is not None:
        panels.append(ShowPanel("ground truth", _PALETTE[gt.astype(np.uint8)]))
        labelled = gt != ignore_index
        err = np.empty((h, w, 3), np.uint8)
        err[:] = ERROR_COLORS["ignored"]
        err[labelled & (mask == gt)] = ERROR_COLORS["right"]
        err[labelled & (mask != gt)] = ERROR_COLORS["wrong"]
        err[labelled & (mask == ignore_index)] = ERROR_COLORS["uncertain"]
        panels.append(ShowPanel("errors: green right, red wrong, yellow uncertain", _blend(image, err, 0.7)))
    return panels


def draw_strip(panels: Sequence[ShowPanel], path: str | Path | None = None, *, height: int = 240,
               title: str = "", gap: int = 6) -> Image.Image:
    """Lay ``panels`` out in one row, each resized to ``height`` px (aspect kept) under its caption.

    The strip is ``sum(panel widths) + gap * (n + 1)`` wide and ``height + caption band (+ title band)`` high;
    written atomically to ``path`` when given.
    """
    if not panels:
        raise ValueError("no panels to draw")
    text = font(13)
    band = 22
    top = band + (band if title else 0)
    h0, w0 = panels[0].pixels.shape[:2]
    pw = max(1, round(w0 * height / h0))
    strip = Image.new("RGB", (len(panels) * pw + gap * (len(panels) + 1), top + height + gap), "white")
    draw = ImageDraw.Draw(strip)
    if title:
        draw.text((gap, 4), title, fill="black", font=text)
    for i, panel in enumerate(panels):
        x = gap + i * (pw + gap)
        # nearest for label maps keeps their colours exact; bilinear for photographs and heat maps
        exact = panel.caption in ("pseudo mask", "ground truth")
        pic = Image.fromarray(panel.pixels).resize((pw, height), Image.NEAREST if exact else Image.BILINEAR)
        strip.paste(pic, (x, top))
        caption = panel.caption
        while caption and draw.textlength(caption, font=text) > pw:
            caption = caption[:-2] + "…" if len(caption) > 2 else ""
        draw.text((x, top - band + 4), caption, fill="black", font=text)
    if path is not None:
        with atomic_path(path) as tmp:
            strip.save(tmp, format="PNG")
    return strip


def write_strips(ids: Iterable[str], reader: Any, masks: Any, out_dir: str | Path, *, cams: Any = None,
                 with_gt: bool = True, height: int = 240, split: str = "", progress: bool = False) -> list[Path]:
    """Draw ``out_dir/<id>.png`` for each id; returns the paths.

    Args:
        ids: image ids to draw.
        reader: a dataset reader (images; GT masks where they exist and ``with_gt``).
        masks: anything with ``load_mask(id)`` (the HDF5 artifact, a PNG folder).
        cams: anything with ``load_cam(id)`` (the HDF5 artifact), or None for no CAM panels.

    Raises:
        DataError: a prediction whose size is not its image's (exported from another dataset?).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for image_id in tqdm(list(ids), desc="show", unit="img", disable=not progress):
        image = reader.load_image(image_id)
        cam, keys = cams.load_cam(image_id) if cams is not None else (None, None)
        gt = reader.load_mask(image_id, image.shape[:2]) if with_gt and reader.mask_path(image_id).is_file() else None
        try:
            panels = panels_for(image, masks.load_mask(image_id), reader.class_names, cams=cam, keys=keys, gt=gt,
                                ignore_index=reader.ignore_index)
        except ValueError as e:
            raise DataError(f"{image_id}: {e}; were the predictions exported from {reader.root}?") from None
        paths.append(out / f"{image_id}.png")
        draw_strip(panels, paths[-1], height=height, title=f"{image_id} ({split})" if split else image_id)
    return paths
