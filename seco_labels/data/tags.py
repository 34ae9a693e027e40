"""Class tags: the ``cls_labels_onehot.npy`` labels file, read without executing code, and the tags of a mask."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["load_tags_file", "tags_from_mask"]


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
