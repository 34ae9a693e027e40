"""The ablation tables of the co-occurrence benchmark: benchmarks/ablation.py's summary, markdown, CSV and plot,
with this benchmark's columns, what each mechanism did, and the per-seed paired differences that give each
mechanism its verdict."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from benchmarks.ablation import draw, format_csv, format_markdown, summarize
from seco_labels.io import atomic_write_text

#: (result key, column, shown in %) of the ablation table, each as mean ± std over seeds
ABLATION_COLUMNS = (("cam_miou", "CAM mIoU", True), ("mask_miou", "pseudo-mask mIoU", True),
                    ("mask_miou_over_best_trivial", "mask / best trivial", False), ("fp_tp", "FP/TP", False),
                    ("cam_roc_auc", "CAM ROC-AUC", False), ("cooc_confusion_mean", "co-occurrence confusion", True),
                    ("seg_val_miou", "segmenter val mIoU", True), ("seg_gap", "gap to GT-trained", True),
                    ("seg_cooc_confusion_mean", "segmenter val confusion", True))
#: the context class's spread (:func:`~benchmarks.cooc.scores.context_spread`), on a set made with ``--context``
CONTEXT_COLUMNS = (("context_train_spread", "A on its context, train", True),
                   ("context_train_fp_tp", "A's FP/TP on background, train", False),
                   ("context_train_other_spread", "other classes on background, train", True),
                   ("context_val_context_fp", "A on context without A, val", True),
                   ("context_val_other_fp", "A on other backgrounds without A, val", True))
#: what each mechanism did, per 100 of the steps it ran (:func:`~benchmarks.cooc.runs.activity_counts`)
ACTIVITY_COLUMNS = (("local_crops_class", "crops tagged a class", False),
                    ("local_crops_background", "crops tagged background", False),
                    ("local_crops_uncertain", "crops left uncertain", False),
                    ("crops_rectified", "crops rectified", False),
                    ("background_rectified", "background crops rectified", False),
                    ("lil_pairs", "LIL positive pairs", False),
                    ("lig_positives", "LIG crop-prototype pairs", False))
#: (variant with, variant without, what the difference measures): the paired differences, seed by seed
CONTRASTS = (("full", "baseline", "SeCo (full - baseline)"), ("no_contrast", "baseline", "PTC"),
             ("full", "no_lil", "LIL"), ("full", "no_lig", "LIG"), ("full", "no_rectify", "rectification"))
#: (result key, label, higher is better) of the paired differences; the first one gives the verdict
PAIRED_METRICS = (("mask_miou", "pseudo-mask mIoU", True), ("cam_miou", "CAM mIoU", True),
                  ("cooc_confusion_mean", "co-occurrence confusion", False),
                  ("context_train_spread", "A on its context, train", False))
#: the extra chart of the plot: ((key, label), ...), title, scale, digits (benchmarks.ablation.draw)
CONFUSION_CHART = ((("cooc_confusion_mean", "pseudo masks, train"), ("seg_cooc_confusion_mean", "segmenter, val")),
                   "co-occurrence confusion of the pairs (%, lower is better), mean ± std", 100.0, 1)


def ablation_row(variant: str, seed: int, result: dict) -> dict:
    """One row of ``ablation.csv``: the :data:`ABLATION_COLUMNS` of a run's result, its best trivial score, its
    :data:`CONTEXT_COLUMNS` (None without a context class) and :data:`ACTIVITY_COLUMNS` (per 100 steps)."""
    context = result.get("context") or {}
    activity = result.get("activity") or {}
    return {"variant": variant, "seed": seed, **{k: result.get(k) for k, _, _ in ABLATION_COLUMNS},
            "best_trivial": result["baselines"]["best_trivial"],
            **{k: context.get(k.removeprefix("context_")) for k, _, _ in CONTEXT_COLUMNS},
            **{k: (activity.get(k) or {}).get("per_100_steps") for k, _, _ in ACTIVITY_COLUMNS}}


def verdict(diffs: list[float], higher_is_better: bool = True) -> str:
    """A mechanism's verdict from its paired differences (one per seed): ``helps`` when the mean is beyond two
    standard errors in the better direction, ``hurts`` beyond two in the worse one, else ``no measurable
    effect``; ``too few seeds`` under two."""
    if len(diffs) < 2:
        return "too few seeds"
    mean, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    if abs(mean) <= 2 * se:
        return "no measurable effect"
    return "helps" if (mean > 0) == higher_is_better else "hurts"


def paired_differences(rows: list[dict]) -> list[dict]:
    """Each contrast of :data:`CONTRASTS` whose two variants ran on the same seeds, for each of
    :data:`PAIRED_METRICS` the runs have: the per-seed differences (with - without), their mean and standard
    error, and the verdict (:func:`verdict`)."""
    by = {(r["variant"], r["seed"]): r for r in rows}
    out = []
    for with_, without, what in CONTRASTS:
        seeds = sorted(s for v, s in by if v == with_ and (without, s) in by)
        for key, label, higher in PAIRED_METRICS:
            diffs = [by[with_, s][key] - by[without, s][key] for s in seeds
                     if by[with_, s].get(key) is not None and by[without, s].get(key) is not None]
            if not diffs:
                continue
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
            out.append({"contrast": what, "with": with_, "without": without, "metric": key, "label": label,
                        "seeds": len(diffs), "diffs": diffs, "mean": statistics.fmean(diffs), "se": se,
                        "verdict": verdict(diffs, higher)})
    return out


def format_paired(paired: list[dict]) -> str:
    """The paired differences as a markdown table (in points of %, a difference of shares)."""
    lines = ["Paired differences, seed by seed (points of %; with - without): a verdict is \"helps\" or \"hurts\" "
             "when the mean is beyond 2 standard errors.", "",
             "| mechanism | with | without | metric | seeds | per seed | mean ± SE | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for p in paired:
        per_seed = ", ".join(f"{100 * d:+.2f}" for d in p["diffs"])
        se = f"{100 * p['se']:.2f}" if math.isfinite(p["se"]) else "n/a"
        lines.append(f"| {p['contrast']} | `{p['with']}` | `{p['without']}` | {p['label']} | {p['seeds']} | "
                     f"{per_seed} | {100 * p['mean']:+.2f} ± {se} | {p['verdict']} |")
    return "\n".join(lines) + "\n"


def read_rows(csv_path: Path) -> list[dict]:
    """The rows of an ``ablation.csv`` (:func:`write_ablation`), numbers as numbers and empty cells as None."""
    def value(v: str) -> object:
        try:
            return int(v) if v.lstrip("-").isdigit() else float(v)
        except ValueError:
            return v or None

    with open(csv_path, newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_ablation(rows: list[dict], variants: list[str], out: Path) -> str:
    """``OUT/ablation.md`` (mean ± std over seeds of :data:`ABLATION_COLUMNS`, of :data:`CONTEXT_COLUMNS` on a
    context set, of :data:`ACTIVITY_COLUMNS`, and the paired differences), ``OUT/ablation.csv`` (``rows``),
    ``OUT/paired.csv`` and ``OUT/ablation.png``; returns the markdown."""
    summary = summarize(rows, variants, ABLATION_COLUMNS)
    parts = [format_markdown(summary, rows, "The pseudo masks of the train split.", ABLATION_COLUMNS)]
    plain = [{k: v for k, v in r.items() if k != "seg_miou"} for r in rows]  # the decoder's column: first table only
    if any(r.get("context_train_spread") is not None for r in rows):
        parts.append(format_markdown(summarize(plain, variants, CONTEXT_COLUMNS), plain,
                                     "The context class A on its context: shares of GT background pixels labelled "
                                     "A (train: pseudo masks; val: the SeCo decoder).", CONTEXT_COLUMNS))
    parts.append(format_markdown(summarize(plain, variants, ACTIVITY_COLUMNS), plain,
                                 "What each mechanism did, per 100 of the steps it ran (local crops: 10 per image).",
                                 ACTIVITY_COLUMNS))
    paired = paired_differences(rows)
    if paired:
        parts.append(format_paired(paired))
        atomic_write_text(out / "paired.csv", format_csv([{**p, "diffs": " ".join(f"{d:.6f}" for d in p["diffs"])}
                                                          for p in paired]))
    table = "\n".join(parts)
    atomic_write_text(out / "ablation.md", table)
    atomic_write_text(out / "ablation.csv", format_csv(rows))
    draw(summary, out / "ablation.png", title="co-occurrence benchmark", extra=(CONFUSION_CHART,))
    return table
