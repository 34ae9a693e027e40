"""SeCo's ablation on any dataset: train variants with identical seeds and data, export, evaluate, tabulate.

    # the offline proxy committed to docs/benchmarks.md (2-core CPU, random-init tiny ViT, voc-mini)
    python benchmarks/ablation.py --out ablation/voc-mini --data-root ../shared/data/voc-mini --preset demo \\
        --seeds 0 1 2 --jobs 2

    # the paper's ablation: one GPU, full VOC, ImageNet ViT-B/16 weights (docs/reproduce.md)
    python benchmarks/ablation.py --out ablation/voc --data-root VOC2012 --preset voc --split train_aug \\
        --eval-split train --val-split val --seg-crf --device cuda --seeds 0 1 2

Variants (each is a config switch of the model and losses, :data:`VARIANTS`; no code fork):

- ``baseline``: classification + aux classification + segmentation (with its CRF-energy regulariser) only;
- ``no_lig``, ``no_lil``: full SeCo without the local-to-global / local-to-local contrast;
- ``no_rectify``: full SeCo without the rectification of noisy crop tags;
- ``full``: the preset as it is;
- ``no_contrast`` (not run by default): SeCo without LIG and LIL, so ``baseline`` + PTC: what PTC alone adds.

Every (variant, seed) runs the real commands: ``seco train`` -> ``seco export-masks --split EVAL`` -> ``seco
evaluate --cams``, in ``OUT/<variant>/seed<k>/``; finished steps are kept, so an interrupted ablation resumes.
Reported per variant as mean ± std (sample std) over seeds:

- **CAM mIoU**: raw multi-scale CAMs at the best background threshold of the sweep (``cams_metrics_<split>.json``);
- **pseudo-mask mIoU**: the exported masks after PAR and the background thresholds; their uncertain pixels are
  skipped, as in ``seco evaluate`` (``metrics_<split>.json``);
- **FP/TP**: the confusion ratio of the pseudo masks (SeCo Table 3; lower is better);
- with ``--val-split``: the **decoder mIoU** on that split, from ``seco segment`` (multi-scale + flip, with
  ``--seg-crf`` the dense CRF: the paper's protocol; its ablation reports this on VOC val).

Writes ``OUT/ablation.md`` (table + settings), ``OUT/ablation.csv`` (one row per run) and ``OUT/ablation.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from seco_labels.config import get_preset
from seco_labels.evaluation.plots import draw_grouped_bars, nice_ceil
from seco_labels.io import atomic_path, atomic_write_text

#: name -> (description, config overrides on top of the preset)
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "baseline": ("cls + aux + seg only", {"loss.ptc.weight": 0, "loss.lig.weight": 0, "loss.lil.weight": 0}),
    "no_lig": ("SeCo without LIG", {"loss.lig.weight": 0}),
    "no_lil": ("SeCo without LIL", {"loss.lil.weight": 0}),
    "no_rectify": ("SeCo without rectification", {"loss.rectify": False}),
    "full": ("SeCo", {}),
    "no_contrast": ("SeCo without LIG and LIL", {"loss.lig.weight": 0, "loss.lil.weight": 0}),
}
#: the published ablation's variants, run when none are named
DEFAULT_VARIANTS = ("baseline", "no_lig", "no_lil", "no_rectify", "full")
#: (key, label, is a fraction shown in %)
METRICS = (("cam_miou", "CAM mIoU", True), ("mask_miou", "pseudo-mask mIoU", True), ("fp_tp", "FP/TP", False))


def _seco(*args: str) -> list[str]:
    return [sys.executable, "-m", "seco_labels.cli", *args]


def _run(cmd: list[str], threads: int, log: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed (exit {res.returncode}); see {log}")


def run_one(args: argparse.Namespace, variant: str, seed: int, threads: int) -> dict:
    """Train, export and evaluate one (variant, seed); returns its scores (cached in ``result.json``)."""
    folder = Path(args.out) / variant / f"seed{seed}"
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    log, run, art = folder / "log.txt", folder / "run", folder / "art"
    sets = [f"{k}={json.dumps(v)}" for k, v in VARIANTS[variant][1].items()] + list(args.set)
    if args.crop:
        sets.append(f"data.crop_size={args.crop}")
    train = ["train", "--preset", args.preset, "--data-root", args.data_root, "--split", args.split, "--val-split", "",
             "--seed", str(seed), "--out", str(run), "--device", args.device, "--quiet", "--resume", "auto"]
    for opt, value in (("--config", args.config), ("--iters", args.iters), ("--backbone-weights", args.backbone_weights)):
        if value is not None:
            train += [opt, str(value)]
    for s in sets:
        train += ["--set", s]
    t0 = time.perf_counter()
    _run(_seco(*train), threads, log)
    t1 = time.perf_counter()
    _run(_seco("export-masks", "--checkpoint", str(run / "last.pt"), "--split", args.eval_split, "--out", str(art),
               "--device", args.device, "--num-workers", "0", "--quiet",
               *([] if args.export_flip else ["--no-flip"])), threads, log)
    _run(_seco("evaluate", "--pred", str(art), "--split", args.eval_split, "--cams", "--quiet"), threads, log)
    masks = json.loads((art / f"metrics_{args.eval_split}.json").read_text())
    cams = json.loads((art / f"cams_metrics_{args.eval_split}.json").read_text())
    seg_miou = None
    if args.val_split:  # the paper's metric: the decoder, multi-scale + flip (+ CRF), on the val split
        seg = folder / "seg"
        _run(_seco("segment", "--checkpoint", str(run / "last.pt"), "--split", args.val_split, "--out", str(seg),
                   "--device", args.device, "--quiet", *(["--crf"] if args.seg_crf else [])), threads, log)
        _run(_seco("evaluate", "--pred", str(seg), "--split", args.val_split, "--quiet"), threads, log)
        seg_miou = json.loads((seg / f"metrics_{args.val_split}.json").read_text())["miou"]
    result = {
        "variant": variant, "seed": seed, "cam_miou": cams["miou"], "cam_threshold": cams["cam_threshold"],
        "mask_miou": masks["miou"], "fp_tp": masks["fp_tp"], "fp_tp_bg": masks["fp_tp_bg"],
        "fp_tp_fg": masks["fp_tp_fg"], "seg_miou": seg_miou,
        "train_seconds": round(t1 - t0, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(result_file, json.dumps(result, indent=2))
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict], variants: list[str],
              columns: tuple[tuple[str, str, bool], ...] = METRICS) -> dict[str, dict[str, tuple[float, float]]]:
    """variant -> metric of ``columns`` -> (mean, sample std) over its seeds (NaN when no seed has a value)."""
    out = {}
    for v in variants:
        rows = [r for r in results if r["variant"] == v]
        out[v] = {}
        for key, _, _ in columns:
            values = [r[key] for r in rows if r.get(key) is not None]
            out[v][key] = _mean_std(values) if values else (float("nan"), float("nan"))
        segs = [r["seg_miou"] for r in rows if r.get("seg_miou") is not None]
        if segs:
            out[v]["seg_miou"] = _mean_std(segs)
    return out


def format_markdown(summary: dict, results: list[dict], settings: str,
                    columns: tuple[tuple[str, str, bool], ...] = METRICS) -> str:
    """The table of ``summarize``: one row per variant, ``columns`` (key, label, shown in %) as mean ± std."""
    seeds = sorted({r["seed"] for r in results})
    seg = all("seg_miou" in m for m in summary.values())
    labels = [f"{label} (%)" if pct else label for _, label, pct in columns]
    head = "| variant | what | " + " | ".join(labels) + " |" + (" decoder mIoU (%) |" if seg else "")
    lines = [f"Mean ± std over seeds {', '.join(map(str, seeds))}. {settings}", "", head,
             "|---|---|" + "---|" * len(columns) + ("---|" if seg else "")]
    for v, m in summary.items():
        cells = [f"{100 * m[k][0]:.2f} ± {100 * m[k][1]:.2f}" if pct else f"{m[k][0]:.3f} ± {m[k][1]:.3f}"
                 for k, _, pct in columns]
        if seg:
            cells.append(f"{100 * m['seg_miou'][0]:.2f} ± {100 * m['seg_miou'][1]:.2f}")
        lines.append(f"| `{v}` | {VARIANTS[v][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    keys = list(results[0])
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(results)
    return buf.getvalue()


def draw(summary: dict, path: Path, title: str, extra: tuple = ()) -> None:
    """mIoU chart (CAM, pseudo mask) above the FP/TP chart, then the ``extra`` charts, each ``(((key, label), ...),
    title, scale, digits)``; bars = variants, whiskers = std."""
    names = list(summary)
    charts = []
    labelled = tuple((k, label) for k, label, _ in METRICS)

    def shown(x: float) -> float | None:  # a figure no seed has (FP/TP without a true positive) is NaN: no bar
        return x if math.isfinite(x) else None

    for columns, chart_title, scale, digits in (
        (labelled[:2], f"{title}: mIoU (%), mean ± std", 100.0, 1),
        (labelled[2:], "FP/TP (lower is better), mean ± std", 1.0, 2),
        *extra,
    ):
        groups = [(label, [shown(summary[v][k][0]) for v in names]) for k, label in columns]
        errors = [[shown(summary[v][k][1]) for v in names] for k, _ in columns]
        ends = [summary[v][k][0] + summary[v][k][1] for v in names for k, _ in columns]
        top = max([e for e in ends if math.isfinite(e)], default=1.0)  # and no part in the axis
        img, _ = draw_grouped_bars(groups, names, title=chart_title, errors=errors, axis_max=nice_ceil(top * 1.1),
                                   scale=scale, digits=digits)
        charts.append(img)
    canvas = Image.new("RGB", (max(c.width for c in charts), sum(c.height for c in charts)), "white")
    y = 0
    for c in charts:
        canvas.paste(c, (0, y))
        y += c.height
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="results folder (resumable)")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--config", default=None, help="config file on top of the preset")
    ap.add_argument("--split", default="train", help="training split")
    ap.add_argument("--eval-split", default=None, help="split exported and scored (default: the training split)")
    ap.add_argument("--val-split", default="", help="split (with GT) on which the decoder is scored with seco segment "
                    "(the paper's table: val); default none")
    ap.add_argument("--seg-crf", action="store_true", help="dense CRF in seco segment (the paper's protocol)")
    ap.add_argument("--no-export-flip", dest="export_flip", action="store_false",
                    help="export without the flipped CAMs (data whose classes are not mirror-symmetric)")
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default: the preset's)")
    ap.add_argument("--crop", type=int, default=None, help="training crop size (default: the preset's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    ap.add_argument("--backbone-weights", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (CPU: threads are shared out)")
    args = ap.parse_args(argv)
    args.eval_split = args.eval_split or args.split
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    todo = [(v, s) for s in args.seeds for v in variants]
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, args, v, s, threads): (v, s) for v, s in todo}
        for n, fut in enumerate(cf.as_completed(futures), 1):
            v, s = futures[fut]
            r = fut.result()
            print(f"[{n}/{len(todo)}] {v} seed {s}: CAM {100 * r['cam_miou']:.2f}, mask {100 * r['mask_miou']:.2f}, "
                  f"FP/TP {r['fp_tp']:.3f} ({r['total_seconds']:.0f} s)", file=sys.stderr, flush=True)
    results = [run_one(args, v, s, threads) for v, s in todo]  # cached: reads result.json
    summary = summarize(results, variants)
    settings = (f"Preset `{args.preset}`, training split `{args.split}`, scored on `{args.eval_split}` of "
                f"`{args.data_root}`, {args.iters or 'preset'} iterations"
                + (f", crop {args.crop}" if args.crop else "") + (f", overrides {args.set}" if args.set else "")
                + (f", decoder scored on `{args.val_split}`" + (" with CRF" if args.seg_crf else "") if args.val_split else "")
                + f", backbone weights `{args.backbone_weights or get_preset(args.preset).model.backbone_weights}`"
                + f"; {time.perf_counter() - started:.0f} s wall.")
    atomic_write_text(out / "ablation.md", format_markdown(summary, results, settings))
    atomic_write_text(out / "ablation.csv", format_csv(results))
    draw(summary, out / "ablation.png", title=f"{args.preset} on {Path(args.data_root).name}")
    print((out / "ablation.md").read_text())


if __name__ == "__main__":
    main()
