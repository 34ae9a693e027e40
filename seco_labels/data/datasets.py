"""torch Datasets over a reader: training views with tags, and evaluation images with their masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .readers import SegmentationReader
from .transforms import TrainViews, normalize

__all__ = ["TrainDataset", "EvalDataset", "single_label_index"]


def single_label_index(tags: np.ndarray) -> int:
    """Class index 1..K-1 of an image with exactly one tag, else -1 (used by the class prototypes)."""
    present = np.flatnonzero(tags > 0)
    return int(present[0]) + 1 if present.size == 1 else -1


class TrainDataset(Dataset):
    """Training samples of a reader, augmented by :class:`TrainViews`.

    Index with ``i`` or ``(epoch, i)``; the augmentation draws from ``np.random.default_rng([seed, epoch, i])``,
    so a sample is the same whatever DataLoader worker builds it, and a resumed run sees the same views.
    Items: ``id`` (str), ``image``/``global2``/``strong`` (3, S, S) float, ``box`` (4,) long, ``tags`` (K-1,)
    float, ``label_idx`` () long.
    """

    def __init__(self, reader: SegmentationReader, views: TrainViews, seed: int = 0) -> None:
        self.reader = reader
        self.views = views
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        image_id = self.reader.ids[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        item = self.views(self.reader.load_image(image_id), rng)
        tags = self.reader.tags(image_id)
        item.update(id=image_id, tags=torch.from_numpy(tags.copy()),
                    label_idx=torch.tensor(single_label_index(tags), dtype=torch.long))
        return item


class EvalDataset(Dataset):
    """Whole images for validation/export: ``image`` (3, H, W) normalised (resized to ``size`` x ``size``
    when given), ``mask`` (H0, W0) long at original resolution (when ``with_masks``), ``tags`` (K-1,),
    ``orig_size`` (2,) long, ``id``."""

    def __init__(self, reader: SegmentationReader, *, size: int | None = None, with_masks: bool = True) -> None:
        self.reader = reader
        self.size = size
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.reader.ids[index]
        img = self.reader.load_image(image_id)
        x = normalize(img)
        if self.size:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        item = {"id": image_id, "image": x, "tags": torch.from_numpy(self.reader.tags(image_id).copy()),
                "orig_size": torch.tensor(img.shape[:2], dtype=torch.long)}
        if self.with_masks:
            item["mask"] = torch.from_numpy(self.reader.load_mask(image_id, img.shape[:2]).astype(np.int64))
        return item
