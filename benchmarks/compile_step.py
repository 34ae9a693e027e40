"""What ``train.compile`` (regional torch.compile of the ViT blocks) does to a SeCo training step: compile time, step
against eager, and the loss terms of one step from the same weights and batch.

    python -m benchmarks.compile_step                                  # demo preset (tiny ViT, 128 px) on CPU
    python -m benchmarks.compile_step --preset voc --device cuda --amp bf16

Both runs build the trainer from the same seed (same weights) and train their first step on the same batch of
the bundled demo images, with every loss term on: that step's terms are compared, and the compiled run's first
step (which compiles) is timed apart. After ``--warmup`` untimed steps each, the two runs alternate ``--steps``
timed steps on that batch (so that both share whatever else loads the machine); the medians are compared, and
any graph compiled during the timed steps is counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from seco_labels.config import SecoConfig, get_preset  # noqa: E402
from seco_labels.method.objective import HOST_KEYS, LOSS_TERMS, StepOutput, steady_step  # noqa: E402
from seco_labels.runtime.device import batch_to_device  # noqa: E402
from seco_labels.training.trainer import Trainer  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "seco_labels" / "demo_data" / "voc-demo"


def bench_config(preset: str, device: str, amp: str, compile: bool) -> SecoConfig:
    """``preset`` on the bundled demo images with random weights."""
    cfg = get_preset(preset)
    cfg.data.root, cfg.data.layout, cfg.data.train_split, cfg.data.val_split = str(DEMO), "voc", "train", ""
    cfg.data.num_workers = 0
    cfg.model.backbone_weights = "random"
    cfg.train.device, cfg.train.amp, cfg.train.compile = device, amp, compile
    return cfg.validate()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(trainer: Trainer, batch: dict) -> tuple[StepOutput, float]:
    _sync(trainer.device)
    start = time.perf_counter()
    out = trainer.train_step(batch)
    _sync(trainer.device)
    return out, time.perf_counter() - start


def start_run(cfg: SecoConfig, run_dir: Path) -> tuple[Trainer, dict, StepOutput, float]:
    """A trainer at the first step with every term on (the final CAM for the ROI: the steady state of a run), its
    batch, and its first step's output and seconds."""
    torch.manual_seed(0)
    trainer = Trainer(cfg, run_dir, quiet=True)
    trainer.step = steady_step(cfg)
    batch = batch_to_device(next(iter(trainer.train_loader())), trainer.device, HOST_KEYS)
    return (trainer, batch, *timed_step(trainer, batch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="config preset (default demo: tiny ViT at 128 px)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--amp", default="off", help="train.amp of both runs (default off: fp32)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first, per run")
    args = parser.parse_args(argv)
    print(f"# compile_step: {args.preset} preset, device {args.device}, amp {args.amp}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory(prefix="seco-compile-") as tmp:
        runs = {compile: start_run(bench_config(args.preset, args.device, args.amp, compile), Path(tmp) / str(compile))
                for compile in (False, True)}
        for trainer, batch, _, _ in runs.values():
            for _ in range(args.warmup):
                trainer.train_step(batch)
        graphs = counters["stats"]["unique_graphs"]
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.steps):  # interleaved: both runs share whatever else loads the machine
            for compile, (trainer, batch, _, _) in runs.items():
                times[compile].append(timed_step(trainer, batch)[1])
        recompiled = counters["stats"]["unique_graphs"] - graphs
    (_, _, eager, eager_first), (_, _, comp, comp_first) = runs[False], runs[True]
    eager_s, comp_s = statistics.median(times[False]), statistics.median(times[True])
    print(f"\n| run | first step, s | step, s (median of {args.steps}) |")
    print("|---|---:|---:|")
    print(f"| eager | {eager_first:.2f} | {eager_s:.3f} |")
    print(f"| train.compile=true | {comp_first:.2f} (compiles) | {comp_s:.3f} |")
    print(f"\ncompiled / eager step time: {comp_s / eager_s:.2f}x; graphs compiled during the timed steps: "
          f"{recompiled}")
    print("\n| term (first step) | eager | compiled | relative difference |")
    print("|---|---:|---:|---:|")
    for name in LOSS_TERMS:
        a, b = eager.terms[name], comp.terms[name]
        if a is not None and b is not None:
            print(f"| {name} | {a:.6f} | {b:.6f} | {abs(a - b) / max(abs(a), 1e-12):.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
