"""Pseudo masks as Label Studio pre-annotations (``export-masks --format label-studio``;
docs/using-pseudo-labels.md): one task per image whose ``predictions`` hold one ``brushlabels`` result per class
present, which a Label Studio project imports and shows for correction by hand.

A brush result's mask is Label Studio's own RLE (the ``rle-pack`` format of thi.ng/umbrella, which its frontend
decodes and ``label_studio_converter.brush`` reads and writes): the (H, W) mask flattened row-major as RGBA, each
pixel's four bytes 255 inside the region and 0 outside (Label Studio reads the alpha byte), run-length coded as a
bit stream:

- header: the value count (32 bits), the word size minus 1 (5 bits; 8-bit words) and four run-length field widths
  minus 1 (4 bits each; 3, 4, 8 and 16 bits);
- then chunks: a flag bit (1: one word repeated, 0: literal words), 2 bits choosing a width, the run length minus 1
  in that many bits, then the word (or the literal words);
- zero bits up to the next byte, as a list of byte values.

Runs are written as ``label_studio_converter.brush.encode_rle`` writes them (the smallest width that holds the
length; runs over 2**16 values split into chunks of 2**16), so both give the same bytes.

The tasks' ``data.image`` is an image URL: a prefix (``url_prefix``) and the image's path relative to the dataset
root. The default, ``/data/local-files/?d=``, is Label Studio's local-files serving, which reads ``d`` relative to
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``: with the dataset root as that root, the images show as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from ..io import atomic_write_text
from .cvat import UNCERTAIN_LABEL, UncertainAs, annotation_labels, split_class_names
from .folder import open_split
from .layout import label_studio_config_path, label_studio_path

__all__ = ["DEFAULT_URL_PREFIX", "FROM_NAME", "TO_NAME", "encode_rle", "decode_rle", "decode_brush",
           "brush_results", "labeling_config", "label_studio_tasks", "write_label_studio"]

#: Label Studio's local-files serving: ``d`` is a path under ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``
DEFAULT_URL_PREFIX = "/data/local-files/?d="
#: the names of the ``<BrushLabels>`` and ``<Image>`` tags of :func:`labeling_config` (``from_name``, ``to_name``)
FROM_NAME, TO_NAME = "label", "image"

_WORD_BITS = 8
#: the four run-length field widths, as label_studio_converter writes them
_RLE_WIDTHS = (3, 4, 8, 16)
_MAX_RUN = 1 << _RLE_WIDTHS[-1]  # the longest run one chunk holds


def encode_rle(binary: np.ndarray) -> list[int]:
    """Label Studio's brush RLE (module docstring) of a (H, W) bool mask, as byte values.

    Raises:
        ValueError: more than 2**30 pixels (the value count is a 32-bit field of 4 values a pixel).
    """
    flat = np.asarray(binary, dtype=bool).ravel()  # row-major: Label Studio reshapes to (H, W, 4)
    n = flat.size * 4
    if n >= 1 << 32:
        raise ValueError(f"a brush mask of {flat.size} pixels is too large for Label Studio's RLE (2**30 at most)")
    if flat.size:
        starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
        runs = np.diff(np.concatenate((starts, [flat.size]))) * 4  # values per run, 4 a pixel
        words = np.where(flat[starts], 255, 0)
    else:
        runs = words = np.zeros(0, np.int64)
    # a run over _MAX_RUN values: full chunks of _MAX_RUN, the rest last (as the converter splits it)
    pieces = -(-runs // _MAX_RUN)
    length = np.full(int(pieces.sum()), _MAX_RUN, np.int64)
    length[np.cumsum(pieces) - 1] = runs - (pieces - 1) * _MAX_RUN
    word = np.repeat(words, pieces).astype(np.int64)
    # the width index: the smallest width whose field holds length - 1
    choice = np.searchsorted(np.array([1 << b for b in _RLE_WIDTHS]), length, side="left")
    bits = np.array(_RLE_WIDTHS)[choice]
    repeated = (length > 1).astype(np.int64)  # a single value is written as a literal of one word
    width = 1 + 2 + bits + _WORD_BITS
    field = (repeated << (width - 1)) | (choice << (bits + _WORD_BITS)) | ((length - 1) << _WORD_BITS) | word
    header_width = [32, 5, 4, 4, 4, 4]
    header = [n, _WORD_BITS - 1, *(b - 1 for b in _RLE_WIDTHS)]
    widths = np.concatenate((header_width, width)).astype(np.int64)
    fields = np.concatenate((header, field)).astype(np.int64)
    # every field's bits, most significant first, one after the other
    owner = np.repeat(np.arange(len(widths)), widths)
    offset = np.arange(int(widths.sum())) - np.repeat(np.cumsum(widths) - widths, widths)
    stream = ((fields[owner] >> (widths[owner] - 1 - offset)) & 1).astype(np.uint8)
    # the converter pads with 1 to 8 zero bits (a whole zero byte when already aligned): the same bytes
    stream = np.concatenate((stream, np.zeros(8 - stream.size % 8, np.uint8)))
    return np.packbits(stream).tolist()


def decode_rle(rle: Sequence[int]) -> np.ndarray:
    """The flat uint8 values of Label Studio's brush RLE (byte values; the module docstring's format).

    Raises:
        ValueError: the stream ends before its value count is reached.
    """
    bits = "".join(f"{int(b):08b}" for b in rle)
    pos = 0

    def read(k: int) -> int:
        nonlocal pos
        if pos + k > len(bits):
            raise ValueError("brush RLE ends early")
        pos += k
        return int(bits[pos - k: pos], 2) if k else 0

    num = read(32)
    word_bits = read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint32 if word_bits > 16 else np.uint16 if word_bits > 8 else np.uint8)
    i = 0
    while i < num:
        repeated = read(1)
        end = i + 1 + read(widths[read(2)])
        if end > num:
            raise ValueError(f"brush RLE run ends at value {end}, past its count {num}")
        if repeated:
            out[i:end] = read(word_bits)
        else:
            for j in range(i, end):
                out[j] = read(word_bits)
        i = end
    return out


def decode_brush(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """The (H, W) bool region of a brush result: the alpha bytes of its decoded RGBA values, non-zero."""
    values = decode_rle(rle)
    if values.size != height * width * 4:
        raise ValueError(f"brush RLE holds {values.size} values, not {height}x{width}x4")
    return values.reshape(height, width, 4)[..., 3] > 0


def brush_results(mask: np.ndarray, labels: Sequence[str], *, ignore_index: int = 255,
                  uncertain_as: UncertainAs = "label") -> list[dict[str, Any]]:
    """One ``brushlabels`` result per class present in a (H, W) pseudo mask, in class order (background has
    none), then one ``uncertain`` result for the ``ignore_index`` pixels when ``uncertain_as="label"``.
    ``labels`` are the K class names."""
    h, w = mask.shape
    regions = [(int(c), labels[int(c)]) for c in np.unique(mask).tolist() if c not in (0, ignore_index)]
    if uncertain_as == "label" and (mask == ignore_index).any():
        regions.append((ignore_index, UNCERTAIN_LABEL))
    return [{"id": f"seco{value}", "from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels",
             "original_width": int(w), "original_height": int(h), "image_rotation": 0,
             "value": {"format": "rle", "rle": encode_rle(mask == value), "brushlabels": [name]}}
            for value, name in regions]


def labeling_config(class_names: Sequence[str], uncertain_as: UncertainAs = "label") -> str:
    """The XML labeling config of a Label Studio project the tasks fit: an ``<Image>`` and a ``<BrushLabels>`` with
    the K-1 foreground classes (and ``uncertain``) in their mask colours.

    Raises:
        ConfigError: as :func:`~seco_labels.artifacts.cvat.annotation_labels`.
    """
    labels = annotation_labels(class_names, uncertain_as)[1:]  # no brush for background: it is what is left
    rows = [f'    <Label value={quoteattr(name)} background="#{r:02x}{g:02x}{b:02x}"/>'
            for name, (r, g, b) in labels]
    return "\n".join([
        "<View>",
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>',
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">',
        *rows,
        "  </BrushLabels>",
        "</View>",
    ]) + "\n"


def label_studio_tasks(art: str | Path, split: str, *, data_root: str | Path | None = None,
                       url_prefix: str = DEFAULT_URL_PREFIX, uncertain_as: UncertainAs = "label"
                       ) -> list[dict[str, Any]]:
    """The Label Studio tasks of an exported split, in split order: ``data`` (``image``: ``url_prefix`` + the image
    path relative to the dataset root, URL-quoted; ``seco_id``: the image id) and one prediction
    (``model_version``, ``score``: the fraction of pixels that are not uncertain, so that sorting by it shows the
    least certain masks first; ``result``: :func:`brush_results`).

    Raises:
        ConfigError: the export does not record its dataset and no ``data_root`` is given; a class name a label
            list cannot hold.
        DataError: missing or damaged masks.
    """
    source = open_split(art, split)
    names = split_class_names(source)
    annotation_labels(names, uncertain_as)  # the names' checks, before any image is read
    reader = source.open_images(root=data_root)
    ignore = int(source.record.get("ignore_index", 255))
    sha = str(source.record.get("checkpoint_sha256") or "")
    version = f"seco_labels {sha[:12]}" if sha else "seco_labels"
    held = source.ids()
    tasks = []
    for image_id in (i for i in reader.ids if i in held):
        mask = source.masks.load_mask(image_id)
        file_name = reader.image_path(image_id).relative_to(reader.root).as_posix()
        certain = 1.0 - float((mask == ignore).mean()) if mask.size else 1.0
        tasks.append({
            "data": {"image": url_prefix + quote(file_name), "seco_id": image_id},
            "predictions": [{"model_version": version, "score": round(certain, 6),
                             "result": brush_results(mask, names, ignore_index=ignore, uncertain_as=uncertain_as)}],
        })
    return tasks


def write_label_studio(art: str | Path, split: str, *, data_root: str | Path | None = None,
                       url_prefix: str = DEFAULT_URL_PREFIX, uncertain_as: UncertainAs = "label") -> Path:
    """Write ``ART/label_studio_<split>.json`` (:func:`label_studio_tasks`) and its project's labeling config
    ``ART/label_studio_<split>.xml`` (:func:`labeling_config`), each atomically; returns the JSON's path."""
    source = open_split(art, split)
    config = labeling_config(split_class_names(source), uncertain_as)
    tasks = label_studio_tasks(art, split, data_root=data_root, url_prefix=url_prefix, uncertain_as=uncertain_as)
    path = label_studio_path(art, split)
    atomic_write_text(path, json.dumps(tasks, separators=(",", ":")))
    atomic_write_text(label_studio_config_path(art, split), config)
    return path
