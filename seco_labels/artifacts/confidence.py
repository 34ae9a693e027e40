"""The confidence record of an exported split (docs/artifact-format.md "Confidence"): one score per image and per
class, how it is stored in ``/masks/<id>`` attributes and in ``ART/confidence_<split>.json``, and read back.

The score itself is computed by :func:`seco_labels.inference.confidence.mask_confidence` (docs/export.md
"Confidence"); this module only carries it, so that readers need nothing of the inference code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import DataError
from ..io import atomic_write_text
from .layout import confidence_path

__all__ = ["MaskConfidence", "read_confidence", "write_confidence", "CONFIDENCE_ATTRS"]

#: the attributes of ``/masks/<id>`` that hold an image's confidence: the image's score, the class indices its
#: per-class scores belong to (0 = background first, then the tagged classes), and those scores
CONFIDENCE_ATTRS = ("confidence", "confidence_keys", "class_confidence")

@dataclass(frozen=True)
class MaskConfidence:
    """How far one pseudo mask can be trusted, without ground truth: every value in [0, 1], higher = surer.

    Attributes:
        image: the image's score, the mean of ``classes``.
        keys: the class indices scored, ascending: 0 (background) where the mask has background or uncertain
            pixels, then each class the image was given (its tags), present in the mask or not.
        classes: the score of each of ``keys``, in that order.
    """

    image: float
    keys: tuple[int, ...]
    classes: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.classes):
            raise ValueError(f"{len(self.keys)} keys but {len(self.classes)} class scores")

    def by_class(self) -> dict[int, float]:
        """``{class index: score}``."""
        return dict(zip(self.keys, self.classes))

    def to_json(self) -> dict[str, Any]:
        """``{"confidence": x, "classes": {"<index>": x, ...}}``, rounded to 6 decimals."""
        return {"confidence": round(self.image, 6),
                "classes": {str(k): round(v, 6) for k, v in zip(self.keys, self.classes)}}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "MaskConfidence":
        classes = sorted((int(k), float(v)) for k, v in value["classes"].items())
        return cls(float(value["confidence"]), tuple(k for k, _ in classes), tuple(v for _, v in classes))

    def to_attrs(self) -> dict[str, Any]:
        """The HDF5 attributes of ``/masks/<id>`` (:data:`CONFIDENCE_ATTRS`)."""
        return {"confidence": np.float32(self.image), "confidence_keys": np.asarray(self.keys, dtype=np.int64),
                "class_confidence": np.asarray(self.classes, dtype=np.float32)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "MaskConfidence | None":
        """The record back from ``/masks/<id>`` attributes; None when they hold none (an older export)."""
        if "confidence" not in attrs:
            return None
        return cls(float(attrs["confidence"]), tuple(int(k) for k in np.asarray(attrs["confidence_keys"])),
                   tuple(float(v) for v in np.asarray(attrs["class_confidence"])))


def read_confidence(art: str | Path, split: str) -> dict[str, MaskConfidence] | None:
    """``{image id: MaskConfidence}`` from ``ART/confidence_<split>.json``; None when there is no such file (an
    export made before the score was recorded).

    Raises:
        DataError: the file is unreadable or not of this layout (names it).
    """
    path = confidence_path(art, split)
    if not path.is_file():
        return None
    try:
        images = json.loads(path.read_text())["images"]
        return {str(i): MaskConfidence.from_json(v) for i, v in images.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it and export again with "
                        "--overwrite") from None


def write_confidence(art: str | Path, split: str, scores: Mapping[str, MaskConfidence], score_name: str) -> Path:
    """Write ``ART/confidence_<split>.json`` (ids sorted), atomically; returns its path."""
    doc = {"score": score_name, "images": {i: scores[i].to_json() for i in sorted(scores)}}
    path = confidence_path(art, split)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path
