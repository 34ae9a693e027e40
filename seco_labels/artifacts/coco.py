"""Pseudo masks as COCO instance-segmentation JSON (``export-masks --format coco-json``;
docs/using-pseudo-labels.md): one annotation per image and present class, its mask as a compressed COCO RLE.

The RLE is pycocotools' own format (``maskUtils.encode``/``decode`` read and write the same ``counts`` strings), so
detectron2, mmdetection and pycocotools load the file as they load COCO's. It is written here in numpy: the
package needs no compiled extension.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_text
from .folder import open_split
from .layout import coco_path

__all__ = ["encode_rle", "decode_rle", "mask_annotations", "coco_document", "write_coco_json"]


def _run_lengths(binary: np.ndarray) -> list[int]:
    """Alternating run lengths of a (H, W) bool mask in column-major order, starting with a (maybe empty) 0-run."""
    flat = np.asarray(binary, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def encode_rle(binary: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a (H, W) bool mask: ``{"size": [H, W], "counts": str}``.

    Counts are column-major run lengths, 0-run first; each count after the second is stored as its difference to
    the count two before, in 5-bit groups with a continuation bit, offset into printable ASCII (pycocotools'
    ``rleToString``).
    """
    h, w = binary.shape
    counts = _run_lengths(binary)
    chars = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative difference ends in -1
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr(c + 48 + (0x20 if more else 0)))
    return {"size": [int(h), int(w)], "counts": "".join(chars)}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """The (H, W) bool mask of a compressed COCO RLE (the inverse of :func:`encode_rle`)."""
    h, w = rle["size"]
    s = rle["counts"]
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts cover {flat.size} pixels, not {h}x{w}")
    return flat.reshape((w, h)).T


def mask_annotations(mask: np.ndarray, ignore_index: int = 255) -> list[dict[str, Any]]:
    """One ``{"category_id", "segmentation", "area", "bbox"}`` per class present in a (H, W) pseudo mask, in class
    order; background (0) and ``ignore_index`` (uncertain pixels) get none. ``bbox`` is COCO's [x, y, w, h]."""
    out = []
    for c in np.unique(mask).tolist():
        if c == 0 or c == ignore_index:
            continue
        binary = mask == c
        ys, xs = np.nonzero(binary)
        x0, y0 = int(xs.min()), int(ys.min())
        out.append({"category_id": int(c), "segmentation": encode_rle(binary), "area": int(binary.sum()),
                    "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]})
    return out


def coco_document(art: str | Path, split: str, *, data_root: str | Path | None = None) -> dict[str, Any]:
    """The COCO JSON of an exported split: ``images`` (in split order; ``file_name`` relative to the dataset root,
    ``seco_id`` the image id), ``categories`` (the K-1 classes, ids 1..K-1 as in the masks), ``annotations``
    (:func:`mask_annotations`, ``iscrowd`` 0) and ``info`` (where the masks came from).

    Raises:
        ConfigError: the export does not record its dataset and no ``data_root`` is given.
        DataError: missing or damaged masks (names them).
    """
    source = open_split(art, split)
    reader = source.open_images(root=data_root)
    ignore = int(source.record.get("ignore_index", 255))
    held = source.ids()
    images, annotations = [], []
    for number, image_id in enumerate((i for i in reader.ids if i in held), start=1):
        mask = source.masks.load_mask(image_id)
        file_name = reader.image_path(image_id).relative_to(reader.root).as_posix()
        images.append({"id": number, "file_name": file_name, "height": int(mask.shape[0]),
                       "width": int(mask.shape[1]), "seco_id": image_id})
        for ann in mask_annotations(mask, ignore):
            annotations.append({"id": len(annotations) + 1, "image_id": number, "iscrowd": 0, **ann})
    categories = [{"id": k, "name": name} for k, name in enumerate(reader.class_names) if k > 0]
    info = {"description": f"seco_labels pseudo masks of split {split!r}", "masks": source.masks.name,
            "dataset_root": str(reader.root), "ignored_value": ignore}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def write_coco_json(art: str | Path, split: str, *, data_root: str | Path | None = None) -> Path:
    """Write ``ART/coco_<split>.json`` (:func:`coco_document`) from the split's exported masks, atomically; returns
    its path."""
    path = coco_path(art, split)
    atomic_write_text(path, json.dumps(coco_document(art, split, data_root=data_root), separators=(",", ":")))
    return path
