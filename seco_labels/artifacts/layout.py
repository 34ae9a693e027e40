"""An artifact folder's layout: the file names of a split (only here), the format version and root attributes,
the settings manifest, PNG masks, and how two runs' settings compare (docs/artifact-format.md)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.classes import voc_palette
from ..errors import DataError
from ..io import atomic_write_bytes, atomic_write_text

#: bumped when the layout of ``cams_<split>.h5`` changes incompatibly
FORMAT_VERSION = 1
GZIP_LEVEL = 4
#: root attributes every ``cams_<split>.h5`` carries (``config`` is a JSON string; lists are arrays)
ROOT_ATTRS = (
    "format_version", "created", "package_version", "split", "dataset_root", "layout", "class_names",
    "num_classes", "ignore_index", "background_policy", "backbone", "backbone_weights", "backbone_weights_sha256",
    "checkpoint_sha256", "scales", "flip", "cam_source", "tags_source", "crf", "high_thre", "low_thre", "input_size",
    "max_side", "confidence_score", "config",
)
#: attributes that may differ between the runs of one resumed export
_VOLATILE = ("created", "package_version")


# The names of a split's files in an artifact folder (docs/artifact-format.md). Only this module spells them:
# renaming one is a change here alone.
_H5_NAME = "cams_{}.h5"
_MASKS_NAME = "masks_{}"
_MANIFEST_NAME = "manifest_{}.json"
_EXPORT_REPORT_NAME = "export_{}.json"
_SEGMENT_REPORT_NAME = "segment_{}.json"
_COCO_NAME = "coco_{}.json"
_CVAT_NAME = "cvat_{}.zip"
_LABEL_STUDIO_NAME = "label_studio_{}.json"
_LABEL_STUDIO_CONFIG_NAME = "label_studio_{}.xml"
_CONFIDENCE_NAME = "confidence_{}.json"
_CLASSES_NAME = "classes.json"
_REPORT_NAME = "report_{}"
_SHOW_NAME = "show_{}"
_HF_NAME = "hf_{}"
# inside hf_<split>/: the names the Hugging Face Hub gives a pushed dataset, which load_dataset reads by convention
_HF_SHARD_NAME = "data/{}-{:05d}-of-{:05d}.parquet"
_HF_ID2LABEL_NAME = "id2label.json"


def h5_path(art: str | Path, split: str) -> Path:
    """``ART/cams_<split>.h5``: CAMs, masks and provenance of an exported split."""
    return Path(art) / _H5_NAME.format(split)


def masks_dir(art: str | Path, split: str) -> Path:
    """``ART/masks_<split>/``: one palette PNG per image."""
    return Path(art) / _MASKS_NAME.format(split)


def manifest_path(art: str | Path, split: str) -> Path:
    """``ART/manifest_<split>.json``: the settings of a PNG-only export (or of ``seco predict``)."""
    return Path(art) / _MANIFEST_NAME.format(split)


def export_report_path(art: str | Path, split: str) -> Path:
    """``ART/export_<split>.json``: what ``seco export-masks`` did (counts, seconds, settings)."""
    return Path(art) / _EXPORT_REPORT_NAME.format(split)


def segment_report_path(art: str | Path, split: str) -> Path:
    """``ART/segment_<split>.json``: what ``seco segment`` did."""
    return Path(art) / _SEGMENT_REPORT_NAME.format(split)


def coco_path(art: str | Path, split: str) -> Path:
    """``ART/coco_<split>.json``: the pseudo masks as COCO RLE annotations (``--format coco-json``)."""
    return Path(art) / _COCO_NAME.format(split)


def hf_dataset_dir(art: str | Path, split: str) -> Path:
    """``ART/hf_<split>/``: the split as a Hugging Face dataset, parquet shards and ``id2label.json``
    (``--format hf-dataset``)."""
    return Path(art) / _HF_NAME.format(split)


def hf_shard_path(folder: str | Path, hf_split: str, index: int, count: int) -> Path:
    """``FOLDER/data/<hf_split>-<index>-of-<count>.parquet`` (5 digits each, index from 0): shard ``index`` of
    ``count``, named as ``datasets.Dataset.push_to_hub`` names them, so that ``load_dataset(FOLDER)`` finds the
    split by its name."""
    return Path(folder) / _HF_SHARD_NAME.format(hf_split, index, count)


def hf_id2label_path(folder: str | Path) -> Path:
    """``FOLDER/id2label.json``: ``{"0": "background", ...}``, the file transformers' segmentation examples read."""
    return Path(folder) / _HF_ID2LABEL_NAME


def cvat_path(art: str | Path, split: str) -> Path:
    """``ART/cvat_<split>.zip``: the pseudo masks as a CVAT "Segmentation mask 1.1" archive (``--format cvat``)."""
    return Path(art) / _CVAT_NAME.format(split)


def label_studio_path(art: str | Path, split: str) -> Path:
    """``ART/label_studio_<split>.json``: Label Studio tasks with the pseudo masks as BrushLabels predictions
    (``--format label-studio``)."""
    return Path(art) / _LABEL_STUDIO_NAME.format(split)


def label_studio_config_path(art: str | Path, split: str) -> Path:
    """``ART/label_studio_<split>.xml``: the labeling config of a Label Studio project the tasks fit."""
    return Path(art) / _LABEL_STUDIO_CONFIG_NAME.format(split)


def hand_label_paths(art: str | Path, split: str) -> tuple[Path, ...]:
    """The files of a split that the formats for correction by hand build (cvat, label-studio): what
    ``--overwrite`` deletes with the rest of the split."""
    return cvat_path(art, split), label_studio_path(art, split), label_studio_config_path(art, split)


def confidence_path(art: str | Path, split: str) -> Path:
    """``ART/confidence_<split>.json``: every image's confidence score (docs/artifact-format.md "Confidence")."""
    return Path(art) / _CONFIDENCE_NAME.format(split)


def exported_splits(art: str | Path) -> list[str]:
    """The splits an artifact folder holds (an HDF5 file or a masks folder), sorted."""
    art = Path(art)
    h5_prefix, h5_suffix = _H5_NAME.split("{}")
    masks_prefix, masks_suffix = _MASKS_NAME.split("{}")
    from_h5 = {p.name[len(h5_prefix): len(p.name) - len(h5_suffix)] for p in art.glob(_H5_NAME.format("*"))}
    from_pngs = {p.name[len(masks_prefix): len(p.name) - len(masks_suffix)]
                 for p in art.glob(_MASKS_NAME.format("*")) if p.is_dir()}
    return sorted(from_h5 | from_pngs)


def parts_dir(art: str | Path, split: str) -> Path:
    return Path(art) / f".parts_{split}"


def lock_name(split: str) -> str:
    """The lock file of a split in an artifact folder (``ART/.lock_<split>``; :func:`seco_labels.io.folder_lock`):
    one writer per split and folder, while other splits of the folder may be written at the same time."""
    return f".lock_{split}"


def read_manifest(art: str | Path, split: str) -> dict[str, Any] | None:
    """The export settings recorded in ``ART/manifest_<split>.json``, or None when there is none."""
    path = manifest_path(art, split)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}); delete it and export again with --overwrite") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path} holds a JSON {type(manifest).__name__}, not the settings object; delete it and "
                        "export again with --overwrite")
    return manifest


def show_dir(art: str | Path, split: str) -> Path:
    """``ART/show_<split>/``: the default folder of ``seco show``'s strips (linked from the report)."""
    return Path(art) / _SHOW_NAME.format(split)


def report_dir(art: str | Path, split: str) -> Path:
    """``ART/report_<split>/``: ``seco report``'s page (index.html) and its thumbnails."""
    return Path(art) / _REPORT_NAME.format(split)


def classes_path(art: str | Path) -> Path:
    """``ART/classes.json``: index, name and PNG palette colour of every class of the masks."""
    return Path(art) / _CLASSES_NAME


def write_classes_json(art: str | Path, class_names: list[str] | tuple[str, ...]) -> Path:
    """Write ``ART/classes.json``, ``[{"index", "name", "color": [r, g, b]}, ...]`` in mask-value order (the
    colours are the masks' PNG palette), atomically; returns its path."""
    palette = voc_palette()
    classes = [{"index": k, "name": str(name), "color": palette[3 * k: 3 * k + 3]}
               for k, name in enumerate(class_names)]
    path = classes_path(art)
    atomic_write_text(path, json.dumps(classes, indent=1) + "\n")
    return path


def save_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a (H, W) uint8 mask as a VOC-palette 'P' PNG, atomically."""
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _comparable(attrs: dict[str, Any]) -> dict[str, Any]:
    # round-trip through JSON so tuples/lists and numpy scalars compare equal
    return json.loads(json.dumps({k: v for k, v in attrs.items() if k not in _VOLATILE}, sort_keys=True,
                                 default=str))


def settings_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for each recorded setting that differs between two runs into one folder (a manifest's
    ``before``, this run's ``after``); the whole ``config`` shows as one line. Empty when they agree.

    The volatile keys (creation time, package version) do not count, nor keys only one side has: another package
    version added or removed them, so they cannot disagree.
    """
    old, new = _comparable(before), _comparable(after)
    diff = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    shown = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff if k != "config"]
    return shown + (["the checkpoint's config differs"] if "config" in diff else [])


