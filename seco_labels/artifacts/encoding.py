"""Bytes and attributes as HDF5 stores them: pre-compressed chunks (so the writer's thread compresses and the
assembly copies) and JSON-like root attributes."""

from __future__ import annotations

import json
import os
import zlib
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from .layout import GZIP_LEVEL


# -- encoding ------------------------------------------------------------------------------------------------
def gzip_chunk(arr: np.ndarray, shuffle: bool) -> bytes:
    """The bytes HDF5's shuffle + deflate filter pipeline stores for ``arr`` as one chunk.

    Shuffle groups the i-th byte of every element together (it is a no-op for 1-byte types); deflate is a zlib
    stream. Producing them here lets the background thread compress and ``finalize`` copy chunks verbatim.
    """
    raw = np.ascontiguousarray(arr)
    if shuffle and raw.itemsize > 1:
        buf = raw.view(np.uint8).reshape(-1, raw.itemsize).T.tobytes()
    else:
        buf = raw.tobytes()
    return zlib.compress(buf, GZIP_LEVEL)


def now_iso() -> str:
    """UTC now as ISO 8601 seconds, or ``SOURCE_DATE_EPOCH`` when set (reproducible builds' convention)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.isoformat(timespec="seconds")


def attr_value(value: Any) -> Any:
    """HDF5-storable form of a JSON-like value: dicts as JSON text, string lists as vlen-string arrays."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return np.array(value, dtype=h5py.string_dtype())
        return np.asarray(value)
    return value


def _plain(value: Any) -> Any:
    """The JSON-like value back from an HDF5 attribute."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_root_attrs(f: h5py.File) -> dict[str, Any]:
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    if isinstance(attrs.get("config"), str):
        attrs["config"] = json.loads(attrs["config"])
    return attrs


