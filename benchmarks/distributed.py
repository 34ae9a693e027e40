"""Scaling of ``seco train`` and ``seco export-masks`` from 1 to N processes (torchrun; gloo on CPU, NCCL on GPU).

    python -m benchmarks.distributed                         # CPU: 1 vs 2 processes, demo preset, 12 steps
    python -m benchmarks.distributed --steps 30 --crop 224
    python -m benchmarks.distributed --device cuda --procs 4 --preset voc --steps 30   # a machine with 4 GPUs

Every run is the real command a user would start (``python -m seco_labels.cli ...`` or ``torchrun
--standalone --nproc_per_node N -m seco_labels.cli ...``), on the bundled demo images, with the same global batch
(strong scaling: the N processes split the batch the one process trains on). Measured in the same invocation:

- **train**: median seconds per step over the steps after ``--warmup`` (from ``metrics.jsonl``, rank 0's wall
  time of the step including the gradient all-reduce);
- **export**: the export's total seconds (``export_<split>.json``, rank 0's, including the final merge of the
  parts into one HDF5 file) on the demo training split.

On CPU, the baseline is one process with one thread per process-to-be (``OMP_NUM_THREADS=1``) and, for a
like-for-like use of the machine's cores, one process with N threads. Read **speed-up** (baseline time / time)
and **efficiency** (speed-up / N). On GPU each process drives one GPU and the baseline is one process on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from seco_labels.config import get_preset
from seco_labels.config_io import config_to_dict


def _cmd(procs: int, *args: str) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "seco_labels.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
            "-m", "seco_labels.cli", *args]


def _run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")


def _step_seconds(run: Path, warmup: int) -> float:
    times = [r["time"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if "loss" in r and r["step"] >= warmup]
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=2, help="processes of the distributed runs (N)")
    ap.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3, help="first steps left out of the median")
    ap.add_argument("--batch-size", type=int, default=4, help="global batch (a multiple of --procs)")
    ap.add_argument("--crop", type=int, default=None, help="training crop (default: the preset's)")
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args()

    cfg = get_preset(args.preset)
    if args.preset != "demo":
        cfg.data.root = str(get_preset("demo").data.root)
        cfg.data.train_split = "train"
    cfg.data.batch_size = args.batch_size
    cfg.data.num_workers = 0
    cfg.model.backbone_weights = "random"  # timing: the weights' values do not matter, and nothing downloads
    if args.crop:
        cfg.data.crop_size = args.crop
    # every term of the objective active from the first step: the scaling of the whole step is what counts
    for name in ("ptc", "lig", "lil", "seg", "reg"):
        getattr(cfg.loss, name).start = 0
    cfg.model.proto_start = 0
    cfg.model.reservoir_size = args.batch_size * (2 + cfg.decompose.num_local_crops) * 8
    cfg.train.iters, cfg.train.val_every, cfg.train.ckpt_every = args.steps, 0, args.steps
    cfg.train.device = args.device

    n = args.procs
    gpu = args.device.startswith("cuda")
    modes = [("1 process, 1 thread" if not gpu else "1 process, 1 GPU", 1, 1)]
    if not gpu:
        modes.append((f"1 process, {n} threads", 1, n))
    modes.append((f"{n} processes, 1 thread each" if not gpu else f"{n} processes, 1 GPU each", n, 1))

    rows = []
    with tempfile.TemporaryDirectory(prefix="seco-bench-ddp-") as tmp:
        cfg_file = Path(tmp) / "cfg.yaml"
        cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
        for i, (label, procs, threads) in enumerate(modes):
            run = Path(tmp) / f"run{i}"
            print(f"train: {label} ...", file=sys.stderr, flush=True)
            _run(_cmd(procs, "train", "--config", str(cfg_file), "--out", str(run), "--quiet"), threads)
            row = {"mode": label, "train_s": _step_seconds(run, args.warmup)}
            if not args.no_export:
                art = Path(tmp) / f"art{i}"
                print(f"export: {label} ...", file=sys.stderr, flush=True)
                _run(_cmd(procs, "export-masks", "--checkpoint", str(run / "last.pt"), "--split", "train",
                          "--out", str(art), "--device", args.device, "--num-workers", "0", "--quiet"), threads)
                summary = json.loads((art / "export_train.json").read_text())
                row["export_s"], row["images"] = summary["seconds"]["total"], summary["images"]
            rows.append(row)

    base = rows[0]
    print(f"\n{args.preset} preset, {cfg.model.backbone} @ {cfg.data.crop_size} px, global batch {args.batch_size}, "
          f"{args.steps} steps (median of steps >= {args.warmup}), device {args.device}\n")
    print("| mode | train s/step | train img/s | speed-up | efficiency | export s | export img/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for row, (_, procs, threads) in zip(rows, modes):
        workers = max(procs, threads)
        up = base["train_s"] / row["train_s"]
        cells = [row["mode"], f"{row['train_s']:.3f}", f"{args.batch_size / row['train_s']:.2f}", f"{up:.2f}x",
                 f"{up / workers:.0%}"]
        if "export_s" in row:
            eup = base["export_s"] / row["export_s"]
            cells += [f"{row['export_s']:.1f}", f"{row['images'] / row['export_s']:.2f}", f"{eup:.2f}x"]
        else:
            cells += ["-", "-", "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
