"""Image normalisation and the training views of docs/design.md §3, driven by an explicit numpy Generator.

No torchvision random transform is used: they draw from torch's global RNG, which would make a sample depend
on the worker that produced it. Every draw here comes from the ``rng`` argument, seeded per sample.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps

from ..errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize",
    "denormalize",
    "random_rescale",
    "random_hflip",
    "random_crop_with_box",
    "random_resized_crop",
    "colour_jitter",
    "random_grayscale",
    "random_gaussian_blur",
    "random_solarize",
    "photometric",
    "TrainViews",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(img: np.ndarray | Image.Image) -> torch.Tensor:
    """(H, W, 3) RGB in 0..255 (uint8, float, or a PIL image) -> (3, H, W) float32, ImageNet-normalised."""
    t = torch.from_numpy(np.array(img, dtype=np.float32, copy=True)).permute(2, 0, 1) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) ImageNet-normalised -> float RGB in 0..255 (not clipped or rounded)."""
    mean = t.new_tensor(IMAGENET_MEAN).view(3, 1, 1) * 255.0
    std = t.new_tensor(IMAGENET_STD).view(3, 1, 1) * 255.0
    return t * std + mean


def random_rescale(img: np.ndarray, scale_range: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 -> (int(s*H), int(s*W), 3) uint8, bilinear, s uniform in ``scale_range`` (published
    ``random_scaling``)."""
    s = rng.uniform(*scale_range)
    h, w = img.shape[:2]
    size = (max(1, int(s * w)), max(1, int(s * h)))  # PIL wants (W, H)
    return np.asarray(Image.fromarray(img).resize(size, resample=Image.BILINEAR))


def random_hflip(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror an (H, W, ...) array left-right with probability ``p`` (one draw from ``rng`` either way)."""
    return np.ascontiguousarray(img[:, ::-1]) if rng.random() < p else img


def random_crop_with_box(img: np.ndarray, crop_size: int, rng: np.random.Generator,
                         pad_value: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pad (H, W, 3) uint8 to at least ``crop_size`` on each side, the image at a random offset, then crop a
    random ``crop_size`` square (published ``random_crop``).

    Returns ``(crop (S, S, 3) uint8, box (4,) int64 = [h0, h1, w0, w1])``: rows h0:h1 and columns w0:w1 of the
    crop are image pixels, everything else is ``pad_value``.
    """
    h, w = img.shape[:2]
    ph, pw = max(crop_size, h), max(crop_size, w)
    oy, ox = int(rng.integers(ph - h + 1)), int(rng.integers(pw - w + 1))
    padded = np.full((ph, pw, 3), pad_value, dtype=np.uint8)
    padded[oy : oy + h, ox : ox + w] = img
    y0, x0 = int(rng.integers(ph - crop_size + 1)), int(rng.integers(pw - crop_size + 1))
    crop = padded[y0 : y0 + crop_size, x0 : x0 + crop_size]
    box = np.array([max(oy - y0, 0), min(crop_size, oy + h - y0), max(ox - x0, 0), min(crop_size, ox + w - x0)],
                   dtype=np.int64)
    return crop, box


def colour_jitter(img: Image.Image, rng: np.random.Generator, p: float = 0.8) -> Image.Image:
    """With probability ``p``, torchvision's ``ColorJitter(0.4, 0.4, 0.2, 0.1)``: brightness and contrast
    factors in [0.6, 1.4], saturation in [0.8, 1.2], hue shift in [-0.1, 0.1] turns, applied in random order."""
    if rng.random() >= p:
        return img
    ops = [
        lambda im: TF.adjust_brightness(im, rng.uniform(0.6, 1.4)),
        lambda im: TF.adjust_contrast(im, rng.uniform(0.6, 1.4)),
        lambda im: TF.adjust_saturation(im, rng.uniform(0.8, 1.2)),
        lambda im: TF.adjust_hue(im, rng.uniform(-0.1, 0.1)),
    ]
    for i in rng.permutation(4):
        img = ops[i](img)
    return img


def random_grayscale(img: Image.Image, rng: np.random.Generator, p: float = 0.2) -> Image.Image:
    """With probability ``p``, the luma (ITU-R 601) copied to all three channels."""
    return ImageOps.grayscale(img).convert("RGB") if rng.random() < p else img


def random_gaussian_blur(img: Image.Image, rng: np.random.Generator, p: float) -> Image.Image:
    """With probability ``p``, PIL Gaussian blur of radius uniform in [0.1, 2.0] pixels."""
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0))) if rng.random() < p else img


def random_solarize(img: Image.Image, rng: np.random.Generator, p: float) -> Image.Image:
    """With probability ``p``, invert every channel value >= 128."""
    return ImageOps.solarize(img) if rng.random() < p else img


def photometric(img: Image.Image, rng: np.random.Generator, *, blur_p: float, solarize_p: float) -> Image.Image:
    """Colour jitter (p .8) -> grey (p .2) -> blur (p ``blur_p``) -> solarize (p ``solarize_p``)."""
    img = random_grayscale(colour_jitter(img, rng), rng)
    return random_solarize(random_gaussian_blur(img, rng, blur_p), rng, solarize_p)


def random_resized_crop(img: Image.Image, size: int, scale: tuple[float, float], rng: np.random.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop with draws from ``rng``: a box of ``scale`` x image area and aspect in
    ``ratio`` (log-uniform), 10 tries, else the centre crop clamped to ``ratio``; bicubic to ``size`` x ``size``."""
    w, h = img.size
    area = w * h
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            return _crop_resize(img, (x, y, x + cw, y + ch), size)
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        cw, ch = int(round(h * max(ratio))), h
    else:
        cw, ch = w, h
    x, y = (w - cw) // 2, (h - ch) // 2
    return _crop_resize(img, (x, y, x + cw, y + ch), size)


def _crop_resize(img: Image.Image, box: tuple[int, int, int, int], size: int) -> Image.Image:
    """Crop, then resize bicubically to ``size`` x ``size``, as torchvision's ``resized_crop`` does on PIL images:
    the filter sees only the box (``resize(box=)`` would also read the pixels around it)."""
    return img.crop(box).resize((size, size), Image.BICUBIC)


class TrainViews:
    """The three views of one training image (docs/design.md §3, the published VOC/COCO dataset code).

    ``views(image, rng)`` with ``image`` (H, W, 3) uint8 returns float32 tensors, S = ``crop_size``:

    - ``image`` (3, S, S): rescale by ``rescale_range`` -> flip (p ``flip_p``) -> padded random crop; the student's
      weak view and the first global view;
    - ``box`` (4,) int64 ``[h0, h1, w0, w1]``: the image pixels inside ``image`` (the rest is zero padding);
    - ``strong`` (3, S, S): the same uint8 crop -> flip (p ``strong_flip_p``) -> colour jitter (p .8) -> grey
      (p .2) -> blur (p .5); the local teacher's view. The published code flips it independently (p .5), which
      misplaces the teacher's local crops half the time; ``strong_flip_p=0`` keeps the two views aligned;
    - ``global2`` (3, S, S): random resized crop of the original image (area fraction ``global_crop_scale``,
      aspect 3/4..4/3, bicubic) -> flip (p ``flip_p``) -> colour jitter (p .8) -> grey (p .2) -> blur (p .1) ->
      solarize (p .2).

    All randomness comes from ``rng``, so equal generator states give equal views; every flip draws from ``rng``
    whatever its probability, so ``flip_p=0`` changes nothing else about the views.
    """

    def __init__(self, crop_size: int, rescale_range: tuple[float, float] = (0.5, 2.0),
                 global_crop_scale: tuple[float, float] = (0.4, 1.0), strong_flip_p: float = 0.5,
                 flip_p: float = 0.5) -> None:
        if crop_size < 1:
            raise ConfigError(f"data.crop_size must be a positive number of pixels, got {crop_size}")
        for key, (lo, hi) in (("data.rescale_range", rescale_range), ("data.global_crop_scale", global_crop_scale)):
            if not 0 < lo <= hi:
                raise ConfigError(f"{key} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        if global_crop_scale[1] > 1:
            raise ConfigError(f"data.global_crop_scale is a fraction of the image area, <= 1; got {global_crop_scale}")
        for key, p in (("data.strong_flip_p", strong_flip_p), ("data.flip_p", flip_p)):
            if not 0 <= p <= 1:
                raise ConfigError(f"{key} is a probability in [0, 1], got {p}")
        self.crop_size = int(crop_size)
        self.rescale_range = (float(rescale_range[0]), float(rescale_range[1]))
        self.global_crop_scale = (float(global_crop_scale[0]), float(global_crop_scale[1]))
        self.strong_flip_p = float(strong_flip_p)
        self.flip_p = float(flip_p)

    def __repr__(self) -> str:
        return (f"TrainViews(crop_size={self.crop_size}, rescale_range={self.rescale_range}, "
                f"global_crop_scale={self.global_crop_scale}, strong_flip_p={self.strong_flip_p}, "
                f"flip_p={self.flip_p})")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        img = random_rescale(image, self.rescale_range, rng)
        img = random_hflip(img, rng, self.flip_p)
        crop, box = random_crop_with_box(img, self.crop_size, rng)
        strong = Image.fromarray(random_hflip(crop, rng, self.strong_flip_p))
        strong = photometric(strong, rng, blur_p=0.5, solarize_p=0.0)
        g2 = random_resized_crop(Image.fromarray(image), self.crop_size, self.global_crop_scale, rng)
        g2 = g2.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < self.flip_p else g2
        g2 = photometric(g2, rng, blur_p=0.1, solarize_p=0.2)
        return {"image": normalize(crop), "box": torch.from_numpy(box), "global2": normalize(g2),
                "strong": normalize(strong)}
