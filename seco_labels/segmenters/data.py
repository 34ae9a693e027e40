"""Training data of ``seco fit-segmenter``: checked label sources and the DeepLab-style joint augmentation.

Labels are either the ground-truth masks of the training split (``--labels gt``, the upper bound) or an export
folder of ``seco export-masks`` (``cams_<split>.h5`` and/or ``masks_<split>/``, read through
:func:`seco_labels.artifacts.open_pseudo_labels`). :func:`open_labels` checks, before any training, what can be
checked from file headers: every id of the split has a mask, the export's classes are the dataset's, each mask
has its image's size. Mask values are checked as each mask is decoded (and up front when an export does not record
its number of classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..artifacts import (ArtifactFile, exported_splits, h5_path, manifest_path, masks_dir, open_pseudo_labels,
                         read_manifest)
from ..data.readers import SegmentationReader, build_reader, check_class_count, decode_image
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
        kind: ``"gt"``, ``"h5"`` (``cams_<split>.h5``) or ``"png"`` (``masks_<split>/``).
        reader: images (and GT masks) of the split; its ids are the training ids, in list order.
        where: the HDF5 file or PNG folder the masks come from (None for GT).
        art: the export folder (None for GT).
        attrs: the export's recorded settings (``{}`` for GT).
    """

    kind: str
    reader: SegmentationReader
    where: Path | None = None
    art: Path | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return list(self.reader.ids)

    def describe(self) -> str:
        if self.kind == "gt":
            return f"GT masks of split {self.reader.split!r} ({self.reader.root})"
        return f"pseudo masks {self.where}"

    def mask_file(self, image_id: str) -> str:
        """Where an id's mask is, for messages."""
        if self.kind == "gt":
            return str(self.reader.mask_path(image_id))
        if self.kind == "png":
            return str(self.where / f"{image_id}.png")
        return f"{self.where}:/masks/{image_id}"


def _find_export(art: Path, split: str) -> tuple[str, Path, dict[str, Any]]:
    """(kind, HDF5 file or PNG folder, recorded attributes) of ``split`` in an export folder."""
    if not art.is_dir():
        raise DataError(f"label folder {art} not found; pass an export folder (seco export-masks --out ART_DIR) "
                        "or --labels gt")
    h5, pngs = h5_path(art, split), masks_dir(art, split)
    if h5.is_file():
        with ArtifactFile(h5) as source:
            return "h5", h5, dict(source.attrs)
    if pngs.is_dir():
        return "png", pngs, read_manifest(art, split) or {}
    held = exported_splits(art)
    raise DataError(
        f"label folder {art} holds no labels for split {split!r} (no {h5.name} or {pngs.name}/); it holds split(s) "
        f"{', '.join(held) or 'none'}: export this split (seco export-masks --split {split} --out {art}) or "
        "train on a split it holds (--split)"
    )


def _resolve(d: SegDataConfig) -> tuple[str, Path | None, Path | None, dict[str, Any]]:
    """Fill ``d.root``/``d.layout`` from the export when not given; returns (kind, where, art, attrs).

    The number of classes is the dataset's (``--num-classes``/``--classes``, else the layout's), never taken from
    the export of another dataset: an export of other classes must fail the check, not redefine the dataset. An
    export of this very dataset (same root and layout) brings its class names along, so a dataset trained with its
    own ``--classes`` needs no second ``--classes`` here."""
    if d.labels == "gt":
        if not d.root:
            raise ConfigError("--labels gt trains on the GT masks of --split: pass --data-root DIR")
        d.layout = d.layout or "voc"
        return "gt", None, None, {}
    art = Path(d.labels)
    kind, where, attrs = _find_export(art, d.split)
    if not d.root:
        if not attrs.get("dataset_root"):
            raise ConfigError(f"{art} does not record where the images are ({manifest_path(art, d.split).name} "
                              "missing); pass --data-root DIR")
        d.root = str(attrs["dataset_root"])
    d.layout = d.layout or str(attrs.get("layout") or "voc")
    same_dataset = (attrs.get("dataset_root") and Path(d.root).resolve() == Path(attrs["dataset_root"]).resolve()
                    and d.layout == (attrs.get("layout") or "voc"))
    if same_dataset and not d.class_names and d.num_classes is None and attrs.get("class_names"):
        d.class_names = tuple(attrs["class_names"])
    return kind, where, art, attrs


def _png_header(path: Path, image_id: str) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as img:  # reads the header only
            return (img.height, img.width), img.mode
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"pseudo mask {path} of {image_id} is unreadable ({e}); export it again") from None


def _check_classes(labels: LabelSet, d: SegDataConfig) -> None:
    attrs, reader = labels.attrs, labels.reader
    origin = labels.where if labels.kind == "h5" else manifest_path(labels.art, reader.split)
    k = attrs.get("num_classes")
    if k is not None and int(k) != reader.num_classes:
        raise DataError(
            f"labels in {labels.art} were exported for {int(k)} classes ({origin}) but the dataset has "
            f"{reader.num_classes} (layout {d.layout!r}); pass the --layout/--num-classes of the dataset they were "
            "exported from, or export the labels again for this dataset"
        )
    names = attrs.get("class_names")
    if names and len(names) == reader.num_classes and list(names) != list(reader.class_names):
        diff = next(i for i, (a, b) in enumerate(zip(names, reader.class_names)) if a != b)
        raise DataError(
            f"labels in {labels.art} were exported with other class names ({origin}): class {diff} is "
            f"{names[diff]!r} there but {reader.class_names[diff]!r} in layout {d.layout!r}; pass the export's "
            "--layout or export the labels again for this dataset"
        )


def _check_ids_and_sizes(labels: LabelSet) -> None:
    reader = labels.reader
    if labels.kind == "gt":
        sizes = {}
        for i in reader.ids:
            sizes[i], _ = _png_header(reader.mask_path(i), i)
    elif labels.kind == "h5":
        with ArtifactFile(labels.where) as source:
            sizes = source.mask_shapes(reader.ids)
    else:
        sizes = {}
        for i in reader.ids:
            path = labels.where / f"{i}.png"
            if path.is_file():
                sizes[i], mode = _png_header(path, i)
                if mode not in ("P", "L"):
                    raise DataError(f"pseudo mask {path} of {i} has mode {mode}; masks hold class indices in one "
                                    "channel (palette 'P' or grey 'L' PNG): export it again")
    missing = [i for i in reader.ids if i not in sizes]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(reader.ids)} ids of split {reader.split!r} ({reader.split_file}) have no mask in "
            f"{labels.where}: {_first(missing)}; export them (seco export-masks --split {reader.split} --out "
            f"{labels.art}) or train on the split the labels were exported for"
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
    k, ignore = labels.reader.num_classes, labels.reader.ignore_index
    if labels.kind == "h5":
        with ArtifactFile(labels.where) as source:
            for image_id in labels.ids:
                _check_mask(labels, image_id, source.load_mask(image_id), k, ignore)
        return
    for image_id in labels.ids:
        path = labels.where / f"{image_id}.png"
        with decode_image(path, f"pseudo mask of {image_id}", hint="Export it again") as img:
            mask = np.asarray(img)
        _check_mask(labels, image_id, mask, k, ignore)


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

    Returns the :class:`LabelSet` and, for an export, its :func:`open_pseudo_labels` dataset (None for GT).

    Raises:
        ConfigError: ``--labels gt`` without ``--data-root``; an export that records no dataset root.
        DataError: missing folder or split; an export of another number of classes or class names; ids of the
            split without a mask; a mask whose size is not its image's; mask values outside 0..K-1 and ignore
            (names the file or id and what to do).
    """
    kind, where, art, attrs = _resolve(d)
    reader = build_reader(d.layout, d.root, d.split, num_classes=d.num_classes, class_names=d.class_names or None,
                          ignore_index=d.ignore_index, require_masks=kind == "gt", require_tags=False)
    if kind == "gt" and not d.class_names:
        check_class_count(reader)
    d.num_classes, d.class_names = reader.num_classes, tuple(reader.class_names)
    labels = LabelSet(kind, reader, where, art, attrs)
    if kind != "gt":
        _check_classes(labels, d)
    _check_ids_and_sizes(labels)
    if kind == "gt":
        return labels, None
    pseudo = open_pseudo_labels(art, d.split, data_root=d.root)
    if pseudo.ids != reader.ids:  # both follow the split list once every id has a mask
        raise DataError(f"the export in {art} and split {d.split!r} of {d.root} list different ids; export again")
    if attrs.get("num_classes") is None:
        _check_values(labels)
    return labels, pseudo


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
    DataLoader worker and after a resume (pairs with :class:`seco_labels.runtime.StepBatchSampler`).

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
