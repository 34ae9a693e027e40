"""Optional dense-CRF refinement (seco_labels.method.refine.dense_crf / crf_refine_mask; docs/design.md §4) on real VOC
images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from seco_labels.errors import CrfUnavailableError, SecoError
from seco_labels.method.refine import crf_refine_mask, dense_crf

X = 255
# Real VOC2012 images in voc-mini with their classes (background, bottle, person) and (bg, chair, person, sofa).
IMAGES = ("2011_000003", "2011_000006")


def load(voc_root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB image and (H, W) uint8 GT mask (255 = void boundary)."""
    image = np.array(Image.open(voc_root / "JPEGImages" / f"{name}.jpg").convert("RGB"))
    gt = np.array(Image.open(voc_root / "SegmentationClassAug" / f"{name}.png"))
    return image, gt


def grow_foreground(gt: np.ndarray, radius: int) -> np.ndarray:
    """GT with each object grown by ``radius`` px (max filter), void set to background: a band of wrong labels
    around every object edge, the typical error of an upsampled CAM."""
    lab = torch.from_numpy(np.where(gt == X, 0, gt).astype(np.float32))[None, None]
    return F.max_pool2d(lab, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy().astype(np.uint8)


def one_hot(mask: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(C, H, W) float32 one-hot of ``mask`` over ``classes`` (channel i = classes[i])."""
    return (mask[None] == classes[:, None, None]).astype(np.float32)


def blur(probs: np.ndarray, radius: int) -> np.ndarray:
    """Box-blurred (C, H, W) probabilities, still summing to 1: soft, edge-unaware maps like upsampled CAMs."""
    t = F.pad(torch.from_numpy(probs)[None], [radius] * 4, mode="replicate")
    return F.avg_pool2d(t, 2 * radius + 1, stride=1)[0].numpy()


def accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of non-void GT pixels where ``pred`` equals the GT."""
    valid = gt != X
    return float((pred[valid] == gt[valid]).mean())


def test_missing_package_raises_install_hint(monkeypatch, voc_root):
    image, gt = load(voc_root, IMAGES[0])
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import` raise ImportError
    probs = one_hot(np.where(gt == X, 0, gt), np.array([0, 5, 15]))
    with pytest.raises(CrfUnavailableError, match=r'pip install -e "\.\[crf\]" in your clone') as info:
        dense_crf(image, probs)
    assert isinstance(info.value, SecoError) and isinstance(info.value, ImportError)
    with pytest.raises(CrfUnavailableError, match=r'pip install -e "\.\[crf\]" in your clone'):
        crf_refine_mask(image, gt, 21)


def test_bad_shapes_are_rejected_before_import():
    image = np.zeros((8, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        dense_crf(image.astype(np.float32), np.full((2, 8, 10), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) = \(8, 11\)"):
        dense_crf(image, np.full((2, 8, 11), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"labels \[21\] outside 0..20"):
        crf_refine_mask(image, np.full((8, 10), 21, np.uint8), 21)


def test_dense_crf_shapes_dtype_and_normalised(voc_root):
    pytest.importorskip("pydensecrf.densecrf")
    image, gt = load(voc_root, IMAGES[0])
    classes = np.array([0, 5, 15])
    probs = blur(one_hot(grow_foreground(gt, 12), classes), 12).astype(np.float64)  # float64 input is accepted
    out = dense_crf(image, probs)
    assert out.shape == probs.shape and out.dtype == np.float32
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    assert np.abs(out - probs).max() > 0.1  # the CRF did change the maps


def test_dense_crf_keeps_confident_unary_and_moves_weak_one(voc_root):
    pytest.importorskip("pydensecrf.densecrf")
    image, gt = load(voc_root, IMAGES[0])
    classes = np.array([0, 5, 15])
    label = np.searchsorted(classes, grow_foreground(gt, 12))  # (H, W) channel index, wrong near edges

    def probs_at(conf: float) -> np.ndarray:
        p = np.full((3,) + label.shape, (1 - conf) / 2, np.float32)
        np.put_along_axis(p, label[None], conf, axis=0)
        return p

    # -log(1e-3) = 6.9 outweighs the pairwise weights (4 + 1): every pixel keeps its label, even the wrong ones.
    assert np.array_equal(dense_crf(image, probs_at(0.999)).argmax(axis=0), label)
    # The same labels held at 0.5 are moved by the image: the CRF is not a no-op.
    assert (dense_crf(image, probs_at(0.5)).argmax(axis=0) != label).mean() > 0.01


@pytest.mark.parametrize("name", IMAGES)
def test_dense_crf_snaps_blurred_probabilities_to_edges(voc_root, name):
    pytest.importorskip("pydensecrf.densecrf")
    image, gt = load(voc_root, name)
    classes = np.unique(gt[gt != X])
    probs = blur(one_hot(grow_foreground(gt, 12), classes), 12)
    before = accuracy(classes[probs.argmax(axis=0)], gt)
    after = accuracy(classes[dense_crf(image, probs).argmax(axis=0)], gt)
    # Measured: 0.920 -> 0.973 (2011_000003), 0.887 -> 0.961 (2011_000006).
    assert after > before + 0.03, (before, after)


@pytest.mark.parametrize("name", IMAGES)
def test_crf_refine_mask_fixes_band_of_wrong_labels(voc_root, name):
    pytest.importorskip("pydensecrf.densecrf")
    image, gt = load(voc_root, name)
    noisy = grow_foreground(gt, 12)
    refined = crf_refine_mask(image, noisy, 21)
    assert refined.shape == gt.shape and refined.dtype == np.uint8
    assert set(np.unique(refined)) <= set(np.unique(noisy))  # only classes present in the input
    before, after = accuracy(noisy, gt), accuracy(refined, gt)
    # Measured: 0.919 -> 0.967 (2011_000003), 0.881 -> 0.960 (2011_000006).
    assert after > before + 0.03, (before, after)


def test_crf_refine_mask_keeps_ignore_pixels(voc_root):
    pytest.importorskip("pydensecrf.densecrf")
    image, gt = load(voc_root, IMAGES[1])
    noisy = grow_foreground(gt, 12)
    rng = np.random.default_rng(0)
    noisy[rng.random(noisy.shape) < 0.1] = X  # scattered undecided pixels
    noisy[100:160, 200:300] = X  # and a block, straddling an object edge
    refined = crf_refine_mask(image, noisy, 21)
    assert np.array_equal(refined == X, noisy == X)
    assert set(np.unique(refined[refined != X])) <= set(np.unique(noisy[noisy != X]))
    assert (refined != noisy).mean() > 0.01  # labelled pixels were refined


def test_crf_refine_mask_single_class_is_a_copy(voc_root):
    pytest.importorskip("pydensecrf.densecrf")
    image, _ = load(voc_root, IMAGES[0])
    mask = np.full(image.shape[:2], 15, np.uint8)
    mask[:40] = X
    refined = crf_refine_mask(image, mask, 21)
    assert np.array_equal(refined, mask) and refined is not mask
