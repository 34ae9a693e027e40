"""Pseudo masks as a CVAT "Segmentation mask 1.1" archive (``export-masks --format cvat``;
docs/using-pseudo-labels.md): masks that people correct by hand in CVAT, which imports the archive as it is.

The archive holds what CVAT's own export of that format holds and its import reads (Datumaro's VOC segmentation
layout, docs.cvat.ai "Segmentation Mask"):

- ``labelmap.txt``: one ``name:r,g,b::`` line per label (``# label:color_rgb:parts:actions``);
- ``ImageSets/Segmentation/default.txt``: the image ids, one a line (``default`` is CVAT's subset name);
- ``SegmentationClass/<id>.png``: the mask.

CVAT reads a mask pixel by its colour and refuses a colour that the labelmap does not declare, so every value of
every mask is declared: the K classes in VOC colours (background (0, 0, 0) first, as CVAT writes it), and the
uncertain pixels (255 in our masks) as one more label, ``uncertain``, or as background (``uncertain_as``). The PNGs
are palette images whose index k has the colour of labelmap line k: a reader of the colours and a reader of the
indices (CVAT also takes 1-channel masks indexed by labelmap line) get the same labels.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from ..data.classes import voc_palette
from ..errors import ConfigError, DataError
from ..io import atomic_path
from .folder import ArtifactSplit, open_split
from .layout import cvat_path

__all__ = ["UNCERTAIN_LABEL", "UNCERTAIN_COLOR", "UncertainAs", "annotation_labels", "cvat_labelmap", "cvat_mask",
           "split_class_names", "write_cvat_zip"]

#: what uncertain pixels become in the formats made for correction by hand: a label of their own, or background
UncertainAs = Literal["label", "background"]
#: the label of the uncertain pixels with ``uncertain_as="label"``
UNCERTAIN_LABEL = "uncertain"
#: its colour: VOC's colour of the ignored value 255, as in the ``masks_<split>/`` PNGs
UNCERTAIN_COLOR = (224, 224, 192)
#: CVAT's name of a task's only subset
_SUBSET = "default"
#: a fixed time stamp for the archive's entries: the same masks give the same bytes
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def annotation_labels(class_names: Sequence[str], uncertain_as: UncertainAs = "label"
                      ) -> list[tuple[str, tuple[int, int, int]]]:
    """``(name, (r, g, b))`` of every label an annotation tool gets, in mask-value order: the K classes in VOC
    colours (index 0, background, is (0, 0, 0)), then ``uncertain`` when ``uncertain_as="label"``.

    Raises:
        ConfigError: ``uncertain_as`` is neither label nor background; a class name that a labelmap line cannot
            hold (a ``:``, a line break, a leading ``#`` or surrounding spaces) or that is the uncertain label's.
    """
    if uncertain_as not in ("label", "background"):
        raise ConfigError(f"--uncertain-as {uncertain_as!r}: choose label or background")
    for k, name in enumerate(class_names):
        if ":" in name or "\n" in name or "\r" in name or name.startswith("#") or name != name.strip() or not name:
            raise ConfigError(f"class {k} {name!r}: a CVAT labelmap line cannot hold this name (no ':', line break, "
                              "leading '#' or surrounding spaces); rename it in the dataset's classes")
        if uncertain_as == "label" and name.lower() == UNCERTAIN_LABEL:
            raise ConfigError(f"class {k} is named {name!r}, the label of the uncertain pixels; rename the class or "
                              "pass --uncertain-as background")
    palette = voc_palette()
    labels = [(str(name), (palette[3 * k], palette[3 * k + 1], palette[3 * k + 2]))
              for k, name in enumerate(class_names)]
    if uncertain_as == "label":
        labels.append((UNCERTAIN_LABEL, UNCERTAIN_COLOR))
    return labels


def cvat_labelmap(labels: Sequence[tuple[str, tuple[int, int, int]]]) -> str:
    """The ``labelmap.txt`` of ``labels`` (:func:`annotation_labels`): a comment line, then ``name:r,g,b::``."""
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{name}:{r},{g},{b}::" for name, (r, g, b) in labels]
    return "\n".join(lines) + "\n"


def cvat_mask(mask: np.ndarray, num_classes: int, *, uncertain_as: UncertainAs = "label",
              ignore_index: int = 255) -> np.ndarray:
    """A (H, W) pseudo mask as labelmap line indices: classes 0..K-1 stay, ``ignore_index`` becomes K (the
    ``uncertain`` line) or 0 (background).

    Raises:
        DataError: a value that is neither a class nor ``ignore_index``.
    """
    out = np.asarray(mask, dtype=np.uint8).copy()
    uncertain = out == ignore_index
    bad = np.unique(out[~uncertain & (out >= num_classes)])
    if bad.size:
        raise DataError(f"mask values {bad.tolist()[:8]} are neither one of the {num_classes} classes nor "
                        f"{ignore_index}; export the split again")
    out[uncertain] = num_classes if uncertain_as == "label" else 0
    return out


def split_class_names(source: ArtifactSplit) -> tuple[str, ...]:
    """The K class names an exported split records (the HDF5 attributes or the manifest).

    Raises:
        DataError: the export records no class names.
    """
    names = source.dataset.class_names
    if not names:
        raise DataError(f"{source.record_file or source.folder} records no class_names for split {source.name!r}; "
                        "export it again with seco export-masks")
    return tuple(str(n) for n in names)


def _png(index_mask: np.ndarray, palette: list[int]) -> bytes:
    h, w = index_mask.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(index_mask, dtype=np.uint8).tobytes())
    img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _entry(zf: zipfile.ZipFile, name: str, data: bytes, compress: int) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def write_cvat_zip(art: str | Path, split: str, *, uncertain_as: UncertainAs = "label") -> Path:
    """Write ``ART/cvat_<split>.zip``, the split's exported masks as a CVAT "Segmentation mask 1.1" archive (module
    docstring), atomically; returns its path. Ids are listed sorted.

    Raises:
        ConfigError: a bad ``uncertain_as``, or a class name a labelmap cannot hold (:func:`annotation_labels`).
        DataError: missing or damaged masks, or an export that records no class names.
    """
    source = open_split(art, split)
    names = split_class_names(source)
    labels = annotation_labels(names, uncertain_as)
    palette = [c for _, rgb in labels for c in rgb]
    ignore = int(source.record.get("ignore_index", 255))
    ids = sorted(source.ids())
    path = cvat_path(art, split)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        _entry(zf, "labelmap.txt", cvat_labelmap(labels).encode(), zipfile.ZIP_DEFLATED)
        _entry(zf, f"ImageSets/Segmentation/{_SUBSET}.txt", "".join(f"{i}\n" for i in ids).encode(),
               zipfile.ZIP_DEFLATED)
        for image_id in ids:
            mask = cvat_mask(source.masks.load_mask(image_id), len(names), uncertain_as=uncertain_as,
                             ignore_index=ignore)
            # PNG is compressed already: stored, not deflated again
            _entry(zf, f"SegmentationClass/{image_id}.png", _png(mask, palette), zipfile.ZIP_STORED)
    return path
