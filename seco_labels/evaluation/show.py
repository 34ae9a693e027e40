"""Visual reports of pseudo labels (``seco show``): one PNG strip per image, to judge the labels at a glance.

Panels, left to right, each under a caption: the image; the CAM of every tagged class as a heat map over the
image; the refined pseudo mask (VOC palette, uncertain pixels in the palette's 255 colour, beige); the ground truth
when there is one; the error map (green right, red wrong, yellow uncertain where the GT has a label, grey where the
GT is ignored). A legend under the panels gives the meaning of beige, green, red, yellow and grey. Captions are
fitted to their panel (smaller font, two lines, and only then shortened with "…"), so narrow portrait panels keep
readable captions. Drawn with Pillow and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.classes import voc_palette
from ..errors import DataError
from ..io import atomic_path
from .plots import font

__all__ = ["ShowPanel", "StripLayout", "heat_colors", "blend", "panels_for", "fit_text", "layout_strip", "draw_strip",
           "write_strips", "ERROR_COLORS", "UNCERTAIN_COLOR", "VOC_COLORS", "CAPTION_SIZES"]

#: error-map colours (RGB): prediction right, wrong, uncertain (255) on a labelled pixel, GT ignored
ERROR_COLORS = {"right": (40, 170, 60), "wrong": (220, 30, 30), "uncertain": (240, 200, 0), "ignored": (128, 128, 128)}
#: (256, 3) uint8 RGB of each class index in the VOC palette: ``VOC_COLORS[mask]`` colours a label map
VOC_COLORS = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
#: colour of 255 ("uncertain" in a pseudo mask, "no label" in a GT mask) in the VOC palette: beige
UNCERTAIN_COLOR: tuple[int, int, int] = tuple(int(v) for v in VOC_COLORS[255])  # type: ignore[assignment]
#: font sizes (px) tried in turn for a caption that does not fit its panel on one line
CAPTION_SIZES = (13, 12, 11, 10, 9)
# "jet"-like ramp: dark blue -> blue -> cyan -> yellow -> red -> dark red, at evenly spaced stops
_HEAT_STOPS = np.array([[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]], np.float32)


@dataclass
class ShowPanel:
    """One panel: its caption, an (H, W, 3) uint8 picture at the image's resolution, whether it is a label map
    (resized with nearest neighbours so its colours stay exact), and its colour key for the strip's legend as
    ``(meaning, RGB)`` pairs."""

    caption: str
    pixels: np.ndarray
    label_map: bool = False
    legend: tuple[tuple[str, tuple[int, int, int]], ...] = ()


@dataclass
class StripLayout:
    """Where :func:`draw_strip` puts everything, in strip pixels.

    ``boxes[i]`` = (x0, y0, x1, y1) of panel i's picture (x1, y1 exclusive); ``captions[i]`` = (lines, font size)
    of its caption, line j drawn at ``caption_xy[i][j]`` (from ``caption_y``, one line every ``size + 3`` px, a
    pixel or so right of x0 when the first glyph overhangs); the legend rows start at ``legend_y``; the title is
    (text, font size), drawn at ``title_xy``.
    """

    width: int
    height: int
    boxes: list[tuple[int, int, int, int]]
    captions: list[tuple[list[str], int]]
    caption_xy: list[list[tuple[int, int]]]
    caption_y: int
    title: tuple[str, int] | None
    title_xy: tuple[int, int]
    legend_y: int
    legend_rows: list[list[tuple[int, str, tuple[int, int, int] | None]]] = field(default_factory=list)
    #: legend rows of (x from ``gap``, text, swatch colour or None for a panel's name)


def heat_colors(cam: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8 on a jet-like ramp (values outside [0, 1] are clipped)."""
    x = np.clip(np.nan_to_num(cam.astype(np.float32)), 0.0, 1.0) * (len(_HEAT_STOPS) - 1)
    lo = np.minimum(np.floor(x).astype(np.int64), len(_HEAT_STOPS) - 2)
    t = (x - lo)[..., None]
    return ((1 - t) * _HEAT_STOPS[lo] + t * _HEAT_STOPS[lo + 1]).round().astype(np.uint8)


def blend(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * image + alpha * color``, rounded: two (H, W, 3) uint8 pictures -> (H, W, 3) uint8."""
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
            panels.append(ShowPanel(f"CAM: {name}", blend(image, heat_colors(cam), 0.6)))
    panels.append(ShowPanel("pseudo mask", VOC_COLORS[mask.astype(np.uint8)], label_map=True,
                            legend=(("uncertain (255)", UNCERTAIN_COLOR),)))
    if gt is not None:
        panels.append(ShowPanel("ground truth", VOC_COLORS[gt.astype(np.uint8)], label_map=True,
                                legend=(("no label (255)", UNCERTAIN_COLOR),)))
        labelled = gt != ignore_index
        err = np.empty((h, w, 3), np.uint8)
        err[:] = ERROR_COLORS["ignored"]
        err[labelled & (mask == gt)] = ERROR_COLORS["right"]
        err[labelled & (mask != gt)] = ERROR_COLORS["wrong"]
        err[labelled & (mask == ignore_index)] = ERROR_COLORS["uncertain"]
        # the caption stays short (narrow portrait panels); the legend says what each colour means
        key = (("right", ERROR_COLORS["right"]), ("wrong", ERROR_COLORS["wrong"]),
               ("uncertain", ERROR_COLORS["uncertain"]), ("no GT label", ERROR_COLORS["ignored"]))
        panels.append(ShowPanel("errors", blend(image, err, 0.7), legend=key))
    return panels


def _lead(draw: ImageDraw.ImageDraw, text: str, f: ImageFont.ImageFont) -> int:
    """Pixels to draw ``text`` to the right of its box so that no ink falls left of it (a glyph such as "x" can
    have a negative left side bearing)."""
    return max(0, -int(np.floor(draw.textbbox((0, 0), text, font=f)[0]))) if text else 0


def _text_right(draw: ImageDraw.ImageDraw, text: str, f: ImageFont.ImageFont) -> int:
    """Width ``text``'s ink needs when drawn ``_lead`` px right of a box's left edge (PIL ``textbbox``)."""
    return int(np.ceil(draw.textbbox((0, 0), text, font=f)[2])) + _lead(draw, text, f) if text else 0


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int, f: ImageFont.ImageFont) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width`` (a word wider than that gets a line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_right(draw, f"{lines[-1]} {word}", f) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _shorten(draw: ImageDraw.ImageDraw, text: str, width: int, f: ImageFont.ImageFont) -> str:
    """``text`` cut and ended with "…" so that it fits ``width`` ("" when not even "…" does)."""
    if _text_right(draw, text, f) <= width:
        return text
    while text and _text_right(draw, text + "…", f) > width:
        text = text[:-1]
    return text.rstrip() + "…" if text else ""


def fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, *, sizes: Sequence[int] = CAPTION_SIZES,
             max_lines: int = 2) -> tuple[list[str], int]:
    """Lines and font size that render ``text`` within ``width`` px.

    Tried in turn: one line at the largest size or up to 2 px smaller; then up to ``max_lines`` word-wrapped
    lines at each size of ``sizes`` (largest first); as a last resort, the smallest size with the wrapped lines
    cut to ``max_lines`` and each line shortened with "…". Every returned line's rendered width (PIL
    ``textbbox``) is at most ``width``.
    """
    for size in (s for s in sizes if s >= sizes[0] - 2):  # a slightly smaller font reads better than 2 lines
        if _text_right(draw, text, font(size)) <= width:
            return [text], size
    for size in sizes:
        lines = _wrap(draw, text, width, font(size))
        if len(lines) <= max_lines and all(_text_right(draw, ln, font(size)) <= width for ln in lines):
            return lines, size
    size = sizes[-1]
    f = font(size)
    lines = _wrap(draw, text, width, f)
    kept = lines[:max_lines]
    if len(lines) > max_lines:  # the rest of the words follow the last kept line and are cut with it
        kept[-1] = " ".join([kept[-1], *lines[max_lines:]])
    return [ln for ln in (_shorten(draw, ln, width, f) for ln in kept) if ln], size


_LEGEND_SIZE, _SWATCH, _LEGEND_ROW = 11, 10, 16
_Piece = tuple[int, str, tuple[int, int, int] | None]  # (x offset, text, swatch colour or None for a name)


def _legend_units(draw: ImageDraw.ImageDraw, panels: Sequence[ShowPanel]) -> list[tuple[list[_Piece], int]]:
    """The legend's unbreakable units with their widths: each panel's name with its first entry, then each of
    its other entries (a swatch and its meaning)."""
    f = font(_LEGEND_SIZE)
    units = []
    for panel in panels:
        for j, (meaning, color) in enumerate(panel.legend):
            pieces: list[_Piece] = []
            x = 0
            if j == 0:
                pieces.append((0, f"{panel.caption}:", None))
                x = _text_right(draw, pieces[0][1], f) + 6
            pieces.append((x, meaning, color))
            units.append((pieces, x + _SWATCH + 4 + _text_right(draw, meaning, f)))
    return units


def _legend_rows(draw: ImageDraw.ImageDraw, panels: Sequence[ShowPanel], width: int) -> list[list[_Piece]]:
    """The legend as rows of pieces (x from the row's start), the units wrapped to ``width`` px; a unit wider
    than ``width`` gets a row of its own (``layout_strip`` makes the strip at least that wide)."""
    rows: list[list[_Piece]] = []
    x = 0
    for pieces, w in _legend_units(draw, panels):
        if not rows or x + w > width:
            rows.append([])
            x = 0
        rows[-1].extend((x + dx, text, color) for dx, text, color in pieces)
        x += w + 14
    return rows


def layout_strip(panels: Sequence[ShowPanel], *, height: int = 240, title: str = "", gap: int = 6) -> StripLayout:
    """Compute :func:`draw_strip`'s layout: an optional title band (22 px), a caption band (22 px, taller when a
    caption needs two lines), one row of panels, each ``height`` px high and ``pw`` wide (the first panel's aspect
    ratio), then the legend rows.

    Width: ``n * pw + gap * (n + 1)``, or more when a legend entry needs it. Every caption line fits in ``pw``
    and the title in the strip (see :func:`fit_text`).
    """
    if not panels:
        raise ValueError("no panels to draw")
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    h0, w0 = panels[0].pixels.shape[:2]
    pw = max(1, round(w0 * height / h0))
    n = len(panels)
    widest_unit = max((w for _, w in _legend_units(probe, panels)), default=0)
    width = max(n * pw + gap * (n + 1), widest_unit + 2 * gap)
    fitted_title = None
    if title:
        lines, size = fit_text(probe, title, width - 2 * gap, max_lines=1)
        fitted_title = (lines[0] if lines else "", size)
    title_band = 22 if title else 0
    captions = [fit_text(probe, p.caption, pw) for p in panels]
    band = max(22, max(6 + len(lines) * (size + 3) for lines, size in captions))
    y0 = title_band + band
    boxes = [(gap + i * (pw + gap), y0, gap + i * (pw + gap) + pw, y0 + height) for i in range(n)]
    caption_y = title_band + 4
    caption_xy = [[(x0 + _lead(probe, line, font(size)), caption_y + j * (size + 3)) for j, line in enumerate(lines)]
                  for (x0, *_), (lines, size) in zip(boxes, captions)]
    title_xy = (gap + (_lead(probe, fitted_title[0], font(fitted_title[1])) if fitted_title else 0), 4)
    rows = _legend_rows(probe, panels, width - 2 * gap)
    legend_y = y0 + height + gap
    total = legend_y + (len(rows) * _LEGEND_ROW + gap if rows else 0)
    return StripLayout(width, total, boxes, captions, caption_xy, caption_y, fitted_title, title_xy, legend_y, rows)


def draw_strip(panels: Sequence[ShowPanel], path: str | Path | None = None, *, height: int = 240,
               title: str = "", gap: int = 6) -> Image.Image:
    """Lay ``panels`` out in one row (see :func:`layout_strip`), each resized to ``height`` px under its caption,
    with the panels' colour keys in a legend below; written atomically to ``path`` when given.

    Returns the RGB strip, ``layout_strip(...).width`` x ``.height`` px.
    """
    lay = layout_strip(panels, height=height, title=title, gap=gap)
    strip = Image.new("RGB", (lay.width, lay.height), "white")
    draw = ImageDraw.Draw(strip)
    if lay.title is not None:
        draw.text(lay.title_xy, lay.title[0], fill="black", font=font(lay.title[1]))
    for panel, (x0, y0, x1, y1), (lines, size), xys in zip(panels, lay.boxes, lay.captions, lay.caption_xy):
        # nearest for label maps keeps their colours exact; bilinear for photographs and heat maps
        pic = Image.fromarray(panel.pixels).resize((x1 - x0, y1 - y0),
                                                   Image.NEAREST if panel.label_map else Image.BILINEAR)
        strip.paste(pic, (x0, y0))
        for line, xy in zip(lines, xys):
            draw.text(xy, line, fill="black", font=font(size))
    f = font(_LEGEND_SIZE)
    for r, row in enumerate(lay.legend_rows):
        y = lay.legend_y + r * _LEGEND_ROW
        for x, text, color in row:
            x += gap
            if color is not None:
                draw.rectangle((x, y + 2, x + _SWATCH - 1, y + 1 + _SWATCH), fill=color, outline=(90, 90, 90))
                x += _SWATCH + 4
            draw.text((x, y), text, fill="black" if color is not None else (70, 70, 70), font=f)
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
