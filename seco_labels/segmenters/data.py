"""Training data of ``seco fit-segmenter``: checked label sources and the DeepLab-style joint augmentation.

Labels are either the ground-truth masks of the training split (``--labels gt``, the upper bound) or an export
folder of ``seco export-masks`` (``cams_<split>.h5`` and/or ``masks_<split>/``, read through
:func:`seco_labels.artifacts.open_pseudo_labels`). :func:`open_labels` checks, before any training, what can be
checked from file headers: every id of the split has a mask, the export's classes are the dataset's, each mask
has its image's size. Mask values are checked as each mask is decoded (and up front when an export does not record
its number of classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..artifacts import ArtifactSplit, PngMaskFolder, exported_splits, h5_path, masks_dir, open_split
from ..data.images import read_image_size
from ..data.readers import SegmentationReader, build_reader, check_class_count
from ..data.transforms import IMAGENET_MEAN, normalize
from ..errors import ConfigError, DataError
from .config import SegDataConfig

__all__ = ["LabelSet", "open_labels", "open_val_reader", "SegTrainDataset", "joint_augment", "MEAN_PIXEL"]

#: padding colour of training crops: the ImageNet mean, i.e. 0 after normalisation
MEAN_PIXEL = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


@dataclass
class LabelSet:
    """The checked training labels of one split.

    Attributes:
        reader: images (and GT masks) of the split; its ids are the training ids, in list order (only the
            confident ones with ``data.min_confidence``/``data.keep_share``).
        export: the exported split the masks come from (None for GT).
        selection: what the confidence filter kept, in words ("" without it).
    """

    reader: SegmentationReader
    export: ArtifactSplit | None = None
    #: what ``data.min_confidence``/``data.keep_share`` kept, for the run's output ("" when neither is set)
    selection: str = ""

    @property
    def kind(self) -> str:
        """``"gt"``, ``"h5"`` (``cams_<split>.h5``) or ``"png"`` (``masks_<split>/``)."""
        if self.export is None:
            return "gt"
        return "png" if isinstance(self.export.masks, PngMaskFolder) else "h5"

    @property
    def ids(self) -> list[str]:
        return list(self.reader.ids)

    @property
    def attrs(self) -> dict[str, Any]:
        """The export's recorded settings (``{}`` for GT)."""
        return self.export.record if self.export is not None else {}

    def describe(self) -> str:
        if self.export is None:
            return f"GT masks of split {self.reader.split!r} ({self.reader.root})"
        return f"pseudo masks {self.export.masks.name}"

    def mask_file(self, image_id: str) -> str:
        """Where an id's mask is, for messages."""
        if self.export is None:
            return str(self.reader.mask_path(image_id))
        return self.export.masks.location(image_id)


def _find_export(art: Path, split: str) -> ArtifactSplit:
    """The exported ``split`` of a label folder."""
    if not art.is_dir():
        raise DataError(f"label folder {art} not found; pass an export folder (seco export-masks --out ART_DIR) "
                        "or --labels gt")
    held = exported_splits(art)
    if split not in held:
        raise DataError(
            f"label folder {art} holds no labels for split {split!r} (no {h5_path(art, split).name} or "
            f"{masks_dir(art, split).name}/); it holds split(s) {', '.join(held) or 'none'}: export this split "
            f"(seco export-masks --split {split} --out {art}) or train on a split it holds (--split)"
        )
    return open_split(art, split)


def _resolve(d: SegDataConfig) -> ArtifactSplit | None:
    """Fill ``d.root``/``d.layout`` from the export when not given; returns the exported split (None for GT).

    The number of classes is the dataset's (``--num-classes``/``--classes``, else the layout's), never taken from
    the export of another dataset: an export of other classes must fail the check, not redefine the dataset. An
    export of this very dataset (same root and layout) brings its class names along, so a dataset trained with its
    own ``--classes`` needs no second ``--classes`` here."""
    if d.labels == "gt":
        if not d.root:
            raise ConfigError("--labels gt trains on the GT masks of --split: pass --data-root DIR")
        d.layout = d.layout or "voc"
        return None
    export = _find_export(Path(d.labels), d.split)
    recorded = export.dataset
    if not d.root:
        if not recorded.root:
            raise ConfigError(f"{export.folder} does not record where the images are (no provenance record of split "
                              f"{d.split!r}); pass --data-root DIR")
        d.root = recorded.root
    d.layout = d.layout or recorded.layout or "voc"
    same_dataset = (recorded.root and Path(d.root).resolve() == Path(recorded.root).resolve()
                    and d.layout == (recorded.layout or "voc"))
    if same_dataset and not d.class_names and d.num_classes is None and recorded.class_names:
        d.class_names = recorded.class_names
    return export


def _check_classes(labels: LabelSet, d: SegDataConfig) -> None:
    export, reader = labels.export, labels.reader
    assert export is not None
    recorded, origin = export.dataset, export.record_file
    k = recorded.num_classes
    if k is not None and int(k) != reader.num_classes:
        raise DataError(
            f"labels in {export.folder} were exported for {int(k)} classes ({origin}) but the dataset has "
            f"{reader.num_classes} (layout {d.layout!r}); pass the --layout/--num-classes of the dataset they were "
            "exported from, or export the labels again for this dataset"
        )
    names = recorded.class_names
    if names and len(names) == reader.num_classes and list(names) != list(reader.class_names):
        diff = next(i for i, (a, b) in enumerate(zip(names, reader.class_names)) if a != b)
        raise DataError(
            f"labels in {export.folder} were exported with other class names ({origin}): class {diff} is "
            f"{names[diff]!r} there but {reader.class_names[diff]!r} in layout {d.layout!r}; pass the export's "
            "--layout or export the labels again for this dataset"
        )


def _check_ids_and_sizes(labels: LabelSet) -> None:
    reader, export = labels.reader, labels.export
    if export is None:
        sizes = {i: read_image_size(reader.mask_path(i), f"GT mask of {i}", "Re-copy it") for i in reader.ids}
    else:
        sizes = export.masks.mask_shapes(reader.ids)
        missing = [i for i in reader.ids if i not in sizes]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(reader.ids)} ids of split {reader.split!r} ({reader.split_file}) have no mask "
                f"in {export.masks.name}: {_first(missing)}; export them (seco export-masks --split {reader.split} "
                f"--out {export.folder}) or train on the split the labels were exported for"
            )
    bad = []
    for i in reader.ids:
        image_size = reader.image_size(i)
        if sizes[i] != image_size:
            bad.append((i, sizes[i], image_size))
    if bad:
        i, (mh, mw), (h, w) = bad[0]
        more = f" ({len(bad)} of {len(reader.ids)} masks have the wrong size)" if len(bad) > 1 else ""
        raise DataError(
            f"mask {labels.mask_file(i)} of {i} is {mw}x{mh} (WxH) but its image {reader.image_path(i)} is {w}x{h}"
            f"{more}; masks must have their image's size: export the labels again from this dataset or pass the "
            "--data-root they were exported from"
        )


def _check_values(labels: LabelSet) -> None:
    """Decode every mask (only when the export does not record its number of classes)."""
    assert labels.export is not None
    k, ignore = labels.reader.num_classes, labels.reader.ignore_index
    for image_id in labels.ids:
        _check_mask(labels, image_id, labels.export.masks.load_mask(image_id), k, ignore)


def _check_mask(labels: LabelSet, image_id: str, mask: np.ndarray, k: int, ignore: int) -> None:
    values = np.unique(mask)
    bad = values[(values >= k) & (values != ignore)]
    if bad.size:
        raise DataError(
            f"mask {labels.mask_file(image_id)} of {image_id} has values {bad.tolist()[:8]} outside 0..{k - 1} and "
            f"{ignore}; the labels were made for another number of classes: export them again or pass the matching "
            "--num-classes/--layout"
        )


def open_labels(d: SegDataConfig) -> tuple[LabelSet, Dataset | None]:
    """Resolve and check the training labels of ``d`` (filling ``d.root``, ``d.layout`` from the export when
    empty, and ``d.num_classes`` from the dataset when None).

    Returns the :class:`LabelSet` and, for an export, its :class:`~seco_labels.artifacts.PseudoLabels` dataset
    (None for GT).

    Raises:
        ConfigError: ``--labels gt`` without ``--data-root``; an export that records no dataset root.
        DataError: missing folder or split; an export of another number of classes or class names; ids of the
            split without a mask; a mask whose size is not its image's; mask values outside 0..K-1 and ignore
            (names the file or id and what to do).
    """
    export = _resolve(d)
    if d.max_side is None:  # the images bounded as at export, so they have their masks' size (recorded in config.yaml)
        d.max_side = (export.dataset.max_side or 0) if export is not None else 0
    reader = build_reader(d.layout, d.root, d.split, num_classes=d.num_classes, class_names=d.class_names or None,
                          ignore_index=d.ignore_index, require_masks=export is None, require_tags=False,
                          max_side=d.max_side)
    if export is None and not d.class_names:
        check_class_count(reader)
    d.num_classes, d.class_names = reader.num_classes, tuple(reader.class_names)
    labels = LabelSet(reader, export)
    if export is not None:
        _check_classes(labels, d)
    _check_ids_and_sizes(labels)
    if export is None:
        return labels, None
    pseudo = export.pseudo_labels(data_root=d.root)
    if pseudo.ids != reader.ids:  # both follow the split list once every id has a mask
        raise DataError(f"the export in {export.folder} and split {d.split!r} of {d.root} list different ids; export "
                        "again")
    if export.dataset.num_classes is None:
        _check_values(labels)
    d.kept_images = None
    if d.min_confidence is not None or d.keep_share is not None:
        kept, labels.selection = _confident_ids(export, reader.ids, d)
        reader.ids = pseudo.ids = kept  # both index the same training images (SegTrainDataset)
        d.kept_images = len(kept)
    return labels, pseudo


def _confident_ids(export: ArtifactSplit, ids: list[str], d: SegDataConfig) -> tuple[list[str], str]:
    """The ids (in split order) whose mask confidence is at least ``d.min_confidence``, or the ``d.keep_share``
    most confident (ties by id), and what was kept in words."""
    scores = export.confidences()
    if not scores:
        raise DataError(f"{export.folder} records no confidence for split {d.split!r} (exported before seco-labels "
                        "recorded it, or not by seco export-masks): export it again (seco export-masks --overwrite) "
                        "or drop --min-confidence/--keep-share")
    missing = [i for i in ids if i not in scores]
    if missing:
        raise DataError(f"{len(missing)} of {len(ids)} ids of split {d.split!r} have no confidence in "
                        f"{export.folder}: {_first(missing)}; export them again with --overwrite")
    if d.min_confidence is not None:
        kept = [i for i in ids if scores[i].image >= d.min_confidence]
        rule = f"confidence >= {d.min_confidence:g}"
        if not kept:
            best = max(scores[i].image for i in ids)
            raise DataError(f"no image of split {d.split!r} in {export.folder} has {rule} (the highest is {best:.4f}); "
                            "lower --min-confidence or use --keep-share")
    else:
        n = max(1, math.ceil(round(d.keep_share * len(ids), 6)))  # round: 0.7 * 10 is 7.000000000000001
        chosen = set(sorted(ids, key=lambda i: (-scores[i].image, i))[:n])
        kept = [i for i in ids if i in chosen]
        rule = f"the {d.keep_share:g} most confident (confidence >= {min(scores[i].image for i in kept):.4f})"
    return kept, f"kept {len(kept)} of {len(ids)} images of split {d.split!r}: {rule}"


def open_val_reader(d: SegDataConfig) -> SegmentationReader | None:
    """The validation split's reader (images and GT masks required), or None without ``val_split``."""
    if not d.val_split:
        return None
    return build_reader(d.layout, d.root, d.val_split, num_classes=d.num_classes, class_names=d.class_names or None,
                        ignore_index=d.ignore_index, require_masks=True, require_tags=False)


def joint_augment(image: np.ndarray, mask: np.ndarray, *, crop_size: int, scale_range: tuple[float, float],
                  flip_p: float, ignore_index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The DeepLab training transform of an (H, W, 3) uint8 image and its (H, W) mask.

    Random rescale by s ~ U(scale_range) (bilinear image, nearest mask) -> horizontal flip (p ``flip_p``) -> pad
    at the bottom/right to at least ``crop_size`` (image with :data:`MEAN_PIXEL`, mask with ``ignore_index``) ->
    random ``crop_size`` square. Returns ``(image (S, S, 3) uint8, mask (S, S) uint8)``.
    """
    h, w = mask.shape
    s = rng.uniform(*scale_range)
    size = (max(1, int(round(s * w))), max(1, int(round(s * h))))  # PIL wants (W, H)
    img = np.asarray(Image.fromarray(image).resize(size, resample=Image.BILINEAR))
    lab = np.asarray(Image.fromarray(mask).resize(size, resample=Image.NEAREST))
    if rng.random() < flip_p:
        img, lab = img[:, ::-1], lab[:, ::-1]
    h, w = lab.shape
    ph, pw = max(crop_size, h), max(crop_size, w)
    padded_img = np.empty((ph, pw, 3), dtype=np.uint8)
    padded_img[:] = MEAN_PIXEL
    padded_img[:h, :w] = img
    padded_lab = np.full((ph, pw), ignore_index, dtype=np.uint8)
    padded_lab[:h, :w] = lab
    y0, x0 = int(rng.integers(ph - crop_size + 1)), int(rng.integers(pw - crop_size + 1))
    return (np.ascontiguousarray(padded_img[y0:y0 + crop_size, x0:x0 + crop_size]),
            np.ascontiguousarray(padded_lab[y0:y0 + crop_size, x0:x0 + crop_size]))


class SegTrainDataset(Dataset):
    """Augmented (image, mask) training pairs of a :class:`LabelSet`.

    ``ds[(epoch, i)]`` draws from ``np.random.default_rng([seed, epoch, i])``, so a sample is the same in any
    DataLoader worker and after a resume (pairs with :class:`seco_labels.runtime.device.StepBatchSampler`).

    Items: ``id`` str; ``image`` (3, S, S) float32, ImageNet-normalised; ``mask`` (S, S) int64, ``ignore_index``
    for padding and unlabelled pixels.
    """

    def __init__(self, labels: LabelSet, pseudo: Dataset | None, *, crop_size: int, scale_range: tuple[float, float],
                 flip_p: float, seed: int) -> None:
        self.labels = labels
        self.pseudo = pseudo
        self.crop_size = int(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip_p = float(flip_p)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.labels.reader)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The un-augmented (H, W, 3) uint8 image and (H, W) uint8 mask of item ``index``."""
        reader = self.labels.reader
        image_id = reader.ids[index]
        if self.pseudo is None:
            image = reader.load_image(image_id)
            return image, reader.load_mask(image_id, image.shape[:2])
        image_t, mask_t = self.pseudo[index][:2]
        mask = mask_t.numpy()
        _check_mask(self.labels, image_id, mask, reader.num_classes, reader.ignore_index)
        return image_t.permute(1, 2, 0).numpy(), mask.astype(np.uint8)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, mask = self.load(index)
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        img, lab = joint_augment(image, mask, crop_size=self.crop_size, scale_range=self.scale_range,
                                 flip_p=self.flip_p, ignore_index=self.labels.reader.ignore_index, rng=rng)
        return {"id": self.labels.reader.ids[index], "image": normalize(img),
                "mask": torch.from_numpy(lab.astype(np.int64))}
