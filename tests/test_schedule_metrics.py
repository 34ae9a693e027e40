"""The lr schedule (pure function of the step) and the confusion matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seco_labels.config import OptimConfig
from seco_labels.evaluation.metrics import ConfusionMatrix
from seco_labels.training.schedule import lr_multiplier


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1e-6),  # warm-up starts at warmup_ratio
        (750, 1 - 0.5 * (1 - 1e-6)),  # half-way through the linear warm-up
        (1500, (1 - 1500 / 20000) ** 0.9),  # poly decay from the end of warm-up
        (10000, 0.5**0.9),
        (19999, (1 / 20000) ** 0.9),
        (20000, 0.0),
    ],
)
def test_lr_multiplier_table(step, expected):
    assert lr_multiplier(step, OptimConfig(), 20000) == pytest.approx(expected, rel=1e-9)


def test_lr_is_monotone_after_warmup():
    values = [lr_multiplier(s, OptimConfig(), 20000) for s in range(1500, 20000, 500)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_confusion_matrix_hand_values():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(gt, pred)
    # class 0: tp 1, fp 2 (gt 2 and gt 1 predicted 0), fn 1 -> 1/4
    # class 1: tp 2, fp 1, fn 1 -> 2/4 ; class 2: tp 1, fp 0, fn 1 -> 1/2
    np.testing.assert_allclose(cm.iou(), [0.25, 0.5, 0.5])
    assert cm.miou() == pytest.approx(1.25 / 3)
    assert cm.mat.sum() == 7  # the ignore pixel is skipped


def test_confusion_matrix_absent_class_is_nan_and_left_out_of_miou():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 1]))
    iou = cm.iou()
    assert iou[0] == 1.0 and iou[1] == 1.0 and math.isnan(iou[2]) and math.isnan(iou[3])
    assert cm.miou() == 1.0
