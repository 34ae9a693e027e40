"""A confidence per pseudo mask without ground truth, from what the export already has: the image's CAMs of its
tagged classes, its final mask and the two background thresholds (docs/export.md "Confidence").

For each part c of the image (background, and each tagged class):

- ``margin_c``: the mean, over the pixels the mask gives to c, of how far the pixel is past the score that makes
  it sure, as a share of the room there is: for a class, ``(cam_c - max(high, best other class)) / (1 - high)``;
  for background, ``(low - best class) / low``; each clipped to [0, 1]. A pixel won by a hair (a co-occurring
  class nearly as strong, a CAM near a threshold, or a label PAR carried away from its CAM) counts little.
- ``certainty_c``: the share of c's pixels that the mask decided, ``|mask == c| / (|mask == c| + |uncertain and
  c's|)``; an uncertain (255) pixel is the strongest tagged class's, and every uncertain pixel is background's
  too (it is background under the high threshold and foreground under the low one).
- ``score_c = sqrt(margin_c * certainty_c)``: 0 when either is (a tagged class the mask lost, a part the
  mask left undecided), 1 only for a part that is all decided by a wide margin.

The image's score is the mean of its parts' scores, as a per-image mIoU averages its classes. Background is a part
when the mask has background or uncertain pixels; every tagged class is one, present in the mask or not.
"""

from __future__ import annotations

import numpy as np

from ..artifacts.confidence import MaskConfidence

__all__ = ["CONFIDENCE_SCORE", "mask_confidence"]

#: the name of the formula, recorded as the artifact's ``confidence_score``; a new formula gets a new name
CONFIDENCE_SCORE = "margin-certainty-v1"

#: below this, a threshold leaves no room to be past it (the margin's denominator)
_EPS = 1e-6


def mask_confidence(cam: np.ndarray, keys: np.ndarray, mask: np.ndarray, *, high: float, low: float,
                    ignore_index: int = 255) -> MaskConfidence:
    """The confidence of one pseudo mask (module docstring).

    Args:
        cam: (k, H, W) float CAMs in [0, 1] of the image's k tagged classes, at the mask's size.
        keys: (k,) class indices 1..K-1 of the channels (ascending, as the export writes them).
        mask: (H, W) integer pseudo mask: 0 background, the classes of ``keys``, ``ignore_index`` uncertain.
        high, low: the background thresholds the mask was made with (``0 <= low <= high <= 1``).

    Returns:
        A :class:`MaskConfidence` whose values lie in [0, 1].
    """
    cam = np.asarray(cam, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64)
    mask = np.asarray(mask)
    if cam.ndim != 3 or cam.shape[0] != len(keys) or cam.shape[1:] != mask.shape:
        raise ValueError(f"cam {cam.shape}, keys {keys.shape} and mask {mask.shape} disagree; expected (k, H, W), "
                         "(k,) and (H, W)")
    k = len(keys)
    uncertain = mask == ignore_index
    n_uncertain = int(uncertain.sum())
    # per pixel: the best class's channel and score, and the best score among the other channels
    if k:
        order = np.argsort(-cam, axis=0, kind="stable")[:2]  # (min(k, 2), H, W)
        best = np.take_along_axis(cam, order[:1], 0)[0]  # (H, W)
        second = np.take_along_axis(cam, order[1:2], 0)[0] if k > 1 else np.zeros_like(best)
        winner = order[0]  # (H, W) channel index
    else:
        best = np.zeros(mask.shape, np.float32)
    scored_keys, scores = [], []

    bg = mask == 0
    if bg.any() or n_uncertain:
        margin = _mean(np.clip((low - best[bg]) / max(low, _EPS), 0, 1))
        scored_keys.append(0)
        scores.append(_score(margin, int(bg.sum()), n_uncertain))
    for i, key in enumerate(keys.tolist()):
        own = mask == key
        rival = np.where(winner[own] == i, second[own], best[own])  # the best other class at c's pixels
        margin = _mean(np.clip((cam[i][own] - np.maximum(rival, high)) / max(1.0 - high, _EPS), 0, 1))
        scored_keys.append(int(key))
        scores.append(_score(margin, int(own.sum()), int((uncertain & (winner == i)).sum())))
    image = float(np.mean(scores)) if scores else 0.0  # no part to judge (a mask of no tagged class): not trusted
    return MaskConfidence(image=image, keys=tuple(scored_keys), classes=tuple(scores))


def _mean(values: np.ndarray) -> float:
    """The mean in float64, 0 for no value."""
    return float(values.mean(dtype=np.float64)) if values.size else 0.0


def _score(margin: float, decided: int, undecided: int) -> float:
    """``sqrt(margin * certainty)`` with certainty = decided / (decided + undecided); 0 for a part with no pixel."""
    total = decided + undecided
    return float(np.sqrt(margin * decided / total)) if total else 0.0
