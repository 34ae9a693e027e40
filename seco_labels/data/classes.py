"""Class names (the layouts' own, or a user's classes file) and the VOC colour palette."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ConfigError

__all__ = ["VOC_CLASSES", "COCO_CLASSES", "voc_palette", "read_class_names", "check_class_names"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

COCO_CLASSES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


def voc_palette() -> list[int]:
    """The standard VOC colormap as 768 ints (256 RGB triples); index 255 is (224, 224, 192)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def check_class_names(names: Sequence[str], where: str) -> tuple[str, ...]:
    """``names`` as a tuple of K stripped names, background first; ``where`` names their source in errors.

    Raises:
        ConfigError: fewer than two names, an empty name, a duplicate (case-insensitive), or a first name that is
            not ``background``.
    """
    names = tuple(str(n).strip() for n in names)
    if len(names) < 2:
        raise ConfigError(f"{where} names {len(names)} class(es); give background plus at least one class")
    if names[0].lower() != "background":
        raise ConfigError(f"{where}: class 0 is {names[0]!r}; the first class must be 'background'")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            raise ConfigError(f"{where}: class {i} has an empty name")
        if name.lower() in seen:
            raise ConfigError(f"{where}: {name!r} is both class {seen[name.lower()]} and class {i}; names must differ")
        seen[name.lower()] = i
    return names


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """The K class names of a classes file, background first: one name per line, in class-index order.

    Blank lines and lines starting with ``#`` are skipped. A file that does not start with ``background`` lists the
    foreground classes 1..K-1, and background is prepended as class 0.

    Raises:
        ConfigError: the file is missing or unreadable, or its names fail :func:`check_class_names`.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"classes file {path} could not be read ({getattr(e, 'strerror', None) or e})") from None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if names and names[0].lower() != "background":
        names = ["background", *names]
    return check_class_names(names, f"classes file {path}")
