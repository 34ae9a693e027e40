"""How well the export's confidence (docs/export.md "Confidence") ranks the pseudo masks of a split that has GT:
Spearman rank correlations with the per-image pseudo-mask IoU, and the IoU of the masks that a confidence filter
(``seco fit-segmenter --keep-share``) would keep.

    seco export-masks --checkpoint RUN/last.pt --split train --out ART
    python -m benchmarks.confidence --art ART --split train [--data-root DIR] [--json OUT.json]

Rows (per image: the image's score against its mIoU over the classes in its GT or mask, as ``seco evaluate``
scores it; per class: each (image, tagged class) score against that class's IoU in that image):

- ``confidence``: the export's score;
- ``1 - uncertain share``: the baseline, the share of the mask's pixels that are not 255 (what ``seco report``
  ranked by before the score);
- ``keep share F``: the mean per-image IoU of the F most confident images (F = 1: every image), and the mean of
  the F images with the highest IoU (the best a ranking could keep) for scale.

Ranks are average ranks (ties share theirs), computed with numpy: Spearman's rho is the Pearson correlation of the
ranks. The interval is a 90% percentile bootstrap over images (2000 resamples, seed 0): on a few dozen images it is
wide. Images whose IoU is undefined (no class in GT or mask) are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from seco_labels.artifacts import open_split
from seco_labels.evaluation.evaluate import evaluate_masks
from seco_labels.evaluation.metrics import ConfusionMatrix

KEEP_SHARES = (0.25, 0.5, 0.75, 1.0)


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of ``x``: tied values share the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return sums[inverse] / counts[inverse]


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equal-length samples; NaN for fewer than 3 or a constant one."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3:
        return float("nan")
    ra, rb = ranks(a) - (len(a) + 1) / 2, ranks(b) - (len(b) + 1) / 2
    den = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / den) if den else float("nan")


def bootstrap_interval(a, b, n: int = 2000, level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile-bootstrap interval of :func:`spearman` over resampled pairs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    draws = [spearman(a[idx], b[idx]) for idx in rng.integers(0, len(a), size=(n, len(a)))]
    lo, hi = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def measure(art: str, split: str, data_root: str | None = None, layout: str | None = None) -> dict:
    """The figures of the module docstring for ``split`` of ``art``."""
    source = open_split(art, split)
    conf = source.confidences()
    if not conf:
        raise SystemExit(f"{art} records no confidence for split {split!r}: export it with this seco-labels")
    bound = source.dataset.max_side or 0
    gt = source.open_images(root=data_root, layout=layout, max_side=0, require_masks=True)
    ids = [i for i in gt.ids if i in conf]
    result = evaluate_masks(source.masks, gt, ids=ids, max_side=bound)
    ignore = int(source.record.get("ignore_index", 255))
    rows, class_rows = [], []
    for i in ids:
        iou = result.per_image.get(i)
        if iou is None:
            continue
        gt_mask = gt.load_mask(i)
        mask = source.masks.load_mask(i)
        if mask.shape != gt_mask.shape:  # a bounded export: scored at the GT's size, as evaluate does
            from PIL import Image
            mask = np.asarray(Image.fromarray(mask).resize(gt_mask.shape[::-1], Image.NEAREST))
        rows.append((i, conf[i].image, 1.0 - float((mask == ignore).mean()), iou))
        cm = ConfusionMatrix(gt.num_classes, ignore)
        cm.update(gt_mask, mask)
        per_class = cm.iou()
        for key, score in conf[i].by_class().items():
            if key > 0 and not np.isnan(per_class[key]):
                class_rows.append((score, float(per_class[key])))
    if not rows:
        raise SystemExit(f"no image of split {split!r} has a defined IoU")
    _, score, decided, iou = (np.array(c) for c in zip(*rows))
    keep = {}
    for share in KEEP_SHARES:
        n = max(1, math.ceil(round(share * len(rows), 6)))
        by_score = np.argsort(-score, kind="stable")[:n]
        keep[share] = {"images": n, "mean_iou": float(iou[by_score].mean()),
                       "best_possible": float(np.sort(iou)[::-1][:n].mean())}
    cs, ci = (np.array(c) for c in zip(*class_rows)) if class_rows else (np.zeros(0), np.zeros(0))
    return {
        "art": str(art), "split": split, "images": len(rows), "classes": len(class_rows),
        "score": source.record.get("confidence_score"),
        "spearman_image": spearman(score, iou), "spearman_image_90": bootstrap_interval(score, iou),
        "spearman_uncertain_baseline": spearman(decided, iou),
        "spearman_class": spearman(cs, ci), "keep": keep,
        "mean_confidence": float(score.mean()), "mean_iou": float(iou.mean()),
    }


def table(r: dict) -> str:
    def f(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:+.3f}"

    lines = [
        f"split {r['split']} of {r['art']}: {r['images']} images with a defined IoU, {r['classes']} (image, class) "
        f"pairs; score {r['score']}; mean confidence {r['mean_confidence']:.3f}, mean per-image IoU "
        f"{100 * r['mean_iou']:.1f}",
        "",
        "| ranking | Spearman rho with the IoU |",
        "|---|---|",
        f"| confidence, per image | {f(r['spearman_image'])} (90%: {f(r['spearman_image_90'][0])} to "
        f"{f(r['spearman_image_90'][1])}) |",
        f"| 1 - uncertain share, per image (baseline) | {f(r['spearman_uncertain_baseline'])} |",
        f"| confidence, per (image, class) | {f(r['spearman_class'])} |",
        "",
        "| keep share | images | mean IoU of the most confident | best possible (top IoU) |",
        "|---|---|---|---|",
    ]
    for share, k in r["keep"].items():
        lines.append(f"| {share:g} | {k['images']} | {100 * k['mean_iou']:.1f} | {100 * k['best_possible']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--art", required=True, help="artifact folder of seco export-masks (--out)")
    ap.add_argument("--split", required=True, help="the exported split (must have GT masks)")
    ap.add_argument("--data-root", help="dataset root with the GT (default: the export's)")
    ap.add_argument("--layout", help="dataset layout (default: the export's)")
    ap.add_argument("--json", help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    r = measure(args.art, args.split, args.data_root, args.layout)
    print(table(r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=2, default=str)


if __name__ == "__main__":
    main(sys.argv[1:])
