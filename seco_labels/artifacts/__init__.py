"""The pseudo-label artifact format (docs/design.md §7): schema, crash-safe writer, and the reader other projects
import.

An artifact folder ``ART`` holds, per split:

- ``cams_<split>.h5``: root attributes (provenance, see :data:`ROOT_ATTRS`); ``/cams/<id>`` float16 (k, H, W)
  CAMs of the image's k tagged classes at the original image size, attributes ``keys`` (k,) class indices 1..K-1
  and ``size`` (H, W), one gzip+shuffle chunk per image; ``/masks/<id>`` uint8 (H, W) pseudo mask, 255 = ignore.
- ``masks_<split>/<id>.png``: the same masks as palette-'P' PNGs in VOC colours.
- ``manifest_<split>.json``: the export settings, so that a resumed export can refuse to mix settings.
- ``classes.json``: index, name and palette colour of each class (what the mask values mean).
- ``confidence_<split>.json``: each image's confidence score and its classes' (:class:`MaskConfidence`), also
  stored as attributes of ``/masks/<id>``; absent in exports made before it was recorded.
- ``coco_<split>.json`` (``--format coco-json``): the masks as COCO RLE annotations, built from the finished masks.
- ``hf_<split>/`` (``--format hf-dataset``): images and masks as a Hugging Face dataset (parquet shards with
  ``image`` and ``label`` Image columns, ``id2label.json``), built from the finished masks.
- ``cvat_<split>.zip`` (``--format cvat``): the masks as a CVAT "Segmentation mask 1.1" archive, for correction by hand.
- ``label_studio_<split>.json`` and ``.xml`` (``--format label-studio``): Label Studio tasks with the masks as
  BrushLabels predictions, and the labeling config of their project.

Crash safety: HDF5 files are not safe to append to from a process that may be killed, so :class:`ArtifactWriter`
writes each finished image as its own part file (``.parts_<split>/<id>.npz``, temp file + rename) holding the
already-compressed HDF5 chunks, and :meth:`ArtifactWriter.finalize` assembles them (with any earlier
``cams_<split>.h5``) into a new file that replaces the old one by rename. A killed export therefore keeps every
finished image, and the next run skips them. Compression and PNG encoding run on a background thread (zlib
releases the GIL), off the network's path.

Reading: :func:`open_split` finds an exported split (:class:`ArtifactSplit`: its masks, CAMs, dataset and
provenance); :func:`open_pseudo_labels` gives a torch ``Dataset`` of (image, mask[, cam, keys]);
:class:`ArtifactFile` and :class:`PngMaskFolder` give per-id masks (and CAMs: the ``seco evaluate`` sources). The
HDF5 file is opened lazily, once per process, so all of them are safe in DataLoader workers.
"""

from __future__ import annotations

from .coco import decode_rle, encode_rle, write_coco_json
from .confidence import MaskConfidence, read_confidence
from .cvat import write_cvat_zip
from .folder import ArtifactSplit, ExportedDataset, open_pseudo_labels, open_split
from .hf_dataset import write_hf_dataset
from .label_studio import write_label_studio
from .layout import (
                     FORMAT_VERSION,
                     GZIP_LEVEL,
                     ROOT_ATTRS,
                     classes_path,
                     coco_path,
                     confidence_path,
                     cvat_path,
                     export_report_path,
                     exported_splits,
                     h5_path,
                     hf_dataset_dir,
                     label_studio_config_path,
                     label_studio_path,
                     lock_name,
                     manifest_path,
                     masks_dir,
                     read_manifest,
                     report_dir,
                     save_mask_png,
                     segment_report_path,
                     settings_changes,
                     show_dir,
)
from .reader import ArtifactFile, PngMaskFolder, PseudoLabels
from .writer import ArtifactWriter

__all__ = [
    "FORMAT_VERSION",
    "ROOT_ATTRS",
    "GZIP_LEVEL",
    "ArtifactWriter",
    "ArtifactFile",
    "PngMaskFolder",
    "ArtifactSplit",
    "MaskConfidence",
    "read_confidence",
    "confidence_path",
    "ExportedDataset",
    "open_split",
    "write_coco_json",
    "write_hf_dataset",
    "hf_dataset_dir",
    "encode_rle",
    "decode_rle",
    "coco_path",
    "write_cvat_zip",
    "cvat_path",
    "write_label_studio",
    "label_studio_path",
    "label_studio_config_path",
    "classes_path",
    "report_dir",
    "show_dir",
    "PseudoLabels",
    "open_pseudo_labels",
    "h5_path",
    "masks_dir",
    "manifest_path",
    "export_report_path",
    "segment_report_path",
    "exported_splits",
    "read_manifest",
    "save_mask_png",
    "lock_name",
    "settings_changes",
]

