"""torch Datasets over a reader: training views with tags, and whole images with their masks for evaluation.

Neither keeps a file open between items (readers decode and close each file), so both can be sent to
DataLoader workers; all training randomness is seeded per sample from (seed, epoch, index).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from ..errors import DataError
from .readers import SegmentationReader
from .transforms import TrainViews, normalize

__all__ = ["TrainDataset", "EvalDataset", "single_label_index", "collate_eval"]


def single_label_index(tags: np.ndarray) -> int:
    """Class index 1..K-1 of an image with exactly one tag, else -1 (none or several); feeds the prototypes."""
    present = np.flatnonzero(tags > 0)
    return int(present[0]) + 1 if present.size == 1 else -1


class TrainDataset(Dataset):
    """Training samples of a reader, augmented by :class:`TrainViews`.

    ``ds[i]`` uses the epoch set by :meth:`set_epoch`; ``ds[(epoch, i)]`` names it explicitly. The views draw
    from ``np.random.default_rng([seed, epoch, i])``, so a sample is the same whichever DataLoader worker builds
    it and however many there are, and a resumed run sees the views it would have seen.

    Items: ``id`` str; ``image``, ``global2``, ``strong`` (3, S, S) float32; ``box`` (4,) int64
    ``[h0, h1, w0, w1]``; ``tags`` (K-1,) float32 multi-hot; ``label_idx`` () int64, the class 1..K-1 of a
    single-tag image, else -1; ``crop_seed`` () int64, seeds the image's local-crop draws in the training step,
    so those too depend on (seed, epoch, index) only, not on the batch or process the image lands in.
    """

    def __init__(self, reader: SegmentationReader, views: TrainViews, seed: int) -> None:
        self.reader = reader
        self.views = views
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` for plain integer indices (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        image_id = self.reader.ids[index]
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        item: dict[str, Any] = self.views(self.reader.load_image(image_id), rng)
        tags = self.reader.tags(image_id)
        item["id"] = image_id
        item["tags"] = torch.from_numpy(tags.copy())
        item["label_idx"] = torch.tensor(single_label_index(tags), dtype=torch.long)
        # a stream apart from the views', so adding it left the augmentations unchanged
        crop_rng = np.random.default_rng([self.seed, int(epoch), int(index), 1])
        item["crop_seed"] = torch.tensor(int(crop_rng.integers(2**62)), dtype=torch.long)
        return item


class EvalDataset(Dataset):
    """Whole images for validation and export.

    Items: ``id`` str; ``image`` (3, H, W) float32 normalised, bilinearly resized to ``size`` x ``size`` when
    ``size`` is given; ``mask`` (H0, W0) int64 at the original resolution, 255 = ignore (only with
    ``with_masks``); ``tags`` (K-1,) float32; ``orig_size`` (2,) int64 ``[H0, W0]``.

    Original sizes differ, so batch with ``batch_size=1`` or with :func:`collate_eval`.

    Raises:
        DataError: ``with_masks`` and a listed id has no mask file.
    """

    def __init__(self, reader: SegmentationReader, *, size: int | None = None, with_masks: bool = True) -> None:
        if with_masks and not reader.has_masks:
            absent = next(reader.mask_path(i) for i in reader.ids if not reader.mask_path(i).is_file())
            raise DataError(f"{absent} (listed in {reader.split_file}) not found; evaluation needs a mask per image")
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
        item = {
            "id": image_id,
            "image": x,
            "tags": torch.from_numpy(self.reader.tags(image_id).copy()),
            "orig_size": torch.tensor(img.shape[:2], dtype=torch.long),
        }
        if self.with_masks:
            item["mask"] = torch.from_numpy(self.reader.load_mask(image_id, img.shape[:2]).astype(np.int64))
        return item


def collate_eval(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`EvalDataset` items whose ``image``s share a size (``size`` set): ``image`` (B, 3, S, S),
    ``tags`` (B, K-1), ``orig_size`` (B, 2) stacked; ``id`` and ``mask`` stay lists (masks differ in size)."""
    masks = [it["mask"] for it in items] if "mask" in items[0] else None
    batch = default_collate([{k: v for k, v in it.items() if k != "mask"} for it in items])
    if masks is not None:
        batch["mask"] = masks
    return batch
