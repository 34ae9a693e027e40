"""Image normalisation and the training views of DESIGN.md §3, driven by an explicit numpy Generator.

No torchvision random transform is used: they draw from torch's global RNG, which would make a sample depend
on the worker that produced it. Every draw here comes from the ``rng`` argument, seeded per sample.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize", "denormalize", "random_rescale", "random_hflip",
           "random_crop_with_box", "photometric", "random_resized_crop", "TrainViews"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(img: np.ndarray | Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet-normalised."""
    t = torch.from_numpy(np.array(img, dtype=np.float32, copy=True)).permute(2, 0, 1) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised -> float RGB in 0..255 (not clipped)."""
    mean = t.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = t.new_tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    return t * std + mean


def random_rescale(img: np.ndarray, scale_range: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Bilinear resize by a factor drawn uniformly from ``scale_range``."""
    s = rng.uniform(*scale_range)
    h, w = img.shape[:2]
    size = (max(1, int(s * w)), max(1, int(s * h)))
    return np.asarray(Image.fromarray(img).resize(size, resample=Image.BILINEAR))


def random_hflip(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1]) if rng.random() < p else img


def random_crop_with_box(img: np.ndarray, crop_size: int, rng: np.random.Generator,
                         pad_value: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pad to at least ``crop_size`` at a random offset, crop a random square.

    Returns ``(crop (S, S, 3) uint8, box int64 (4,) = [h0, h1, w0, w1])``, the box of real image pixels.
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


def _colour_jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    # torchvision ColorJitter(0.4, 0.4, 0.2, 0.1): the four ops in random order with factors drawn here.
    ops = [
        lambda im: TF.adjust_brightness(im, rng.uniform(0.6, 1.4)),
        lambda im: TF.adjust_contrast(im, rng.uniform(0.6, 1.4)),
        lambda im: TF.adjust_saturation(im, rng.uniform(0.8, 1.2)),
        lambda im: TF.adjust_hue(im, rng.uniform(-0.1, 0.1)),
    ]
    for i in rng.permutation(4):
        img = ops[i](img)
    return img


def photometric(img: Image.Image, rng: np.random.Generator, *, blur_p: float, solarize_p: float) -> Image.Image:
    """Colour jitter (p .8), grey (p .2), Gaussian blur (radius .1-2, p ``blur_p``), solarize (p ``solarize_p``)."""
    if rng.random() < 0.8:
        img = _colour_jitter(img, rng)
    if rng.random() < 0.2:
        img = ImageOps.grayscale(img).convert("RGB")
    if rng.random() < blur_p:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    if rng.random() < solarize_p:
        img = ImageOps.solarize(img)
    return img


def random_resized_crop(img: Image.Image, size: int, scale: tuple[float, float], rng: np.random.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop (10 tries, then a centre crop), bicubic, with draws from ``rng``."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            return img.resize((size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    side = min(w, h)
    x, y = (w - side) // 2, (h - side) // 2
    return img.resize((size, size), Image.BICUBIC, box=(x, y, x + side, y + side))


class TrainViews:
    """The three views of one training image (DESIGN.md §3, published dataset code).

    ``__call__(image (H, W, 3) uint8, rng)`` returns a dict of tensors:
    ``image`` (3, S, S): rescale -> flip -> padded crop (also the first global view); ``box`` (4,) its valid
    pixels; ``global2`` (3, S, S): random resized crop of the original image + flip + photometric (blur p .1,
    solarize p .2); ``strong`` (3, S, S): the same crop as ``image`` + flip (p ``strong_flip_p``) + photometric
    (blur p .5, no solarize), the teacher's view.
    """

    def __init__(self, crop_size: int, rescale_range: tuple[float, float] = (0.5, 2.0),
                 global_crop_scale: tuple[float, float] = (0.4, 1.0), strong_flip_p: float = 0.5) -> None:
        self.crop_size = crop_size
        self.rescale_range = tuple(rescale_range)
        self.global_crop_scale = tuple(global_crop_scale)
        self.strong_flip_p = strong_flip_p

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        img = random_rescale(image, self.rescale_range, rng)
        img = random_hflip(img, rng)
        crop, box = random_crop_with_box(img, self.crop_size, rng)
        strong = Image.fromarray(random_hflip(crop, rng, self.strong_flip_p))
        strong = photometric(strong, rng, blur_p=0.5, solarize_p=0.0)
        g2 = random_resized_crop(Image.fromarray(image), self.crop_size, self.global_crop_scale, rng)
        g2 = Image.fromarray(random_hflip(np.asarray(g2), rng))
        g2 = photometric(g2, rng, blur_p=0.1, solarize_p=0.2)
        return {"image": normalize(crop), "box": torch.from_numpy(box), "global2": normalize(g2),
                "strong": normalize(strong)}
