"""Dataset readers: ids, images, masks and class tags of one split, with errors that name the file or id.

A registry maps layout names to reader classes (``build_reader("voc", root, "train")``). A reader checks at
construction what is cheap to check (split list, files present, tags complete and of the right length) and at
load time what needs decoding (corrupt or truncated files, mask size and values). Readers keep no open file
handles, so a Dataset holding one can be sent to DataLoader workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .classes import COCO_CLASSES, VOC_CLASSES, check_class_names
from .images import bounded_size, check_image_id, decode_image, downscale, image_to_rgb, read_image_size
from .tags import load_tags_file, tags_from_mask

__all__ = [
    "SegmentationReader",
    "VOCReader",
    "COCOReader",
    "SeCoCOCOReader",
    "READERS",
    "build_reader",
    "register_reader",
    "detect_layout",
    "dataset_classes",
    "check_class_count",
]

_LABELS_FILE = "cls_labels_onehot.npy"


class SegmentationReader:
    """Base reader: subclasses name the paths of a layout; this class does the checks and the decoding.

    Attributes:
        ids: image ids of the split, in list order.
        num_classes: K, background included.
        class_names: K names, background first.
        root, split, ignore_index: as given.
        split_file: the list file the ids came from.
        has_masks: every listed id has a mask file.

    Class names are ``class_names`` when given (K names, background first; K is then their count), else the
    layout's own when ``num_classes`` is its count, else ``class_1``... Tags come from ``cls_labels_onehot.npy``;
    without that file they are derived from the masks (on first use of each id, then cached).
    ``require_tags=False`` accepts a split without tags (a labels file or masks), for exports that predict the
    tags; ``require_images=False`` defers a missing image to its loading, so a caller can skip it
    (``export-masks --skip-bad``). ``max_side`` > 0 downscales every image whose long side is larger to that long
    side, its mask with it (``data.max_side``): :meth:`load_image`, :meth:`load_mask` and :meth:`image_size` give
    the bounded size.

    Raises:
        DataError: the root, split list, a listed image (or mask, with ``require_masks``) is missing, the split
            is empty, or the labels file lacks ids or has vectors of the wrong length.
    """

    layout: ClassVar[str] = ""
    default_classes: ClassVar[tuple[str, ...]] = VOC_CLASSES
    #: the dataset names its own classes (the folder layout's tags file): a run adopts them (:func:`dataset_classes`)
    classes_from_data: ClassVar[bool] = False

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        require_masks: bool = False,
        require_images: bool = True,
        require_tags: bool = True,
        max_side: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.ignore_index = ignore_index
        self.max_side = int(max_side or 0)
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} is not a folder; check --data-root")
        if class_names:
            names = check_class_names(class_names, "data.class_names")
            if num_classes is not None and int(num_classes) != len(names):
                raise ConfigError(f"data.num_classes={num_classes} but data.class_names names {len(names)} classes "
                                  f"({', '.join(names[:4])}, ...); drop one of them or make them agree")
            num_classes = len(names)
        self.num_classes = len(self.default_classes) if num_classes is None else int(num_classes)
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must count background plus at least one class, got {self.num_classes}")
        if class_names:
            self.class_names = list(names)
        elif self.num_classes == len(self.default_classes):
            self.class_names = list(self.default_classes)
        else:
            self.class_names = ["background"] + [f"class_{i}" for i in range(1, self.num_classes)]
        self.split_file = self._find_split_file()
        self.ids = self._read_split()
        self._check_files(require_masks, require_images)
        self.has_masks = all(self.mask_path(i).is_file() for i in self.ids)
        self.labels_file: Path | None = self.root / _LABELS_FILE
        if not self.labels_file.is_file():
            self.labels_file = None
        self._tags = self._load_tags(require_tags)

    # -- layout-specific -----------------------------------------------------------------------------------
    def _split_candidates(self) -> list[Path]:
        """Where the split list may be, preferred first."""
        raise NotImplementedError

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path:
        raise NotImplementedError

    @classmethod
    def marker(cls, root: Path) -> str | None:
        """The file that marks ``root`` as a dataset of this layout (``tags.csv``), for the hint of another layout's
        missing split list; None when there is none or the layout has no such file."""
        return None

    @classmethod
    def detect(cls, root: Path) -> str | None:
        """What shows that ``root`` holds this layout (``images/ and tags.csv``), for :func:`detect_layout`; None
        when it does not, or the layout is never detected (the research layouts are named or a preset's)."""
        return None

    # -- construction checks -------------------------------------------------------------------------------
    def _find_split_file(self) -> Path:
        candidates = self._split_candidates()
        for c in candidates:
            if c.is_file():
                return c
        found = sorted({p.name for c in candidates if c.parent.is_dir() for p in c.parent.glob("*.txt")})
        other = next(((name, mark) for name, cls in READERS.items()
                      if name != self.layout and (mark := cls.marker(self.root))), None)
        hint = (f". {self.root} holds {other[1]}: it is a dataset of the {other[0]} layout, read it with --layout "
                f"{other[0]}" if other else "")
        raise DataError(
            f"split list {candidates[0]} not found for split {self.split!r} (layout {self.layout!r}); "
            f"split files there: {', '.join(found) or 'none'}{hint}"
        )

    def _read_split(self) -> list[str]:
        """The ids of the split list, each checked by :func:`check_image_id` (naming the file and line)."""
        try:
            # utf-8-sig: a list saved by a Windows editor starts with a BOM that would otherwise join the first id
            text = self.split_file.read_bytes().decode("utf-8-sig")
        except OSError as e:
            raise DataError(f"split list {self.split_file} could not be read ({e.strerror or e})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"split list {self.split_file} is not UTF-8 text ({e}); list one image id per line") from None
        ids = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            # a line may carry extra columns (some lists append a label); the id is the first field
            image_id = line.split()[0]
            check_image_id(image_id, f"split list {self.split_file} line {number}: ")
            ids.append(image_id)
        if not ids:
            raise DataError(f"split {self.split!r} is empty ({self.split_file}); list one image id per line")
        return ids

    def _check_files(self, require_masks: bool, require_images: bool = True) -> None:
        kinds = ([("image", self.image_path)] if require_images else []) + (
            [("mask", self.mask_path)] if require_masks else [])
        for what, path_of in kinds:
            missing = [path_of(i) for i in self.ids if not path_of(i).is_file()]
            if missing:
                more = f" ({len(missing)} of {len(self.ids)} listed {what}s are missing)" if len(missing) > 1 else ""
                raise DataError(f"{missing[0]} (listed in {self.split_file}) not found; check --data-root{more}")

    def _load_tags(self, require_tags: bool = True) -> dict[str, np.ndarray]:
        if self.labels_file is None:
            if not self.has_masks and require_tags:
                absent = next(self.mask_path(i) for i in self.ids if not self.mask_path(i).is_file())
                raise DataError(
                    f"no labels file {self.root / _LABELS_FILE} and mask {absent} is missing, so the tags of "
                    f"split {self.split!r} cannot be derived; provide the labels file or the masks"
                )
            return {}  # derived from the masks on demand
        tags = load_tags_file(self.labels_file)
        missing = [i for i in self.ids if i not in tags]
        if missing and require_tags:
            raise DataError(
                f"{len(missing)} id(s) of split {self.split!r} are missing from {self.labels_file}: "
                f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}; regenerate the labels file "
                "or fix the split list"
            )
        want = self.num_classes - 1
        for i in self.ids:
            if i not in tags:
                continue
            n = tags[i].shape[0]
            if n != want:
                raise DataError(
                    f"label vector of {i} in {self.labels_file} has length {n}, expected num_classes - 1 = {want}; "
                    f"the file implies num_classes = {n + 1}: check --layout / data.num_classes"
                )
        return {i: tags[i] for i in self.ids if i in tags}

    # -- loading -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(H, W) of an image from its header, without decoding the pixels; bounded by ``max_side``."""
        return bounded_size(read_image_size(self.image_path(image_id), "image"), self.max_side)

    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB; grey, 16-bit grey, RGBA, CMYK and palette images are converted (see
        :func:`image_to_rgb`); downscaled (antialiased) to ``max_side`` when larger."""
        path = self.image_path(image_id)
        with decode_image(path, "image") as img:
            rgb = image_to_rgb(img, path)
        return downscale(rgb, self.max_side)

    def load_mask(self, image_id: str, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 class indices in 0..K-1 or ``ignore_index``; 'P' PNGs give their palette indices.

        The mask must have the size of its image: ``image_size`` (H, W) when the caller already knows it,
        else read from the image header. With ``max_side`` the mask is checked against the image file's header and
        downscaled with nearest neighbour to the bounded size (the size of :meth:`load_image`).
        """
        path = self.mask_path(image_id)
        with decode_image(path, "mask") as img:
            mode = img.mode
            mask = np.asarray(img)
        if mode not in ("P", "L", "I", "I;16"):
            raise DataError(
                f"mask {path} of {image_id} has mode {mode}; masks must hold class indices in one channel "
                "(palette 'P' or grey 'L' PNG), not colours"
            )
        if self.max_side:  # image_size is the bounded one: compare the files
            h, w = read_image_size(self.image_path(image_id), "image")
        else:
            h, w = image_size if image_size is not None else self.image_size(image_id)
        if mask.shape != (h, w):
            raise DataError(
                f"mask of {image_id} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is {w}x{h}; "
                f"masks must match their images ({path})"
            )
        bad = np.setdiff1d(np.unique(mask), [*range(self.num_classes), self.ignore_index])
        if bad.size:
            hint = (
                "the PNG's palette indices are read as classes, so it was written with another class numbering"
                if mode == "P"
                else "if it was converted from a colour (palette) mask the values are grey levels, not classes; "
                "save masks as palette 'P' PNGs of class indices"
            )
            raise DataError(
                f"mask {path} of {image_id} has values {bad.tolist()[:8]} outside 0..{self.num_classes - 1} and "
                f"{self.ignore_index}; {hint} (or num_classes is wrong)"
            )
        return downscale(mask.astype(np.uint8), self.max_side, labels=True)

    def tags(self, image_id: str) -> np.ndarray:
        """(K-1,) float32 multi-hot of the classes present, background excluded."""
        try:
            return self._tags[image_id]
        except KeyError:
            if self.labels_file is not None or image_id not in self.ids:
                raise DataError(f"image id {image_id!r} is not in split {self.split!r} ({self.split_file})") from None
        tags = tags_from_mask(self.load_mask(image_id), self.num_classes, self.ignore_index)
        self._tags[image_id] = tags
        return tags


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
    """``images/<split>/<id>.jpg``, ``masks/<split>/<id>.png``, ``<split>.txt`` (the coco-mini layout), 81 classes."""

    layout = "coco"
    default_classes = COCO_CLASSES

    def _split_candidates(self) -> list[Path]:
        return [self.root / f"{self.split}.txt"]

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / self.split / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / "masks" / self.split / f"{image_id}.png"


class SeCoCOCOReader(COCOReader):
    """The published SeCo COCO layout, 81 classes.

    Images ``JPEGImages/<folder>/COCO_train2014_<n>.jpg``, masks ``SegmentationClass/<folder>/<n>.png`` (the
    ``COCO_<set>_`` prefix dropped), lists ``<split>.txt`` or ``ImageSets/<split>.txt``. ``<folder>`` is the
    split name when ``JPEGImages/<split>`` exists; otherwise, as in the published code, where lists such as
    ``val_part`` read from ``val``, it comes from the id's prefix (``COCO_val2014_...`` -> ``val``).
    """

    layout = "coco-seco"

    def _split_candidates(self) -> list[Path]:
        return [self.root / f"{self.split}.txt", self.root / "ImageSets" / f"{self.split}.txt"]

    def _folder(self, image_id: str) -> str:
        if (self.root / "JPEGImages" / self.split).is_dir():
            return self.split
        if image_id.startswith("COCO_"):
            return image_id.split("_")[1].rstrip("0123456789")  # COCO_val2014_... -> val
        return self.split

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / self._folder(image_id) / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        number = image_id.rsplit("_", 1)[-1] if image_id.startswith("COCO_") else image_id
        return self.root / "SegmentationClass" / self._folder(image_id) / f"{number}.png"


def check_class_count(reader: SegmentationReader) -> None:
    """Refuse a class count the split's masks contradict: tags derived from masks (no labels file) that use only
    the lower half of the classes, as a 3-class dataset read with the VOC layout's 21 classes does.

    A labels file fixes the count by its vectors' length (checked when it is read), and explicit class names are
    the user's word; call this only when the classes are the layout's default. Reads every mask of the split once.

    Raises:
        DataError: no image of the split has a foreground class, or the highest class used is in the lower half
            (names the count to set and the option that sets it).
    """
    if reader.labels_file is not None:
        return
    used = np.zeros(reader.num_classes - 1, dtype=bool)
    for i in reader.ids:
        used |= reader.tags(i) > 0
    if not used.any():
        raise DataError(
            f"no image of split {reader.split!r} ({reader.split_file}) has a foreground class in its mask, so there "
            "is nothing to learn; check the masks' values (class indices, 0 = background)"
        )
    top = int(np.flatnonzero(used)[-1]) + 1  # highest class index present
    k = reader.num_classes
    if 2 * top <= k - 1:
        raise DataError(
            f"the {len(reader)} masks of split {reader.split!r} ({reader.root}) use classes 1..{top} only, but "
            f"{k} classes ({', '.join(reader.class_names[1:4])}, ...) are configured; name your dataset's classes "
            f"with --classes FILE (one per line; or --set data.num_classes={top + 1}), or give the {k} names to "
            "keep them all"
        )


READERS: dict[str, type[SegmentationReader]] = {
    VOCReader.layout: VOCReader,
    COCOReader.layout: COCOReader,
    SeCoCOCOReader.layout: SeCoCOCOReader,
}


def register_reader(cls: type[SegmentationReader]) -> type[SegmentationReader]:
    """Class decorator: make ``cls`` the reader of ``cls.layout`` (``--layout``, ``data.layout``)."""
    READERS[cls.layout] = cls
    return cls


def detect_layout(root: str | Path) -> tuple[str, str] | None:
    """``(layout, what shows it)`` of the first registered layout that recognises ``root`` (the folder layout:
    ``images/`` and a tags file), or None. ``seco train`` reads such a root with that layout when none is named."""
    root = Path(root)
    if not root.is_dir():
        return None
    for name, cls in READERS.items():
        found = cls.detect(root)
        if found:
            return name, found
    return None


def dataset_classes(layout: str, root: str | Path) -> tuple[str, ...] | None:
    """The K class names (background first) a dataset names itself, for a layout whose classes come from the data
    (the folder layout: ``classes.txt`` or its tags); None for a layout of fixed classes (voc, coco), whose count is
    the config's."""
    cls = READERS.get(layout)
    if cls is None or not cls.classes_from_data:
        return None
    return tuple(cls(root, "all", require_tags=False, require_images=False).class_names)


def build_reader(
    layout: str,
    root: str | Path,
    split: str,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    require_masks: bool = False,
    require_images: bool = True,
    require_tags: bool = True,
    max_side: int = 0,
) -> SegmentationReader:
    """The reader of ``layout`` (a key of :data:`READERS`) for ``split`` under ``root``.

    ``num_classes=None`` takes the layout's default (voc 21, coco 81), or the count of ``class_names`` (K names,
    background first) when given; ``require_masks`` makes a missing mask
    an error at construction (evaluation needs them, training does not); ``max_side`` bounds the images' long side
    (``data.max_side``, 0 = off).

    Raises:
        ConfigError: unknown layout (lists the valid ones).
        DataError: see :class:`SegmentationReader`.
    """
    try:
        cls = READERS[layout]
    except KeyError:
        raise ConfigError(f"unknown dataset layout {layout!r}; valid layouts: {', '.join(sorted(READERS))}") from None
    return cls(root, split, num_classes=num_classes, class_names=class_names, ignore_index=ignore_index,
               require_masks=require_masks, require_images=require_images, require_tags=require_tags,
               max_side=max_side)
