"""Dataset readers: ids, images, masks and class tags of one split, with errors that name the file or id.

A registry maps layout names to reader classes (``build_reader("voc", root, "train")``). Every reader checks at
construction what is cheap to check (split list, files present, tags complete and of the right length) and at
load time what needs decoding (corrupt or truncated files, mask size and values).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from .classes import COCO_CLASSES, VOC_CLASSES

__all__ = ["SegmentationReader", "VOCReader", "COCOReader", "SeCoCOCOReader", "READERS", "build_reader",
           "load_tags_file"]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else: the labels file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "dict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_tags_file(path: Path) -> dict[str, np.ndarray]:
    """Read ``cls_labels_onehot.npy`` (a pickled ``{id: float32 multi-hot}``) without executing code."""
    try:
        buf = io.BytesIO(path.read_bytes())
        version = np.lib.format.read_magic(buf)
        # skip the header of the 0-d object array; the pickle follows
        (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(buf)
        obj = _NumpyOnlyUnpickler(buf).load()
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"labels file {path} could not be read ({e}); it must be a pickled dict "
                        "{image_id: multi-hot float array} as written by the published WSSS code") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DataError(f"labels file {path} holds a {type(obj).__name__}, expected a dict {{image_id: multi-hot}}")
    return {str(k): np.asarray(v, dtype=np.float32).reshape(-1) for k, v in obj.items()}


def _open_checked(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image, turning any decoder failure into a DataError naming the file."""
    try:
        img = Image.open(path)
        img.load()  # forces decoding: a truncated file fails here, not later in a worker
    except FileNotFoundError:
        raise DataError(f"{what} {path} not found; check --data-root") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{what} {path} is unreadable or truncated ({e}); re-copy the file or remove its id "
                        "from the split list") from None
    return img


class SegmentationReader:
    """Base reader. Subclasses set the paths; this class does the checks and the decoding.

    Attributes: ``ids`` (list of str), ``num_classes`` (K, with background), ``class_names``, ``root``,
    ``split``, ``ignore_index``, ``has_masks``.
    """

    layout = ""
    default_classes: tuple[str, ...] = VOC_CLASSES

    def __init__(self, root: str | Path, split: str, *, num_classes: int | None = None, ignore_index: int = 255,
                 require_masks: bool = False) -> None:
        self.root = Path(root)
        self.split = split
        self.ignore_index = ignore_index
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} is not a folder; check --data-root")
        self.num_classes = num_classes or len(self.default_classes)
        self.class_names = list(self.default_classes) if self.num_classes == len(self.default_classes) else [
            f"class_{i}" for i in range(self.num_classes)]
        self.split_file = self._split_file()
        self.ids = self._read_split()
        self._check_files_exist(require_masks)
        self.has_masks = all(self.mask_path(i).is_file() for i in self.ids)
        self._tags = self._load_tags()

    # -- layout-specific ---------------------------------------------------------------------------------
    def _split_candidates(self) -> list[Path]:
        raise NotImplementedError

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def _tags_path(self) -> Path:
        return self.root / "cls_labels_onehot.npy"

    # -- checks --------------------------------------------------------------------------------------------
    def _split_file(self) -> Path:
        candidates = self._split_candidates()
        for c in candidates:
            if c.is_file():
                return c
        existing = sorted({p.stem for c in candidates if c.parent.is_dir() for p in c.parent.glob("*.txt")})
        raise DataError(f"split list {candidates[0]} not found for split {self.split!r}; "
                        f"splits found there: {', '.join(existing) or 'none'}")

    def _read_split(self) -> list[str]:
        ids = [ln.split()[0] for ln in self.split_file.read_text().splitlines() if ln.strip()]
        if not ids:
            raise DataError(f"split {self.split!r} is empty ({self.split_file}); list one image id per line")
        return ids

    def _check_files_exist(self, require_masks: bool) -> None:
        for image_id in self.ids:
            for path, needed in ((self.image_path(image_id), True), (self.mask_path(image_id), require_masks)):
                if needed and not path.is_file():
                    raise DataError(f"{path} (listed in {self.split_file}) not found; check --data-root")

    def _load_tags(self) -> dict[str, np.ndarray]:
        path = self._tags_path()
        k = self.num_classes - 1
        if not path.is_file():
            if not self.has_masks:
                raise DataError(f"no labels file {path} and no masks to derive the tags from; "
                                "provide one of them")
            return {i: self._tags_from_mask(i) for i in self.ids}
        tags = load_tags_file(path)
        missing = [i for i in self.ids if i not in tags]
        if missing:
            raise DataError(f"{len(missing)} id(s) of split {self.split!r} are missing from {path}, e.g. "
                            f"{', '.join(missing[:5])}; regenerate the labels file or fix the split list")
        for i in self.ids:
            if tags[i].shape[0] != k:
                raise DataError(f"labels of {i} in {path} have length {tags[i].shape[0]}, expected "
                                f"num_classes - 1 = {k}; check --layout / data.num_classes")
        return {i: tags[i] for i in self.ids}

    def _tags_from_mask(self, image_id: str) -> np.ndarray:
        values = np.unique(self.load_mask(image_id))
        tags = np.zeros(self.num_classes - 1, dtype=np.float32)
        fg = values[(values != 0) & (values != self.ignore_index)]
        tags[fg.astype(np.int64) - 1] = 1.0
        return tags

    # -- loading -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB (grey, RGBA, CMYK and palette images are converted)."""
        return np.asarray(_open_checked(self.image_path(image_id), "image").convert("RGB"))

    def load_mask(self, image_id: str, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 class indices; 'P' PNGs give their palette indices, not colours.

        ``image_size`` (H, W), when given, must match the mask's size.
        """
        path = self.mask_path(image_id)
        img = _open_checked(path, "mask")
        if img.mode not in ("P", "L", "I", "I;16"):
            raise DataError(f"mask {path} of {image_id} has mode {img.mode}; masks must be single-channel class "
                            "indices (palette 'P' or 'L' PNG), not colour images")
        mask = np.asarray(img)
        if image_size is not None and tuple(mask.shape) != tuple(image_size):
            raise DataError(f"mask of {image_id} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                            f"{image_size[1]}x{image_size[0]} (WxH); masks must match their images")
        bad = np.setdiff1d(np.unique(mask), [*range(self.num_classes), self.ignore_index])
        if bad.size:
            raise DataError(f"mask {path} of {image_id} has values {bad.tolist()[:8]} outside 0..{self.num_classes - 1}"
                            f" and {self.ignore_index}; is the palette/num_classes right?")
        return mask.astype(np.uint8)

    def tags(self, image_id: str) -> np.ndarray:
        """(K-1,) float32 multi-hot, background excluded."""
        return self._tags[image_id]


class VOCReader(SegmentationReader):
    """``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png``, ``ImageSets/Segmentation/<split>.txt``."""

    layout = "voc"

    def _split_candidates(self) -> list[Path]:
        return [self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"]

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClassAug" / f"{image_id}.png"


class COCOReader(SegmentationReader):
    """``images/<split>/<id>.jpg``, ``masks/<split>/<id>.png``, ``<split>.txt`` (the coco-mini layout)."""

    layout = "coco"
    default_classes = COCO_CLASSES

    def _split_candidates(self) -> list[Path]:
        return [self.root / f"{self.split}.txt"]

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / self.split / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / "masks" / self.split / f"{image_id}.png"


class SeCoCOCOReader(COCOReader):
    """The published SeCo COCO layout: ``JPEGImages/<split>/COCO_train2014_<n>.jpg`` with masks
    ``SegmentationClass/<split>/<n>.png`` (the ``COCO_<set>_`` prefix dropped), lists ``<split>.txt``."""

    layout = "coco-seco"

    def _split_candidates(self) -> list[Path]:
        return [self.root / f"{self.split}.txt", self.root / "ImageSets" / f"{self.split}.txt"]

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / self.split / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        number = image_id.rsplit("_", 1)[-1] if image_id.startswith("COCO_") else image_id
        return self.root / "SegmentationClass" / self.split / f"{number}.png"


READERS: dict[str, Callable[..., SegmentationReader]] = {
    "voc": VOCReader,
    "coco": COCOReader,
    "coco-seco": SeCoCOCOReader,
}


def build_reader(layout: str, root: str | Path, split: str, *, num_classes: int | None = None,
                 ignore_index: int = 255, require_masks: bool = False) -> SegmentationReader:
    """Reader for ``layout`` (see :data:`READERS`); raises :class:`ConfigError` listing layouts on a miss."""
    try:
        cls = READERS[layout]
    except KeyError:
        raise ConfigError(f"unknown dataset layout {layout!r}; available: {', '.join(sorted(READERS))}") from None
    return cls(root, split, num_classes=num_classes, ignore_index=ignore_index, require_masks=require_masks)
