"""Dataset readers: ids, images, masks and class tags of one split, with errors that name the file or id.

A registry maps layout names to reader classes (``build_reader("voc", root, "train")``). A reader checks at
construction what is cheap to check (split list, files present, tags complete and of the right length) and at
load time what needs decoding (corrupt or truncated files, mask size and values). Readers keep no open file
handles, so a Dataset holding one can be sent to DataLoader workers.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from .classes import COCO_CLASSES, VOC_CLASSES, check_class_names

__all__ = [
    "SegmentationReader",
    "VOCReader",
    "COCOReader",
    "SeCoCOCOReader",
    "READERS",
    "build_reader",
    "load_tags_file",
    "tags_from_mask",
    "check_class_count",
    "decode_image",
    "read_image_size",
    "image_to_rgb",
    "id_problem",
    "check_image_id",
]

_LABELS_FILE = "cls_labels_onehot.npy"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles (dicts of) numpy arrays and nothing else, so a labels file cannot run code."""

    _ALLOWED = frozenset({
        # numpy >= 2 and numpy 1.x spell the array reconstruction helpers differently
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # protocol-2 pickles written by Python 3 store the raw array bytes via _codecs.encode(str, "latin1")
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a labels file never needs")
        return super().find_class(module, name)


def _skip_npy_header(buf: io.BytesIO) -> None:
    """Advance ``buf`` past the ``.npy`` magic and header; the pickled payload follows (object arrays)."""
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(buf)
    else:  # 2.0 and 3.0 share the 4-byte header length; 3.0 only allows utf8 in it
        np.lib.format.read_array_header_2_0(buf)


def load_tags_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``cls_labels_onehot.npy``, a pickled ``{image_id: float32 (K-1,) multi-hot}``, without executing code.

    Accepts the ``np.save`` form of the published WSSS code (a 0-d object array wrapping the dict) and a bare
    pickled dict. Keys are returned as ``str``; values as flat float32 arrays.

    Raises:
        DataError: the file is missing, not a pickle of numpy arrays, or not a dict, or a vector is not numeric,
            not one (K-1,) vector, or has values outside 0..1 (names the file and the id).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"labels file {path} could not be read ({e.strerror or e}); check --data-root") from None
    buf = io.BytesIO(raw)
    try:
        if raw.startswith(b"\x93NUMPY"):
            _skip_npy_header(buf)
        obj = _NumpyOnlyUnpickler(buf).load()
    except Exception as e:  # a malformed pickle can fail with almost any exception type
        raise DataError(
            f"labels file {path} is not a pickled {{image_id: multi-hot array}} dict ({e}); regenerate it with "
            "the published WSSS tooling or remove it to derive the tags from the masks"
        ) from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DataError(f"labels file {path} holds a {type(obj).__name__}, expected a dict {{image_id: multi-hot}}")
    return {_label_key(k, path): _label_vector(k, v, path) for k, v in obj.items()}


def _label_key(key: object, path: Path) -> str:
    """An image id of a labels file as str; bytes keys (pickles written by Python 2 tooling) are decoded."""
    if isinstance(key, (bytes, np.bytes_)):
        try:
            return bytes(key).decode()
        except UnicodeDecodeError:
            raise DataError(f"labels file {path} has a key {key!r} that is not UTF-8 text") from None
    return str(key)


def _label_vector(key: object, value: object, path: Path) -> np.ndarray:
    """One label vector as a flat float32 multi-hot; refuses what cannot be one (names the file and the id).

    A (K-1,) vector, or the same with extra axes of length 1 ((1, K-1), (K-1, 1)), of 0/1 (or soft scores in
    [0, 1]); a matrix, a complex or text array, or NaN/inf/negative values are refused.
    """
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"dtype {arr.dtype}")
        vec = arr.astype(np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"labels file {path} has a non-numeric label vector for {key!r} ({e}); expected a float "
                        "multi-hot array") from None
    if sum(d != 1 for d in vec.shape) > 1:
        raise DataError(f"label vector of {key!r} in {path} has shape {vec.shape}; expected one (num_classes - 1,) "
                        "multi-hot vector per image")
    vec = vec.reshape(-1)
    if not np.isfinite(vec).all() or (vec < 0).any() or (vec > 1).any():
        raise DataError(f"label vector of {key!r} in {path} has values outside 0..1 ({vec[:8].tolist()}...); "
                        "tags are multi-hot: 1 for a class present, 0 absent")
    return vec


def tags_from_mask(mask: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(K-1,) float32 multi-hot of the classes present in a (H, W) mask; background (0) and ignore excluded."""
    values = np.unique(mask)
    fg = values[(values != 0) & (values != ignore_index)].astype(np.int64)
    tags = np.zeros(num_classes - 1, dtype=np.float32)
    tags[fg - 1] = 1.0
    return tags


def id_problem(image_id: str) -> str | None:
    """Why ``image_id`` cannot name a file (``"it contains '/'"``...), or None when it can.

    An id becomes ``<folder>/<id>.<ext>`` when images, masks and outputs are read and written, so it must stay a
    plain file name: no path separator of any platform, no leading '.' (``..``, hidden files), no NUL, not empty.
    """
    if not image_id.strip():
        return "it is empty"
    if "\x00" in image_id:
        return "it contains a NUL character"
    if "/" in image_id or "\\" in image_id:
        return "it contains '/'" if "/" in image_id else "it contains a backslash"
    if image_id.startswith("."):
        return "it starts with '.'"
    return None


def check_image_id(image_id: str, where: str = "", fix: str = "or remove the line") -> None:
    """Refuse an id that cannot name a file (see :func:`id_problem`); ``where`` prefixes the message, ``fix``
    ends it (what else the user can do).

    The one id check of the package: readers apply it to every split-list line, the artifact writer to every id
    it writes, so no id reaches a path outside the dataset or the output folder.

    Raises:
        DataError: names the id, what is wrong with it and what to do.
    """
    problem = id_problem(image_id)
    if problem is not None:
        raise DataError(
            f"{where}image id {image_id!r} cannot name a file ({problem}): ids must not contain '/', '\\' or NUL, "
            f"start with '.' or be empty; use the image's file name without folder or extension "
            f"(e.g. 2007_000032), {fix}"
        )


#: what to do about an unreadable dataset image or mask (the default end of the messages below)
_HINT = "Re-copy the file, or remove its id from the split list"


def _open_image(path: Path, what: str, hint: str, *, load: bool) -> Image.Image:
    """``Image.open`` (and with ``load`` the full decode), every failure a DataError naming the file.

    PIL warns (DecompressionBombWarning) above ``Image.MAX_IMAGE_PIXELS`` and raises above twice that; both are
    refused here, with the warning turned into an error only inside this call (``catch_warnings`` restores the
    filters on exit, so no global state outlives it).
    """
    img = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if load:
                img.load()  # decode now (and release the file): a truncated file must fail here, not as a grey strip
    except FileNotFoundError:
        raise DataError(f"{what} {path} not found; check --data-root") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if img is not None:
            img.close()
        raise DataError(
            f"{what} {path} is too large to decode safely ({e}); downscale it (or raise PIL.Image.MAX_IMAGE_PIXELS "
            f"if the image is genuine). {hint}"
        ) from None
    except Exception as e:  # PIL's plugins fail on corrupt input with almost any type (EOFError, struct.error, ...)
        if img is not None:
            img.close()
        raise DataError(f"{what} {path} is unreadable; it may be corrupt or truncated ({e}). {hint}") from None
    if img.width < 1 or img.height < 1:
        img.close()
        raise DataError(f"{what} {path} has no pixels ({img.width}x{img.height}); it is corrupt. {hint}")
    return img


def decode_image(path: Path, what: str, hint: str = _HINT) -> Image.Image:
    """Open and fully decode an image file; any decoder failure becomes a DataError naming the file.

    ``what`` names the file's role in the message ("image", "mask"), ``hint`` says what to do.

    Raises:
        DataError: missing, unreadable, truncated, empty (a 0 dimension) or larger than PIL's decompression-bomb
            limit (``Image.MAX_IMAGE_PIXELS``).
    """
    return _open_image(Path(path), what, hint, load=True)


def read_image_size(path: Path, what: str, hint: str = _HINT) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels; errors as :func:`decode_image`."""
    with _open_image(Path(path), what, hint, load=False) as img:
        return img.height, img.width


def image_to_rgb(img: Image.Image, path: Path | str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded image; ``path`` names the file in errors.

    RGB is returned as is; grey (L), 1-bit, LA, RGBA, CMYK, YCbCr and palette (P, PA, with or without
    transparency) images are converted by PIL (alpha dropped). 16-bit grey (``I;16`` in any byte order) keeps its
    8 high bits (``value >> 8``), and 32-bit integer grey (``I``, what PIL makes of 16-bit PNGs and TIFFs) is
    read as 16-bit data: clipped to 0..65535, then ``>> 8``; PIL's own conversion would clip both to 0..255,
    i.e. turn nearly every pixel white. 16-bit RGB(A) PNGs are reduced to 8 bits by PIL when read.

    Raises:
        DataError: a float ('F') image (its value range is unknown, so no scaling is right: save it as 8-bit),
            or a mode PIL cannot convert to RGB (names the file and the mode).
    """
    mode = img.mode
    if mode == "RGB":
        return np.array(img)  # writable, unlike np.asarray
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(img)
        if mode == "I":
            grey = np.clip(grey, 0, 65535)
        grey8 = (grey.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if mode == "F":
        raise DataError(
            f"image {path} has 32-bit float pixels (mode F), whose value range is unknown; save it as an 8-bit "
            "RGB or grey image (PNG or JPEG)"
        )
    try:
        return np.array(img.convert("RGB"))
    except (ValueError, OSError) as e:
        raise DataError(f"image {path} has mode {mode}, which cannot be converted to RGB ({e}); save it as an "
                        "8-bit RGB image") from None


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
    (``export-masks --skip-bad``).

    Raises:
        DataError: the root, split list, a listed image (or mask, with ``require_masks``) is missing, the split
            is empty, or the labels file lacks ids or has vectors of the wrong length.
    """

    layout: ClassVar[str] = ""
    default_classes: ClassVar[tuple[str, ...]] = VOC_CLASSES

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
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.ignore_index = ignore_index
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

    # -- construction checks -------------------------------------------------------------------------------
    def _find_split_file(self) -> Path:
        candidates = self._split_candidates()
        for c in candidates:
            if c.is_file():
                return c
        found = sorted({p.name for c in candidates if c.parent.is_dir() for p in c.parent.glob("*.txt")})
        raise DataError(
            f"split list {candidates[0]} not found for split {self.split!r} (layout {self.layout!r}); "
            f"split files there: {', '.join(found) or 'none'}"
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
        """(H, W) of an image from its header, without decoding the pixels."""
        return read_image_size(self.image_path(image_id), "image")

    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB; grey, 16-bit grey, RGBA, CMYK and palette images are converted (see
        :func:`image_to_rgb`)."""
        path = self.image_path(image_id)
        with decode_image(path, "image") as img:
            return image_to_rgb(img, path)

    def load_mask(self, image_id: str, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 class indices in 0..K-1 or ``ignore_index``; 'P' PNGs give their palette indices.

        The mask must have the size of its image: ``image_size`` (H, W) when the caller already knows it,
        else read from the image header.
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
        return mask.astype(np.uint8)

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
) -> SegmentationReader:
    """The reader of ``layout`` (a key of :data:`READERS`) for ``split`` under ``root``.

    ``num_classes=None`` takes the layout's default (voc 21, coco 81), or the count of ``class_names`` (K names,
    background first) when given; ``require_masks`` makes a missing mask
    an error at construction (evaluation needs them, training does not).

    Raises:
        ConfigError: unknown layout (lists the valid ones).
        DataError: see :class:`SegmentationReader`.
    """
    try:
        cls = READERS[layout]
    except KeyError:
        raise ConfigError(f"unknown dataset layout {layout!r}; valid layouts: {', '.join(sorted(READERS))}") from None
    return cls(root, split, num_classes=num_classes, class_names=class_names, ignore_index=ignore_index,
               require_masks=require_masks, require_images=require_images, require_tags=require_tags)
