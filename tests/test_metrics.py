"""Confusion-matrix metrics on tiny hand-built matrices with hand-computed results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seco_labels.evaluation.metrics import ConfusionMatrix

# rows = GT (bg, a, b), columns = prediction
MAT = np.array([
    [8, 2, 0],  # bg: 8 right, 2 predicted as a
    [1, 5, 2],  # a: 1 as bg, 5 right, 2 as b
    [0, 0, 4],  # b: all right
])


def test_per_class_scores_of_a_hand_built_matrix():
    cm = ConfusionMatrix.from_matrix(MAT)
    # IoU = TP / (row + col - TP)
    assert cm.iou() == pytest.approx([8 / (10 + 9 - 8), 5 / (8 + 7 - 5), 4 / (4 + 6 - 4)])
    assert cm.precision() == pytest.approx([8 / 9, 5 / 7, 4 / 6])
    assert cm.recall() == pytest.approx([8 / 10, 5 / 8, 4 / 4])
    assert cm.miou() == pytest.approx((8 / 11 + 5 / 10 + 4 / 6) / 3)
    assert cm.pixel_accuracy() == pytest.approx(17 / 22)


def test_fp_tp_ratio_sums_foreground_fp_over_foreground_tp_and_splits_bg_vs_fg():
    cm = ConfusionMatrix.from_matrix(MAT)
    # a: FP = 2 (GT bg); b: FP = 2 (GT a). TP over fg = 5 + 4.
    r = cm.fp_tp()
    assert r["fp_tp"] == pytest.approx(4 / 9)
    assert r["fp_tp_bg"] == pytest.approx(2 / 9)
    assert r["fp_tp_fg"] == pytest.approx(2 / 9)
    fp_bg, fp_fg = cm.fp_split()
    assert fp_bg.tolist() == [0, 2, 0] and fp_fg.tolist() == [1, 0, 2]
    assert cm.fp_tp_per_class() == pytest.approx([1 / 8, 2 / 5, 2 / 4])


def test_fp_tp_without_background_class_counts_every_class():
    cm = ConfusionMatrix.from_matrix(MAT, background=None)
    assert cm.fp_tp()["fp_tp"] == pytest.approx((1 + 2 + 2) / (8 + 5 + 4))
    assert cm.fp_tp()["fp_tp_bg"] == 0.0


def test_perfect_prediction_scores_one_and_zero_confusion():
    cm = ConfusionMatrix.from_matrix(np.diag([5, 3, 0, 7]))
    s = cm.summary()
    assert s["miou"] == s["miou_gt"] == s["pixel_accuracy"] == 1.0
    assert s["mean_precision"] == s["mean_recall"] == 1.0
    assert s["fp_tp"] == 0.0 and s["classes_in_gt"] == 3
    rows = cm.per_class_rows(["bg", "a", "b", "c"])
    assert rows[2]["iou"] is None and rows[2]["precision"] is None  # absent class: NaN -> None, not 0


def test_miou_conventions_differ_only_on_predicted_only_classes():
    # class 2 is never in the GT but is predicted once: IoU 0, counted by miou, not by miou_gt
    cm = ConfusionMatrix.from_matrix(np.array([[4, 0, 1], [0, 5, 0], [0, 0, 0]]))
    assert cm.iou() == pytest.approx([4 / 5, 1.0, 0.0])
    assert cm.miou() == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    assert cm.miou_gt() == pytest.approx((0.8 + 1.0) / 2)
    assert math.isnan(cm.recall()[2]) and cm.precision()[2] == 0.0


def test_update_skips_gt_ignore_and_counts_unlabelled_predictions():
    cm = ConfusionMatrix(3)
    gt = np.array([[0, 1, 2, 255], [1, 1, 2, 0]], dtype=np.uint8)
    pred = np.array([[0, 1, 255, 2], [1, 2, 2, 255]], dtype=np.uint8)
    cm.update(gt, pred)
    assert cm.mat.tolist() == [[1, 0, 0], [0, 2, 1], [0, 0, 1]]
    assert cm.pred_ignored == 2  # GT 2 and GT 0 left unlabelled; the GT-255 pixel is not counted
    s = cm.summary()
    assert s["labelled_pixels"] == 5 and s["pred_ignored_pixels"] == 2
    assert s["pred_ignored_fraction"] == pytest.approx(2 / 7)
    # tensors give the same counts
    cm2 = ConfusionMatrix(3)
    cm2.update(torch.from_numpy(gt), torch.from_numpy(pred))
    assert (cm2.mat == cm.mat).all()


def test_empty_matrix_is_nan_not_error_and_summary_is_json_safe():
    cm = ConfusionMatrix(3)
    assert math.isnan(cm.miou()) and math.isnan(cm.miou_gt()) and math.isnan(cm.fp_tp()["fp_tp"])
    s = cm.summary()
    assert s["miou"] is None and s["fp_tp"] is None and s["pred_ignored_fraction"] is None


def test_merge_adds_counts_and_checks_class_count():
    a = ConfusionMatrix.from_matrix(MAT)
    a.merge(ConfusionMatrix.from_matrix(MAT))
    assert (a.mat == 2 * MAT).all()
    with pytest.raises(ValueError, match="4-class"):
        a.merge(ConfusionMatrix(4))


def test_per_class_rows_name_count_must_match():
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        ConfusionMatrix(3).per_class_rows(["a", "b"])
