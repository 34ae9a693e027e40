"""Scores of a generated split and of an export of it: the trivial tag-only baselines a pseudo label must beat, the
threshold-free CAM ROC-AUC, the co-occurrence confusion of each pair, and how far a context class spreads onto the
background it stands on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .dataset import load_split


def baselines(data: Path, split: str, sizes: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> dict:
    """mIoU of tag-only masks on a split (what pseudo labels must beat): all background; the whole image as the
    image's first tag; a centred square of each side fraction in ``sizes`` as the first tag (the best one reported
    too). The mIoU is seco evaluate's (classes in the GT or the prediction)."""
    from seco_labels.evaluation.metrics import ConfusionMatrix

    _, _, tags, masks = load_split(data, split)
    k = tags.shape[1] + 1
    first = torch.where(tags.any(1), tags.argmax(1) + 1, torch.zeros((), dtype=torch.long))  # (N,) class index
    s = masks.shape[-1]

    def score(pred: torch.Tensor) -> float:
        cm = ConfusionMatrix(k)
        cm.update(masks.long(), pred.long())
        return round(float(cm.miou()), 4)

    out = {"all_background": score(torch.zeros_like(masks)),
           "whole_image": score(first[:, None, None].expand_as(masks))}
    boxes = {}
    for frac in sizes:
        side = max(1, round(frac * s))
        lo = (s - side) // 2
        pred = torch.zeros_like(masks)
        pred[:, lo:lo + side, lo:lo + side] = first[:, None, None].to(pred.dtype)
        boxes[frac] = score(pred)
    best = max(boxes, key=boxes.get)
    out.update({f"centre_box_{frac}": v for frac, v in boxes.items()})
    out.update({"best_centre_box": boxes[best], "best_centre_box_side": best,
                "best_trivial": max(out["all_background"], out["whole_image"], boxes[best])})
    return out



def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney form of the ROC-AUC)."""
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(pos) * len(neg)))


def localisation(data: Path, art: Path, split: str, pairs: list[tuple[str, str]]) -> dict:
    """Threshold-free and co-occurrence scores of an export of a generated split:

    - ``cam_roc_auc``: mean over (image, tagged class) of the ROC-AUC of the class's CAM against its own GT pixels
      (0.5: no localisation);
    - ``cooc_confusion`` and ``cooc_confusion_mean``: :func:`pair_confusion` of the pseudo masks.
    """
    from seco_labels.artifacts import open_split

    exported = open_split(art, split)
    cams = exported.require_cams()
    ids, _, _, masks = load_split(data, split)
    names = exported.dataset.class_names or ()
    aucs = []
    for image_id, gt in zip(ids, masks.numpy()):
        cam, keys = cams.load_cam(image_id)
        labelled = gt != 255
        for channel, k in zip(cam, keys):
            own = gt == k
            if own.any() and (labelled & ~own).any():
                aucs.append(roc_auc(channel[own], channel[labelled & ~own]))
    preds = (exported.masks.load_mask(i) for i in ids)
    return {"cam_roc_auc": round(float(np.mean(aucs)), 4) if aucs else None, "cam_roc_auc_n": len(aucs),
            **pair_confusion(masks.numpy(), preds, list(names), pairs)}


def pair_confusion(gts, preds, names: list[str], pairs: list[tuple[str, str]]) -> dict:
    """Co-occurrence confusion of predicted masks ``preds`` against ``gts`` (two iterables of (H, W) class maps;
    ``names[k]`` is class k): ``cooc_confusion`` per pair A:B, on the images whose GT holds both, the share of B's
    pixels labelled A (``b_as_a``) and of A's labelled B; ``cooc_confusion_mean`` averages both over the pairs."""
    index = {n: k for k, n in enumerate(names)}
    counts = {f"{a}:{b}": np.zeros(4) for a, b in pairs}  # B as A, B pixels, A as B, A pixels
    for gt, pred in zip(gts, preds):
        for a, b in pairs:
            ka, kb = index[a], index[b]
            if (gt == ka).any() and (gt == kb).any():
                counts[f"{a}:{b}"] += [((gt == kb) & (pred == ka)).sum(), (gt == kb).sum(),
                                       ((gt == ka) & (pred == kb)).sum(), (gt == ka).sum()]
    confusion = {pair: {"b_as_a": round(c[0] / c[1], 4) if c[1] else None,
                        "a_as_b": round(c[2] / c[3], 4) if c[3] else None} for pair, c in counts.items()}
    shares = [v for c in confusion.values() for v in c.values() if v is not None]
    return {"cooc_confusion": confusion, "cooc_confusion_mean": round(float(np.mean(shares)), 4) if shares else None}


def context_spread(data: Path, context: str, train_pred: Callable[[str], np.ndarray],
                   val_pred: Callable[[str], np.ndarray]) -> dict:
    """How far the context class A spreads onto its context (the green backgrounds it always stands on in train,
    docs/benchmarks.md "The context set"). ``train_pred`` / ``val_pred`` give an image id's predicted (H, W) class
    map (the pseudo masks of train, a tag-free predictor on val). Shares of GT background pixels (class 0):

    - ``train_spread``: on the train images holding A (on green), the share labelled A;
    - ``train_fp_tp``: there, A's false positives on the background over its true positives;
    - ``train_other_spread``: on the train images without A, the share labelled any class (the reference);
    - ``val_context_fp``: on val images without A on green backgrounds, the share labelled A;
    - ``val_other_fp``: the same on val images without A on other backgrounds (the reference).
    """
    kinds = json.loads((data / "backgrounds.json").read_text())
    names = ["background", *json.loads((data / "cooc.json").read_text())["classes"]]
    k = names.index(context)
    sums = dict.fromkeys(("spread", "spread_n", "tp", "other", "other_n", "val_green", "val_green_n",
                          "val_other", "val_other_n"), 0)
    for split, predict in (("train", train_pred), ("val", val_pred)):
        ids, _, _, masks = load_split(data, split)
        for image_id, gt in zip(ids, masks.numpy()):
            pred = predict(image_id)
            bg, has_a = gt == 0, bool((gt == k).any())
            as_a = int((bg & (pred == k)).sum())
            if split == "train" and has_a:
                sums["spread"] += as_a
                sums["spread_n"] += int(bg.sum())
                sums["tp"] += int(((gt == k) & (pred == k)).sum())
            elif split == "train":
                sums["other"] += int((bg & (pred > 0) & (pred != 255)).sum())
                sums["other_n"] += int(bg.sum())
            elif not has_a:
                key = "val_green" if kinds[split][image_id] == "green" else "val_other"
                sums[key] += as_a
                sums[f"{key}_n"] += int(bg.sum())

    def share(num: str, den: str) -> float | None:
        return round(sums[num] / sums[den], 4) if sums[den] else None

    return {"context_class": context, "train_spread": share("spread", "spread_n"),
            "train_fp_tp": share("spread", "tp"), "train_other_spread": share("other", "other_n"),
            "val_context_fp": share("val_green", "val_green_n"), "val_other_fp": share("val_other", "val_other_n")}
