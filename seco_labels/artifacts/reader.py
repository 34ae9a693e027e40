"""Reading an exported split: per-id masks and CAMs (:class:`ArtifactFile`) and a torch ``Dataset``
(:func:`open_pseudo_labels`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.images import decode_image
from ..errors import DataError
from .confidence import MaskConfidence
from .encoding import read_root_attrs
from .layout import FORMAT_VERSION

# -- reading -------------------------------------------------------------------------------------------------
#: what h5py raises on a damaged file: mostly OSError, but corrupt metadata can surface as any of these
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError)


class ArtifactFile:
    """One ``cams_<split>.h5``: masks and CAMs by image id (a ``seco evaluate`` mask and CAM source).

    The file is opened on first use in each process (safe to pickle into DataLoader workers).

    Raises:
        DataError: the file is missing, not HDF5, truncated or damaged, of a newer format, lacks an id, or holds a
            mask or CAM of the wrong type or shape (names the file, and the id where there is one).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        f = self._h5()
        try:
            complete = ("format_version" in f.attrs and isinstance(f.get("masks"), h5py.Group)
                        and isinstance(f.get("cams"), h5py.Group))
            if not complete:
                raise DataError(f"{self.path} is not a seco_labels artifact (no format_version, /cams or /masks)")
            version = int(f.attrs["format_version"])
            self.attrs = read_root_attrs(f)
        except DataError:
            self.close()
            raise
        except _H5_ERRORS as e:
            self.close()
            raise self._damaged(e) from None
        if version > FORMAT_VERSION:
            self.close()
            raise DataError(f"{self.path} has format version {version}; this seco_labels reads up to "
                            f"{FORMAT_VERSION}: upgrade seco-labels")

    def _damaged(self, e: BaseException, image_id: str | None = None) -> DataError:
        what = f" (reading {image_id})" if image_id is not None else ""
        return DataError(f"artifact {self.path} is unreadable or damaged{what}: {e}; export it again")

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise DataError(f"artifact {self.path} not found; run seco export-masks first")
            try:
                self._file = h5py.File(self.path, "r")
            except _H5_ERRORS as e:
                raise DataError(f"artifact {self.path} is unreadable or truncated ({e}); export it again") from None
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = state["_pid"] = None
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "ArtifactFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def ids(self) -> set[str]:
        try:
            return set(self._h5()["masks"].keys())
        except _H5_ERRORS as e:
            raise self._damaged(e) from None

    def mask_shapes(self, ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """The shapes of the masks of ``ids`` (those the file holds; the others are left out), from the HDF5
        headers: no mask is decoded."""
        try:
            group = self._h5()["masks"]
            return {i: tuple(group[i].shape) for i in ids if i in group}
        except _H5_ERRORS as e:
            raise self._damaged(e) from None

    def location(self, image_id: str) -> str:
        """Where an id's mask is, for messages."""
        return f"{self.path}:/masks/{image_id}"

    def _get(self, group: str, image_id: str) -> h5py.Dataset:
        try:
            grp = self._h5()[group]
            present = image_id in grp
            ds = grp[image_id] if present else None
        except _H5_ERRORS as e:
            raise self._damaged(e, image_id) from None
        if ds is None:
            raise DataError(f"image {image_id!r} is not in {self.path} (/{group}); export it first")
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"/{group}/{image_id} in {self.path} is a {type(ds).__name__}, not a dataset; "
                            "export it again")
        return ds

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 pseudo mask, 255 = ignore."""
        ds = self._get("masks", image_id)
        try:
            mask = ds[()]
        except _H5_ERRORS as e:
            raise self._damaged(e, image_id) from None
        if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.ndim != 2 or 0 in mask.shape:
            raise DataError(f"mask of {image_id} in {self.path} is {getattr(mask, 'dtype', type(mask).__name__)} "
                            f"{getattr(mask, 'shape', '')}, not a (H, W) uint8 mask; export it again")
        return mask

    def confidence(self, image_id: str) -> MaskConfidence | None:
        """The confidence of ``image_id``'s mask (attributes of ``/masks/<id>``); None in an export made before
        it was recorded."""
        ds = self._get("masks", image_id)
        try:
            return MaskConfidence.from_attrs(ds.attrs)
        except (*_H5_ERRORS, ValueError) as e:
            raise self._damaged(e, image_id) from None

    def load_cam(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(cam (k, H, W) float32 in [0, 1], keys (k,) int64)``; keys are the channels' class indices 1..K-1."""
        ds = self._get("cams", image_id)
        try:
            cam = ds[()]
            keys = np.asarray(ds.attrs["keys"])
        except _H5_ERRORS as e:
            raise self._damaged(e, image_id) from None
        if (not isinstance(cam, np.ndarray) or cam.dtype.kind != "f" or cam.ndim != 3 or keys.ndim != 1
                or keys.dtype.kind not in "iu" or keys.shape[0] != cam.shape[0]):
            raise DataError(f"CAM of {image_id} in {self.path} is {getattr(cam, 'dtype', '?')} "
                            f"{getattr(cam, 'shape', '?')} with keys {keys.dtype} {keys.shape}, not (k, H, W) floats "
                            "with k class keys; export it again")
        return cam.astype(np.float32), keys.astype(np.int64)


class PngMaskFolder:
    """``<folder>/<id>.png`` masks (a ``seco evaluate`` mask source): palette 'P' (indices read, colours ignored),
    grey 'L' or 16/32-bit 'I' images of class indices. ``what`` and ``hint`` word the messages ("prediction",
    "Re-export it")."""

    #: image modes that hold class indices in one channel
    MODES = ("P", "L", "I", "I;16")

    def __init__(self, folder: str | Path, what: str = "prediction", hint: str = "Re-export it") -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"prediction folder {self.folder} not found; pass --pred ART_DIR or a folder of PNGs")
        self.name = str(self.folder)
        self.what, self.hint = what, hint

    def ids(self) -> set[str]:
        return {p.stem for p in self.folder.glob("*.png")}

    def location(self, image_id: str) -> str:
        """Where an id's mask is, for messages."""
        return str(self.folder / f"{image_id}.png")

    def _bad_mode(self, path: Path, image_id: str, mode: str) -> DataError:
        return DataError(f"{self.what} {path} of {image_id} has mode {mode}; masks must hold class indices in one "
                         f"channel (palette 'P' or grey 'L' PNG), not colours: {self.hint.lower()}")

    def mask_shapes(self, ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """The (H, W) of the masks of ``ids`` (those the folder holds; the others are left out), from the PNG
        headers: no mask is decoded."""
        shapes = {}
        for image_id in ids:
            path = self.folder / f"{image_id}.png"
            if not path.is_file():
                continue
            try:
                with Image.open(path) as img:  # reads the header only
                    size, mode = (img.height, img.width), img.mode
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
                raise DataError(f"{self.what} {path} of {image_id} is unreadable ({e}); {self.hint.lower()}") from None
            if mode not in self.MODES:
                raise self._bad_mode(path, image_id, mode)
            shapes[image_id] = size
        return shapes

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W) integer class indices."""
        path = self.folder / f"{image_id}.png"
        if not path.is_file():
            raise DataError(f"{self.what} {path} for {image_id} not found")
        # decode_image: any decoder failure, an empty image or a decompression bomb is a DataError naming the file
        with decode_image(path, self.what, self.hint) as img:
            mode = img.mode
            mask = np.array(img)
        if mode not in self.MODES or mask.ndim != 2:
            raise self._bad_mode(path, image_id, mode)
        return mask


class PseudoLabels(Dataset):
    """Images of an exported split with their pseudo masks (and optionally CAMs); see :func:`open_pseudo_labels`.

    Items: ``(image, mask)``, or ``(image, mask, cam, keys)`` with ``with_cams``; image (3, H, W) uint8, mask (H, W)
    int64 (255 = ignore), cam (k, H, W) float32, keys (k,) int64. ``transform(*item)`` (if given) receives the
    tuple and its return value is the item. Attributes: ``ids``, ``class_names``, ``num_classes``, ``attrs``.
    """

    def __init__(self, masks: ArtifactFile | PngMaskFolder, reader, ids: list[str], attrs: dict[str, Any], *,
                 cams: ArtifactFile | None = None, transform: Callable[..., Any] | None = None) -> None:
        self._masks = masks
        self._cams = cams
        #: where the masks come from, for messages
        self.source_name = masks.name
        self.reader = reader
        self.ids = ids
        self.attrs = attrs
        self.class_names = list(attrs.get("class_names") or reader.class_names)
        self.num_classes = int(attrs.get("num_classes") or reader.num_classes)
        self.ignore_index = int(attrs.get("ignore_index", 255))
        self.with_cams = cams is not None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image = self.reader.load_image(image_id)
        mask = self._masks.load_mask(image_id)
        if mask.shape != image.shape[:2]:
            raise DataError(f"pseudo mask of {image_id} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                            f"{self.reader.image_path(image_id)} is {image.shape[1]}x{image.shape[0]}; the artifact "
                            "was exported from another copy of the dataset (pass data_root=...)")
        valid = ((mask >= 0) & (mask < self.num_classes)) | (mask == self.ignore_index)
        if not valid.all():
            bad = np.unique(mask[~valid])
            raise DataError(f"pseudo mask of {image_id} in {self.source_name} has values {bad.tolist()[:8]} outside "
                            f"0..{self.num_classes - 1} and {self.ignore_index}; export it again")
        item: tuple = (torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask.astype(np.int64)))
        if self._cams is not None:
            cam, keys = self._cams.load_cam(image_id)
            item += (torch.from_numpy(cam), torch.from_numpy(keys))
        return self.transform(*item) if self.transform is not None else item


def check_attrs(attrs: dict[str, Any], where: str | Path) -> None:
    """Refuse recorded settings of the wrong type (a damaged or hand-edited file), naming the file and the key;
    the dataset reader built from them would otherwise fail with a bare TypeError."""
    expect: dict[str, tuple[type, ...]] = {
        "split": (str,), "dataset_root": (str,), "layout": (str,), "num_classes": (int,), "ignore_index": (int,),
        "class_names": (list,), "max_side": (int,),
    }
    for key, types in expect.items():
        value = attrs.get(key)
        bad = value is not None and (not isinstance(value, types) or isinstance(value, bool))
        if not bad and key == "class_names" and value is not None:
            bad = not all(isinstance(v, str) for v in value)
        if bad:
            raise DataError(f"{where} records {key} = {value!r} ({type(value).__name__}), not a valid "
                            f"{types[0].__name__}; the file is damaged: export it again")
