"""Pseudo masks as a Hugging Face dataset (``export-masks --format hf-dataset``; docs/using-pseudo-labels.md):
``ART/hf_<split>/`` holds parquet shards with ``image`` and ``label`` columns as ``datasets.Image`` features, an
``id`` column, and ``id2label.json``: the layout transformers' semantic-segmentation examples train on.

Built from the finished masks (HDF5 or PNG) and the dataset's images, like the COCO JSON. The shards are written
with pyarrow alone, carrying the ``huggingface`` schema metadata that makes ``datasets.load_dataset`` decode both
columns as images; pyarrow is imported on first use (the ``hf`` extra), so the package works without it.

- ``image``: the image file's own bytes when they decode to the pixels the mask was made from (same size, RGB or
  grey, no EXIF rotation, which ``datasets`` would apply and seco_labels does not); otherwise (an image bounded by
  ``data.max_side``, 16-bit, CMYK, rotated) a PNG of exactly those pixels, so that image and label always align.
- ``label``: the mask as a grey ('L') PNG, value = class index (0 background, 1..K-1) or the export's ignore index
  (255). Grey, unlike the palette PNGs of ``masks_<split>/``, so that a ``convert("L")`` keeps the values.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from ..io import atomic_write_text, disk_full_guard, folder_lock
from .folder import open_split
from .layout import hf_dataset_dir, hf_id2label_path, hf_shard_path, lock_name

__all__ = ["HF_INSTALL", "require_pyarrow", "hf_split_name", "hf_features", "write_hf_dataset"]

#: how to get what ``--format hf-dataset`` needs (the docs' form)
HF_INSTALL = 'pip install -e ".[hf]" (in your clone of seco_labels)'
#: rows per parquet row group: what ``datasets`` itself writes for image datasets (a reader that wants one row
#: need not decompress thousands of images)
ROW_GROUP_ROWS = 100
#: a new shard starts once this many image and label bytes are in one: ``push_to_hub``'s default shard size
MAX_SHARD_BYTES = 500 * 1000 * 1000
_ORIENTATION = 0x0112  # the EXIF orientation tag


def require_pyarrow() -> Any:
    """``pyarrow``, or :class:`ConfigError` with the install command when it cannot be imported (it comes with the
    ``datasets`` library, which the ``hf`` extra installs and which reads the result)."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--format hf-dataset needs pyarrow (it comes with the datasets library), which cannot be "
                          f"imported ({e}); install it with: {HF_INSTALL}") from None
    return pyarrow


def hf_split_name(split: str) -> str:
    """The split's name inside ``hf_<split>/``: ``split`` with each character other than a letter, digit or '_'
    made '_', since ``load_dataset`` refuses other split names (``train_aug`` stays ``train_aug``)."""
    return re.sub(r"\W", "_", split)


def hf_features() -> dict[str, Any]:
    """The ``datasets.Features`` of the shards as ``Features.to_dict()`` writes them (the ``huggingface`` schema
    metadata): ``image`` and ``label`` are ``Image`` features, ``id`` a string."""
    return {"image": {"_type": "Image"}, "label": {"_type": "Image"}, "id": {"dtype": "string", "_type": "Value"}}


def _schema(pa: Any) -> Any:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Image's storage type
    return pa.schema([("image", image), ("label", image), ("id", pa.string())],
                     metadata={"huggingface": json.dumps({"info": {"features": hf_features()}})})


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _decodes_as_is(data: bytes, hw: tuple[int, int]) -> bool:
    """Whether an image file decodes (in ``datasets`` and in seco_labels alike) to (H, W) = ``hw`` pixels that
    need no conversion: read from its header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return ((img.height, img.width) == hw and img.mode in ("RGB", "L")
                    and img.getexif().get(_ORIENTATION, 1) == 1)
    except Exception:  # unreadable: load_image says why, naming the file
        return False


def _image_cell(reader: Any, image_id: str, hw: tuple[int, int]) -> dict[str, Any]:
    """The ``image`` cell of one row: the file's bytes, or a PNG of the pixels the mask of size ``hw`` was made
    from (module docstring)."""
    path = reader.image_path(image_id)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"image {path} is unreadable ({e.strerror or e}); check --data-root") from None
    if _decodes_as_is(data, hw):
        return {"bytes": data, "path": path.name}
    rgb = reader.load_image(image_id)  # bounded by the export's max_side, as at export
    if rgb.shape[:2] != hw:
        raise DataError(f"image {path} is {rgb.shape[1]}x{rgb.shape[0]} but its pseudo mask {image_id} is "
                        f"{hw[1]}x{hw[0]}: these are not the images the split was exported from; pass their "
                        "folder as data_root (--data-root)")
    return {"bytes": _png(rgb), "path": f"{image_id}.png"}


def _rows(source: Any, reader: Any, ids: list[str]) -> Iterator[dict[str, Any]]:
    for image_id in ids:
        mask = source.masks.load_mask(image_id)
        yield {"image": _image_cell(reader, image_id, mask.shape[:2]),
               "label": {"bytes": _png(mask), "path": f"{image_id}.png"}, "id": image_id}


def _write_shards(folder: Path, hf_split: str, rows: Iterator[dict[str, Any]]) -> list[Path]:
    """Write ``rows`` as parquet shards of at most about :data:`MAX_SHARD_BYTES` in ``folder``, under their final
    names (:func:`hf_shard_path`, numbered once their count is known); returns them in order."""
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    schema = _schema(pa)
    shards: list[Path] = []
    writer, size, batch = None, 0, []

    def flush() -> None:
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=ROW_GROUP_ROWS)
            batch.clear()

    try:
        for row in rows:
            if writer is None:
                shards.append(folder / f"shard-{len(shards)}.parquet")
                writer, size = pq.ParquetWriter(shards[-1], schema), 0
            batch.append(row)
            size += len(row["image"]["bytes"]) + len(row["label"]["bytes"])
            if len(batch) == ROW_GROUP_ROWS:
                flush()
            if size >= MAX_SHARD_BYTES:
                flush()
                writer.close()
                writer = None
        if writer is not None:
            flush()
    finally:
        if writer is not None:
            writer.close()
    named = [hf_shard_path(folder, hf_split, i, len(shards)) for i in range(len(shards))]
    named[0].parent.mkdir(parents=True, exist_ok=True)
    for old, new in zip(shards, named):
        old.rename(new)
    return named


def write_hf_dataset(art: str | Path, split: str, *, data_root: str | Path | None = None) -> Path:
    """Write ``ART/hf_<split>/`` from the split's exported masks and its images (module docstring); returns it.

    The folder holds ``data/<split>-NNNNN-of-NNNNN.parquet`` (:func:`hf_split_name`; images in split order) and
    ``id2label.json`` (``{"0": "background", "1": ...}``, the K classes of the masks). It is built next to the
    old one (``.hf_<split>.tmp``) and replaces it by rename, under the split's lock: a killed run leaves the previous
    dataset whole, and the next run removes its remains.

    Raises:
        ConfigError: pyarrow is missing; the export does not record its dataset and no ``data_root`` is given.
        DataError: missing or damaged masks or images (names them); no image of the split has a mask.
    """
    require_pyarrow()
    source = open_split(art, split)
    reader = source.open_images(root=data_root)
    held = source.ids()
    ids = [i for i in reader.ids if i in held]
    if not ids:
        raise DataError(f"no image of split {split!r} in {reader.split_file} has a pseudo mask in {source.folder}")
    final = hf_dataset_dir(art, split)
    tmp, old = (final.with_name(f".{final.name}.{kind}") for kind in ("tmp", "old"))
    with folder_lock(Path(art), lock_name(split), what=f"split {split}"):
        for p in (tmp, old):  # a killed run's remains
            shutil.rmtree(p, ignore_errors=True)
        try:
            with disk_full_guard(final):
                tmp.mkdir(parents=True)
                _write_shards(tmp, hf_split_name(split), _rows(source, reader, ids))
                id2label = {str(k): str(name) for k, name in enumerate(reader.class_names)}
                atomic_write_text(hf_id2label_path(tmp), json.dumps(id2label, indent=1) + "\n")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    return final
