"""The ablation table of the co-occurrence benchmark: benchmarks/ablation.py's summary, markdown, CSV and plot,
with this benchmark's columns."""

from __future__ import annotations

from pathlib import Path

from benchmarks.ablation import draw, format_csv, format_markdown, summarize
from seco_labels.io import atomic_write_text

#: (result key, column, shown in %) of the ablation table, each as mean ± std over seeds
ABLATION_COLUMNS = (("cam_miou", "CAM mIoU", True), ("mask_miou", "pseudo-mask mIoU", True),
                    ("mask_miou_over_best_trivial", "mask / best trivial", False), ("fp_tp", "FP/TP", False),
                    ("cam_roc_auc", "CAM ROC-AUC", False), ("cooc_confusion_mean", "co-occurrence confusion", True),
                    ("crops_rectified", "crops rectified", False),
                    ("seg_val_miou", "segmenter val mIoU", True), ("seg_gap", "gap to GT-trained", True),
                    ("seg_cooc_confusion_mean", "segmenter val confusion", True))
#: the extra chart of the plot: ((key, label), ...), title, scale, digits (benchmarks.ablation.draw)
CONFUSION_CHART = ((("cooc_confusion_mean", "pseudo masks, train"), ("seg_cooc_confusion_mean", "segmenter, val")),
                   "co-occurrence confusion of the pairs (%, lower is better), mean ± std", 100.0, 1)


def ablation_row(variant: str, seed: int, result: dict) -> dict:
    """One row of ``ablation.csv``: the :data:`ABLATION_COLUMNS` of a run's result, and its best trivial score."""
    return {"variant": variant, "seed": seed, **{k: result.get(k) for k, _, _ in ABLATION_COLUMNS},
            "crops_rectified": result["rectification"]["crops_rectified"],
            "best_trivial": result["baselines"]["best_trivial"]}


def write_ablation(rows: list[dict], variants: list[str], out: Path) -> str:
    """``OUT/ablation.md`` (mean ± std over seeds of :data:`ABLATION_COLUMNS`), ``OUT/ablation.csv`` (``rows``)
    and ``OUT/ablation.png``; returns the table."""
    summary = summarize(rows, variants, ABLATION_COLUMNS)
    table = format_markdown(summary, rows, "The pseudo masks of the train split.", ABLATION_COLUMNS)
    atomic_write_text(out / "ablation.md", table)
    atomic_write_text(out / "ablation.csv", format_csv(rows))
    draw(summary, out / "ablation.png", title="co-occurrence benchmark", extra=(CONFUSION_CHART,))
    return table
