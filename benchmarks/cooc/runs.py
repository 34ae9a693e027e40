"""One seed end to end (:func:`run`) and the ablation over seeds (:func:`ablate`), both resumable: a stage whose
output exists is skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.ablation import AblationSpec, run_one
from seco_labels.artifacts import open_split
from seco_labels.io import atomic_write_text

from .dataset import generate, mirrors
from .scores import baselines, context_spread, localisation
from .segmenters import fit_segmenter
from .spec import STAGE1_IMAGES, RunSpec
from .stage1 import pretrain
from .tables import ablation_row, write_ablation


def activity_counts(metrics_log: Path) -> dict:
    """What each of SeCo's mechanisms did in a run, from its ``metrics.jsonl`` (one record per step; the counts are
    :data:`seco_labels.method.objective.COUNT_KEYS`): ``steps_logged``, ``steps_with_rectification``, and per
    count its ``steps`` (the steps its mechanism ran), ``total`` and ``per_100_steps`` (over those steps; None
    for a mechanism that never ran, or a log written before the count existed)."""
    from seco_labels.method.objective import COUNT_KEYS

    steps = [json.loads(line) for line in metrics_log.read_text().splitlines() if line.strip()]
    steps = [r for r in steps if "loss" in r]  # train records, not validation's
    out: dict = {"steps_logged": len(steps),
                 "steps_with_rectification": sum(1 for r in steps if (r.get("crops_rectified") or 0) +
                                                 (r.get("background_rectified") or 0) > 0)}
    for key in COUNT_KEYS:
        values = [r[key] for r in steps if r.get(key) is not None]
        total = int(sum(values))
        out[key] = {"steps": len(values), "total": total,
                    "per_100_steps": round(100 * total / len(values), 1) if values else None}
    return out


#: keys a finished result holds: one without them was written by an older version and is scored again (its
#: finished stages are kept)
RESULT_KEYS = ("activity",)


def _wanted_keys(spec: RunSpec) -> tuple[str, ...]:
    """The keys a finished result of ``spec`` holds (:data:`RESULT_KEYS` and those of its optional steps)."""
    return (*RESULT_KEYS, *(["seg_val_miou"] if spec.seg_iters else []), *(["context"] if spec.context else []))


def run(spec: RunSpec, out: Path, *, seed: int = 0, variant: str = "full") -> dict:
    """One seed end to end, resumable (each stage is skipped when its output exists): generate ``OUT/data`` (or
    use ``spec.data``), stage 1 ``OUT/weights.pt``, SeCo ``variant`` from those weights and its export of the train
    split (:func:`benchmarks.ablation.run_one`, in ``OUT/<variant>/seed<S>``), then ``OUT/result_<variant>.json``:
    the export's CAM/pseudo-mask mIoU and FP/TP, the trivial baselines, the ratio to the best of them, the CAM
    ROC-AUC, the co-occurrence confusion and what each mechanism did (:func:`activity_counts`); with
    ``spec.context``, the context class's spread (:func:`~benchmarks.cooc.scores.context_spread`, val scored
    on the SeCo decoder's masks of ``seco segment``, in ``OUT/<variant>/seed<S>/seg``). ``spec.seg_iters`` > 0 adds the
    segmenter step (:func:`fit_segmenter`), on the pseudo masks (``OUT/<variant>/seed<S>/seg-pseudo``) and on the
    GT (``OUT/seg-gt``, shared by the variants): val mIoU of both, the gap, and the co-occurrence confusion on val.
    """
    out = Path(out)
    result_file = out / f"result_{variant}.json"
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if all(k in done for k in _wanted_keys(spec)):
            return done
    data, weights = spec.data or out / "data", out / "weights.pt"
    if not (data / "cooc.json").is_file():
        generate(list(spec.sources), data, **spec.generate_kwargs(seed))
    if not weights.is_file():
        stage1 = pretrain(data, weights, backbone="vit_tiny_patch16_224", backbone_kwargs=spec.backbone_kwargs,
                          steps=spec.pretrain_steps, batch_size=STAGE1_IMAGES // (spec.mosaic * spec.mosaic),
                          lr=spec.pretrain_lr, seed=seed, device=spec.device, mosaic=spec.mosaic)
        atomic_write_text(out / "pretrain.json", json.dumps(stage1, indent=2))
    names = ["background", *json.loads((data / "cooc.json").read_text())["classes"]]
    mirror = mirrors(data)  # else SeCo neither trains on nor exports flipped views
    unmirrored = [] if mirror else ["data.flip_p=0", "data.strong_flip_p=0", "cam.flip=false"]
    sets = (f"model.backbone_kwargs={json.dumps(spec.backbone_kwargs)}", f"data.class_names={json.dumps(names)}",
            f"data.num_classes={len(names)}", *unmirrored, *spec.extra_sets)
    seco = AblationSpec(out=out, data_root=str(data), preset="demo", split="train", eval_split="train",
                        iters=spec.iters, crop=spec.size, backbone_weights=str(weights), sets=sets,
                        device=spec.device, export_flip=mirror, val_split="val" if spec.context else "")
    scores = run_one(seco, variant, seed, spec.threads)
    folder = out / variant / f"seed{seed}"
    art = folder / "art"
    trivial = baselines(data, "train")
    stage1_file = out / "pretrain.json"
    result = {**scores, "baselines": trivial, **localisation(data, art, "train", list(spec.pairs)),
              "activity": activity_counts(folder / "run" / "metrics.jsonl"),
              "mask_miou_over_best_trivial": round(scores["mask_miou"] / trivial["best_trivial"], 3)
              if trivial["best_trivial"] else None,
              "pretrain": json.loads(stage1_file.read_text()) if stage1_file.is_file() else None,
              "code": code_version()}
    if spec.context:  # val through the SeCo decoder (run_one's seco segment): no tags to hide A's absence
        result["context"] = context_spread(data, spec.context, open_split(art, "train").masks.load_mask,
                                           lambda i: np.asarray(Image.open(folder / "seg" / "masks_val" / f"{i}.png")))
    if spec.seg_iters:
        kw = dict(pairs=list(spec.pairs), iters=spec.seg_iters, crop=spec.size, threads=spec.threads,
                  device=spec.device)
        gt = fit_segmenter(data, "gt", out / "seg-gt", **kw)
        pseudo = fit_segmenter(data, str(art), folder / "seg-pseudo", **kw)
        result.update(seg_val_miou=pseudo["val_miou"], seg_gt_val_miou=gt["val_miou"],
                      seg_gap=round(gt["val_miou"] - pseudo["val_miou"], 4),
                      seg_cooc_confusion=pseudo["cooc_confusion"],
                      seg_cooc_confusion_mean=pseudo["cooc_confusion_mean"],
                      seg_gt_cooc_confusion_mean=gt["cooc_confusion_mean"])
    atomic_write_text(result_file, json.dumps(result, indent=2))
    return result


def code_version() -> str | None:
    """The commit of the checkout the benchmark runs from (``git describe --always --dirty``), or None outside git:
    recorded with each result, so that a seed's variants can be checked to share their code (a study spans sessions,
    and a paired difference between two commits also measures the commits)."""
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def ablate(spec: RunSpec, out: Path, *, seeds: list[int], variants: list[str]) -> str:
    """SeCo's ablation on the generated data: for each seed, one dataset and one stage 1 shared by every variant
    (``OUT/seed<S>/``, through :func:`run`, resumable), then the tables of
    :func:`~benchmarks.cooc.tables.write_ablation` (``OUT/ablation.md``, ``.csv``, ``.png``, ``paired.csv``).
    ``full`` runs before ``no_rectify``, which is not trained when ``full``'s rectification never acted
    (:func:`same_as_full`). Returns the markdown."""
    out = Path(out)
    order = sorted(variants, key=lambda v: v == "no_rectify")  # full first: no_rectify may be the same run
    for seed in seeds:
        folder = out / f"seed{seed}"
        for variant in order:
            r = same_as_full(folder, spec) if variant == "no_rectify" else None
            r = r or run(spec, folder, seed=seed, variant=variant)
            print(f"{variant} seed {seed}: mask {100 * r['mask_miou']:.2f}, ratio {r['mask_miou_over_best_trivial']}, "
                  f"confusion {r['cooc_confusion_mean']}", file=sys.stderr, flush=True)
    return write_ablation(ablation_rows(out, seeds, variants), variants, out)


def same_as_full(folder: Path, spec: RunSpec) -> dict | None:
    """``no_rectify``'s result as ``full``'s, written to ``FOLDER/result_no_rectify.json``, when ``full`` has
    finished and its rectification never acted: no step changed a crop's tag or dropped a background crop's
    positives (``activity["steps_with_rectification"] == 0``) while LIL ran. Then rectification left every loss
    as it would be without it, and the runs (same data, stage 1, seed and deterministic steps) are the same run:
    on the study's seed 0 both sets gave every figure equal to the last digit (docs/benchmarks.md). None, and
    nothing written, otherwise: ``no_rectify`` is then trained."""
    full_file = folder / "result_full.json"
    if not full_file.is_file() or (folder / "result_no_rectify.json").is_file():  # a no_rectify result stays
        return None
    full = json.loads(full_file.read_text())
    activity = full.get("activity") or {}
    lil_steps = (activity.get("crops_rectified") or {}).get("steps", 0)
    if activity.get("steps_with_rectification") != 0 or not lil_steps or not all(k in full for k in _wanted_keys(spec)):
        return None
    result = {**full, "variant": "no_rectify",
              "same_run_as": f"full: rectification acted in none of its {lil_steps} LIL steps"}
    atomic_write_text(folder / "result_no_rectify.json", json.dumps(result, indent=2))
    return result


def ablation_rows(out: Path, seeds: list[int], variants: list[str]) -> list[dict]:
    """The table rows (:func:`~benchmarks.cooc.tables.ablation_row`) of the runs of an ablation folder that have
    finished (``OUT/seed<S>/result_<variant>.json``), seed by seed."""
    files = ((seed, variant, Path(out) / f"seed{seed}" / f"result_{variant}.json")
             for seed in seeds for variant in variants)
    return [ablation_row(variant, seed, json.loads(f.read_text())) for seed, variant, f in files if f.is_file()]
