"""Confusion-matrix segmentation metrics over K classes with an ignore index.

The matrix ``mat[g, p]`` counts pixels of ground-truth class ``g`` predicted as class ``p``. Pixels whose
ground truth is ``ignore_index`` are skipped; pixels whose *prediction* is ``ignore_index`` (pseudo masks leave
uncertain pixels unlabelled) are skipped too, and counted in ``pred_ignored`` so the label coverage can be
reported. For class c: TP = ``mat[c, c]``, FP = column sum - TP, FN = row sum - TP.

mIoU conventions (all three agree once every class occurs in the ground truth, as on a full VOC split):

- :meth:`ConfusionMatrix.miou` (the default, ``summary()["miou"]``): mean IoU over the classes present in the
  ground truth **or** the prediction. A class absent from both has no defined IoU (NaN) and is left out. This is
  what the WSSS literature computes: IoU over all K classes from the accumulated confusion matrix, then
  ``np.nanmean`` (SeCo, ToCo, AFA, MCTformer ``scores``).
- :meth:`ConfusionMatrix.miou_gt` (``summary()["miou_gt"]``): mean IoU over the classes present in the ground
  truth only; a class that is only predicted (a pure false positive, IoU 0) does not lower it.

The FP/TP confusion ratio (SeCo paper, Table 3) is defined in :meth:`ConfusionMatrix.fp_tp`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["ConfusionMatrix"]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _plain(x: float) -> float | None:
    """A JSON-safe float: NaN and inf become None."""
    x = float(x)
    return x if math.isfinite(x) else None


class ConfusionMatrix:
    """Accumulates a (K, K) int64 matrix, rows = ground truth, columns = prediction.

    Pixels of ``ignore_index`` in the ground truth, and predictions outside 0..K-1 (``ignore_index`` included),
    are skipped; the latter (on non-ignored ground truth) are counted in :attr:`pred_ignored`.

    Args:
        num_classes: K, background included.
        ignore_index: the "no label" value of both masks.
        background: index of the background class (excluded from the FP/TP ratio), or None when the label set
            has no background class.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, *, background: int | None = 0) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if background is not None and not 0 <= background < num_classes:
            raise ValueError(f"background index {background} is outside 0..{num_classes - 1}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.background = background
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.pred_ignored = 0  #: labelled GT pixels whose prediction is ignore_index (or out of range)

    @classmethod
    def from_matrix(cls, mat: np.ndarray, ignore_index: int = 255, *, background: int | None = 0) -> ConfusionMatrix:
        """A ConfusionMatrix holding a copy of the (K, K) counts ``mat`` (rows GT, columns prediction)."""
        mat = np.asarray(mat)
        if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
            raise ValueError(f"a confusion matrix must be square (K, K), got shape {mat.shape}")
        cm = cls(mat.shape[0], ignore_index, background=background)
        cm.mat += mat.astype(np.int64)
        return cm

    def update(self, gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> None:
        """gt, pred: integer label maps of the same shape."""
        gt = (gt.detach().cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)).reshape(-1)
        pred = (pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)).reshape(-1)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth has {gt.size} pixels but prediction has {pred.size}")
        k = self.num_classes
        gt = gt.astype(np.int64, copy=False)  # numpy, not torch: several times faster on small CPU boxes
        pred = pred.astype(np.int64, copy=False)
        labelled = (gt != self.ignore_index) & (gt >= 0) & (gt < k)
        keep = labelled & (pred >= 0) & (pred < k)
        self.pred_ignored += int(np.count_nonzero(labelled)) - int(np.count_nonzero(keep))
        self.mat += np.bincount(gt[keep] * k + pred[keep], minlength=k * k).reshape(k, k)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (same K) into this one; returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.mat += other.mat
        self.pred_ignored += other.pred_ignored
        return self

    # -- per-class counts ----------------------------------------------------------------------------------
    def tp(self) -> np.ndarray:
        """(K,) pixels of class c predicted as c."""
        return np.diag(self.mat).astype(np.int64)

    def fp(self) -> np.ndarray:
        """(K,) pixels predicted as c whose ground truth is another class."""
        return self.mat.sum(0) - self.tp()

    def fn(self) -> np.ndarray:
        """(K,) pixels of class c predicted as another class."""
        return self.mat.sum(1) - self.tp()

    def gt_pixels(self) -> np.ndarray:
        """(K,) labelled ground-truth pixels per class (rows)."""
        return self.mat.sum(1)

    def pred_pixels(self) -> np.ndarray:
        """(K,) predicted pixels per class (columns)."""
        return self.mat.sum(0)

    # -- per-class scores ----------------------------------------------------------------------------------
    def iou(self) -> np.ndarray:
        """(K,) TP / (TP + FP + FN), NaN for classes absent from both GT and prediction."""
        tp = self.tp()
        return _ratio(tp, tp + self.fp() + self.fn())

    def precision(self) -> np.ndarray:
        """(K,) TP / (TP + FP), NaN for classes never predicted."""
        return _ratio(self.tp(), self.pred_pixels())

    def recall(self) -> np.ndarray:
        """(K,) TP / (TP + FN), NaN for classes absent from the ground truth."""
        return _ratio(self.tp(), self.gt_pixels())

    def fp_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(K,) false positives of each class split by their ground truth: ``(fp_bg, fp_fg)``.

        ``fp_bg[c]`` = pixels of GT background predicted as c (``mat[bg, c]``), ``fp_fg[c]`` = pixels of another
        foreground GT class predicted as c; ``fp_bg + fp_fg == fp``. Without a background class ``fp_bg`` is 0.
        For the background class itself both parts are reported as its plain FP in ``fp_fg``.
        """
        fp = self.fp()
        fp_bg = np.zeros_like(fp)
        if self.background is not None:
            fp_bg = self.mat[self.background].copy()
            fp_bg[self.background] = 0
        return fp_bg, fp - fp_bg

    def fp_tp_per_class(self) -> np.ndarray:
        """(K,) FP_c / TP_c; NaN when TP_c = 0 (inf would say nothing more than "all predictions wrong")."""
        return _ratio(self.fp(), self.tp())

    def fp_tp(self) -> dict[str, float]:
        """The FP/TP confusion ratio of the SeCo paper (Table 3), over the foreground classes.

        With F the foreground classes (every class but ``background``; all K when there is none):

        - ``fp_tp`` = sum_{c in F} FP_c / sum_{c in F} TP_c, where FP_c counts pixels predicted as c whose
          ground truth is any other labelled class (background or another foreground class) and TP_c pixels
          predicted as c whose ground truth is c. Ignored pixels (GT or prediction 255) count in neither.
        - ``fp_tp_bg`` = sum_F FP_c(GT background) / sum_F TP_c: over-extension into the background.
        - ``fp_tp_fg`` = sum_F FP_c(GT other foreground) / sum_F TP_c: confusion between (co-occurring)
          foreground classes. ``fp_tp = fp_tp_bg + fp_tp_fg``.

        Lower is better; a perfect prediction gives 0. NaN when no foreground pixel is a true positive.
        """
        fg = np.ones(self.num_classes, dtype=bool)
        if self.background is not None:
            fg[self.background] = False
        fp_bg, fp_fg = self.fp_split()
        tp = float(self.tp()[fg].sum())
        if tp == 0:
            return {"fp_tp": float("nan"), "fp_tp_bg": float("nan"), "fp_tp_fg": float("nan")}
        return {
            "fp_tp": float(self.fp()[fg].sum()) / tp,
            "fp_tp_bg": float(fp_bg[fg].sum()) / tp,
            "fp_tp_fg": float(fp_fg[fg].sum()) / tp,
        }

    # -- means ---------------------------------------------------------------------------------------------
    def miou(self) -> float:
        """Mean IoU over the classes present in the GT or the prediction (nanmean over K; the WSSS convention)."""
        return _nanmean(self.iou())

    def miou_gt(self) -> float:
        """Mean IoU over the classes present in the ground truth only."""
        present = self.gt_pixels() > 0
        return float(self.iou()[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct pixels / labelled pixels (GT and prediction both labelled)."""
        total = self.mat.sum()
        return float(np.trace(self.mat) / total) if total else float("nan")

    def mean_precision(self) -> float:
        return _nanmean(self.precision())

    def mean_recall(self) -> float:
        return _nanmean(self.recall())

    # -- reports -------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, float | int | None]:
        """Scalar metrics as JSON-safe numbers (NaN -> None).

        Keys: ``miou`` (GT-or-prediction classes), ``miou_gt`` (GT classes), ``pixel_accuracy``,
        ``mean_precision``, ``mean_recall``, ``fp_tp``, ``fp_tp_bg``, ``fp_tp_fg``, ``num_classes``,
        ``classes_in_gt``, ``labelled_pixels`` (GT labelled and predicted), ``pred_ignored_pixels`` and
        ``pred_ignored_fraction`` (of the labelled GT pixels, the prediction left unlabelled).
        """
        labelled = int(self.mat.sum())
        gt_labelled = labelled + self.pred_ignored
        out: dict[str, float | int | None] = {
            "miou": _plain(self.miou()),
            "miou_gt": _plain(self.miou_gt()),
            "pixel_accuracy": _plain(self.pixel_accuracy()),
            "mean_precision": _plain(self.mean_precision()),
            "mean_recall": _plain(self.mean_recall()),
        }
        out.update({k: _plain(v) for k, v in self.fp_tp().items()})
        out.update({
            "num_classes": self.num_classes,
            "classes_in_gt": int((self.gt_pixels() > 0).sum()),
            "labelled_pixels": labelled,
            "pred_ignored_pixels": int(self.pred_ignored),
            "pred_ignored_fraction": _plain(self.pred_ignored / gt_labelled if gt_labelled else float("nan")),
        })
        return out

    def per_class_rows(self, class_names: Sequence[str] | None = None) -> list[dict[str, object]]:
        """One dict per class: ``index, name, iou, precision, recall, fp_tp, tp, fp, fp_bg, fp_fg, fn,
        gt_pixels, pred_pixels`` (scores as floats, NaN -> None)."""
        k = self.num_classes
        if class_names is None:
            class_names = [str(i) for i in range(k)]
        if len(class_names) != k:
            raise ValueError(f"{len(class_names)} class names given for {k} classes")
        iou, prec, rec, ratio = self.iou(), self.precision(), self.recall(), self.fp_tp_per_class()
        tp, fp, fn = self.tp(), self.fp(), self.fn()
        fp_bg, fp_fg = self.fp_split()
        gt_n, pred_n = self.gt_pixels(), self.pred_pixels()
        return [
            {
                "index": c, "name": str(class_names[c]),
                "iou": _plain(iou[c]), "precision": _plain(prec[c]), "recall": _plain(rec[c]),
                "fp_tp": _plain(ratio[c]),
                "tp": int(tp[c]), "fp": int(fp[c]), "fp_bg": int(fp_bg[c]), "fp_fg": int(fp_fg[c]), "fn": int(fn[c]),
                "gt_pixels": int(gt_n[c]), "pred_pixels": int(pred_n[c]),
            }
            for c in range(k)
        ]
