"""Confusion-matrix segmentation metrics over K classes with an ignore index.

Convention: mIoU is the mean IoU over the classes that occur in the ground truth or the prediction
(a class absent from both has no defined IoU and is left out, reported as NaN per class).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """Accumulates a (K, K) matrix, rows = ground truth, columns = prediction; pixels of ``ignore_index``
    in the ground truth (and predictions outside 0..K-1) are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> None:
        """gt, pred: integer label maps of the same shape."""
        gt = torch.as_tensor(gt).reshape(-1).long().cpu()
        pred = torch.as_tensor(pred).reshape(-1).long().cpu()
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth has {gt.numel()} pixels but prediction has {pred.numel()}")
        k = self.num_classes
        keep = (gt != self.ignore_index) & (gt >= 0) & (gt < k) & (pred >= 0) & (pred < k)
        self.mat += torch.bincount(gt[keep] * k + pred[keep], minlength=k * k).reshape(k, k).numpy()

    def iou(self) -> np.ndarray:
        """(K,) per-class IoU, NaN for classes absent from both GT and prediction."""
        tp = np.diag(self.mat).astype(np.float64)
        union = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.mat.sum()
        return float(np.trace(self.mat) / total) if total else float("nan")
