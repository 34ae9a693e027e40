"""The objects and backgrounds a co-occurrence dataset is pasted from: cut-outs of real GT masks (or the bundled
handwritten digits) and windows of the source photos that hold none of the benchmark's classes."""

from __future__ import annotations

import colorsys
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

#: longest side at which instances are found (their pixels are cut at full resolution)
_COMPONENT_SIDE = 160
#: the handwritten digits of ``--digits`` (benchmarks/data/README.md), and their class names in digit order
DIGITS = Path(__file__).resolve().parents[1] / "data" / "digits.csv.gz"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_SIDE = 64  #: side to which the 8x8 digits are upsampled before their mask is thresholded


@dataclass
class Instance:
    """A cut-out: (h, w, 3) uint8 pixels and its (h, w) bool mask, of class ``name``, from source image ``origin``."""

    name: str
    pixels: np.ndarray
    mask: np.ndarray
    origin: str


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected regions of a (H, W) bool mask: (labels (H, W) int64, 0 outside, 1..n inside; n), numbered in
    the order of each region's last pixel (row-major).

    Label propagation (plain numpy: the package has no scipy): every pixel starts with its own 1-based index and
    takes the largest label of its 4 neighbours until nothing changes. A label is always the index of a pixel of
    the same region, whose own label is at least as large, so each round also jumps to that pixel's label: a
    region of length L takes about log2(L) rounds instead of L."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1, dtype=np.int64).reshape(h, w), 0)
    while True:
        grown = labels.copy()
        np.maximum(grown[1:], labels[:-1], out=grown[1:])  # from the pixel above
        np.maximum(grown[:-1], labels[1:], out=grown[:-1])  # below
        np.maximum(grown[:, 1:], labels[:, :-1], out=grown[:, 1:])  # left
        np.maximum(grown[:, :-1], labels[:, 1:], out=grown[:, :-1])  # right
        grown = np.where(mask, grown, 0)
        grown = np.where(mask, grown.ravel()[np.maximum(grown, 1) - 1], 0)  # the jump
        if np.array_equal(grown, labels):
            break
        labels = grown
    uniq, inverse = np.unique(labels, return_inverse=True)
    background = 1 if uniq[0] == 0 else 0
    dense = np.where(mask, inverse.reshape(h, w) - background + 1, 0).astype(np.int64)
    return dense, int(len(uniq) - background)


def _photo(image_id: str) -> str:
    """The photo an id shows: voc-mini's ``coco_<n>`` images are coco-mini's ``<n>``, and must not be split apart."""
    return image_id.removeprefix("coco_")


def find_instances(readers: list, min_area: int) -> dict[str, list[Instance]]:
    """Every connected region of every foreground class with at least ``min_area`` pixels, by class name."""
    found: dict[str, list[Instance]] = {}
    for reader in readers:
        for image_id in reader.ids:
            image, gt = reader.load_image(image_id), reader.load_mask(image_id)
            h, w = gt.shape
            step = max(1, int(np.ceil(max(h, w) / _COMPONENT_SIDE)))
            small = gt[::step, ::step]
            for c in np.unique(small):
                if c == 0 or c == reader.ignore_index:
                    continue
                labels, n = components(small == c)
                for k in range(1, n + 1):
                    ys, xs = np.nonzero(labels == k)
                    y0, y1, x0, x1 = ys.min() * step, (ys.max() + 1) * step, xs.min() * step, (xs.max() + 1) * step
                    region = (gt[y0:y1, x0:x1] == c)
                    # the component's own pixels: the full-resolution class mask inside its upsampled footprint
                    footprint = np.kron(labels[ys.min():ys.max() + 1, xs.min():xs.max() + 1] == k,
                                        np.ones((step, step), bool))[: y1 - y0, : x1 - x0]
                    region &= footprint[: region.shape[0], : region.shape[1]]
                    if region.sum() < min_area:
                        continue
                    name = reader.class_names[int(c)]
                    found.setdefault(name, []).append(
                        Instance(name, image[y0:y1, x0:x1].copy(), region, _photo(image_id)))
    return found


def digit_instances(rng: np.random.Generator, threshold: float = 0.45) -> dict[str, list[Instance]]:
    """The 1,797 handwritten digits as cut-outs, by class name (``DIGIT_NAMES``): each 8x8 bitmap (0..16) upsampled
    bilinearly to 64x64, its mask the pixels above ``threshold`` of full ink, cropped to the mask's box, and filled
    with one colour drawn per digit, each channel dark or bright (the class is in the stroke's shape, not its
    colour; :func:`colour_by_class` changes that). Each digit is its own origin, so train and val never share
    one."""
    with gzip.open(DIGITS, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (1797, 65): 64 pixels, then the digit
    ink = torch.from_numpy(rows[:, :64].reshape(-1, 1, 8, 8) / 16)
    ink = F.interpolate(ink, size=(_DIGIT_SIDE, _DIGIT_SIDE), mode="bilinear", align_corners=False)[:, 0].numpy()
    found: dict[str, list[Instance]] = {}
    for n, (alpha, digit) in enumerate(zip(ink, rows[:, 64].astype(int))):
        mask = alpha > threshold
        ys, xs = np.nonzero(mask)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        # each channel dark or bright: a mid-grey stroke would vanish on most photos
        colour = np.where(rng.random(3) < 0.5, rng.integers(0, 50, 3), rng.integers(206, 256, 3)).astype(np.uint8)
        pixels = np.broadcast_to(colour, (*mask[box].shape, 3)).copy()
        found.setdefault(DIGIT_NAMES[digit], []).append(Instance(DIGIT_NAMES[digit], pixels, mask[box], f"digit{n}"))
    return found


def colour_by_class(instances: dict[str, list[Instance]], classes: list[str], pairs: list[tuple[str, str]],
                    rng: np.random.Generator) -> dict[str, float]:
    """Refill every digit of ``classes`` with a saturated colour of its class's hue, in place, and return the hues
    (fractions of the colour circle). The hues are evenly spaced over the classes, each pair's B taking A's: a
    patch tells every class from the others by colour, as texture tells classes apart in photos, except A from B,
    which only their shapes tell: the separation under test (docs/benchmarks.md, "class colours")."""
    own = [c for c in classes if c not in {b for _, b in pairs}]
    hues = {c: k / len(own) for k, c in enumerate(own)}
    for a, b in pairs:
        hues[b] = hues[a]
    for c in classes:
        for inst in instances[c]:
            hue = (hues[c] + rng.uniform(-0.02, 0.02)) % 1  # +-7 degrees: one hue, not one RGB value
            rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
            inst.pixels[:] = np.round(255 * np.array(rgb)).astype(np.uint8)
    return hues


def find_backgrounds(readers: list, classes: set[str], size: int, per_image: int, rng: np.random.Generator,
                     blur: float = 0.0) -> list[tuple[np.ndarray, str]]:
    """Up to ``per_image`` square windows per source image holding no pixel of ``classes``, resized to ``size``
    and, with ``blur`` > 0, Gaussian-blurred with that radius in pixels (a shallow depth of field: less texture for
    the objects to hide in), each with its type (``green`` or ``other``)."""
    out = []
    for reader in readers:
        banned = [k for k, n in enumerate(reader.class_names) if n in classes]
        for image_id in reader.ids:
            image, gt = reader.load_image(image_id), reader.load_mask(image_id)
            bad = np.isin(gt, banned)
            h, w = gt.shape
            side = min(h, w) // 2
            got = 0
            for _ in range(12):
                if got == per_image or side < 32:
                    break
                y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                if bad[y:y + side, x:x + side].any():
                    continue
                window = Image.fromarray(image[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
                window = np.asarray(window.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else window)
                r, g, b = window.reshape(-1, 3).mean(0)
                out.append((window, "green" if g > r and g > b else "other"))
                got += 1
    return out


def paste(canvas: np.ndarray, mask: np.ndarray, inst: Instance, index: int, rng: np.random.Generator,
          flip: bool = True, scale: tuple[float, float] = (0.35, 0.75)) -> None:
    """Paste ``inst`` into ``canvas`` (S, S, 3) and its class ``index`` into ``mask`` (S, S), in place, its longest
    side drawn uniformly in ``scale`` (shares of S), mirrored half of the time when ``flip``."""
    s = canvas.shape[0]
    longest = rng.uniform(*scale) * s
    h, w = inst.mask.shape
    factor = longest / max(h, w)
    size = (max(2, round(w * factor)), max(2, round(h * factor)))
    pixels = np.asarray(Image.fromarray(inst.pixels).resize(size, Image.BILINEAR))
    alpha = np.asarray(Image.fromarray(inst.mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    if rng.random() < 0.5 and flip:
        pixels, alpha = pixels[:, ::-1], alpha[:, ::-1]
    y, x = int(rng.integers(0, s - size[1] + 1)), int(rng.integers(0, s - size[0] + 1))
    region = (slice(y, y + size[1]), slice(x, x + size[0]))
    canvas[region][alpha] = pixels[alpha]
    mask[region][alpha] = index
