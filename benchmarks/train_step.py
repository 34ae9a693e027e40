"""Time and peak memory of one SeCo training step, per phase, against a classification-only step.

    python benchmarks/train_step.py                 # tiny ViT at 224 on CPU, then ViT-B/16 at 448 (1 CPU step)
    python benchmarks/train_step.py --only tiny --steps 5

For each config it prints a table of phases (CAM inference, crop sampling, student forward, teacher forward,
losses, backward, optimiser step) with mean time and peak memory, then the ratio of the whole SeCo step to a
plain classification-only step (encoder + max-pool classifier + multilabel loss + AdamW) of the same backbone and
batch, measured in the same run. It also compares our multi-scale CAM inference (scale 1.0 reused from the
training forward) with the published way (every scale, including 1.0, in separate no-grad passes).

Memory: CUDA peak allocated per phase on GPU; on CPU the process's peak RSS (a high-water mark, so only its
growth is informative).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from seco_labels.cams import multi_scale_cams  # noqa: E402
from seco_labels.config import SecoConfig, get_preset  # noqa: E402
from seco_labels.data import TrainDataset, TrainViews, build_reader  # noqa: E402
from seco_labels.losses import cls_loss  # noqa: E402
from seco_labels.train import Trainer, batch_to_device  # noqa: E402

PHASES = ("cam_inference", "crop_sampling", "student_forward", "teacher_forward", "losses", "backward", "optimizer_step")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc-mini"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PhaseTimer:
    """Accumulates wall time and peak memory per named phase; synchronises CUDA around each phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.time: dict[str, float] = defaultdict(float)
        self.mem: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        self._sync()
        self.time[name] += time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else _rss_mb()
        self.mem[name] = max(self.mem[name], peak)


def bench_config(name: str) -> SecoConfig:
    if name == "tiny":
        cfg = get_preset("demo")
        cfg.data.crop_size = 224
        cfg.decompose.local_crop_size = 64
        cfg.model.proj_hidden = 2048
        cfg.train.device = "cpu"
    else:
        cfg = get_preset("voc")
        cfg.model.reservoir_size = 4608
    cfg.data.root = str(DATA)
    cfg.data.train_split = "train"
    cfg.data.num_workers = 0
    return cfg.validate()


def one_batch(cfg: SecoConfig, index: int) -> dict:
    reader = build_reader(cfg.data.layout, cfg.data.root, cfg.data.train_split, num_classes=cfg.data.num_classes)
    views = TrainViews(cfg.data.crop_size, cfg.data.rescale_range, cfg.data.global_crop_scale, cfg.data.strong_flip_p)
    ds = TrainDataset(reader, views, seed=0)
    items = [ds[(0, (index * cfg.data.batch_size + i) % len(ds))] for i in range(cfg.data.batch_size)]
    return torch.utils.data.default_collate(items)


def time_cls_only(trainer: Trainer, batch: dict, steps: int) -> float:
    """Encoder + classifier + multilabel loss + backward + AdamW step: the plain WSSS baseline."""
    model, opt = trainer.model, trainer.optimizer
    x, tags = batch["image"], batch["tags"]
    timer = PhaseTimer(trainer.device)
    for i in range(steps + 1):
        with timer("warmup" if i == 0 else "step"):
            with trainer._autocast():
                out = model.encoder(x)
                logits = model.classifier(F.adaptive_max_pool2d(out.tokens, 1)).flatten(1)
            loss = cls_loss(logits.float(), tags)
            opt.zero_grad(set_to_none=True)
            trainer.scaler.scale(loss).backward()
            trainer.scaler.step(opt)
            trainer.scaler.update()
    return timer.time["step"] / steps


def time_cam_inference(trainer: Trainer, x: torch.Tensor, steps: int) -> tuple[float, float]:
    """(ours, published-style) seconds per multi-scale CAM computation for the batch x."""
    model, scales = trainer.model, trainer.cfg.cam.scales
    timer = PhaseTimer(trainer.device)
    for _ in range(steps):
        with trainer._autocast():
            with timer("ours"):
                out = model(x)
                multi_scale_cams(model.cams, x, scales, base=(out.cam, out.cam_aux))
            with timer("published"):
                out = model(x)
                multi_scale_cams(model.cams, x, scales)
    return timer.time["ours"] / steps, timer.time["published"] / steps


def run(name: str, steps: int, device_spec: str) -> None:
    cfg = bench_config(name)
    if name == "base":
        cfg.train.device = device_spec
        if not torch.cuda.is_available() or device_spec == "cpu":
            cfg.train.device = "cpu"
            steps = 1  # ViT-B/16 at 448 with batch 4 takes minutes per step on a CPU
    trainer = Trainer(cfg, run_dir="/tmp/seco-bench-unused", quiet=True)
    device = trainer.device
    all_on = max(getattr(cfg.loss, t).start for t in ("cls", "aux", "ptc", "lig", "lil", "seg", "reg"))
    trainer.step = max(all_on, cfg.cam.roi_final_cam_from)
    batch = batch_to_device(one_batch(cfg, 0), device)

    trainer.train_step(batch)  # warm-up: allocator, kernels, lazy init
    timer = PhaseTimer(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with timer("whole_step"):
            trainer.train_step(batch, timer=timer)
    seco_s = timer.time["whole_step"] / steps
    cls_s = time_cls_only(trainer, batch, steps)
    ours, published = time_cam_inference(trainer, batch["image"], max(1, steps))

    mem_unit = "MiB alloc" if device.type == "cuda" else "MiB RSS hwm"
    print(f"\n## {name}: {cfg.model.backbone} @ {cfg.data.crop_size}px, batch {cfg.data.batch_size}, "
          f"{len(cfg.cam.scales)} CAM scales, {cfg.decompose.num_local_crops} local crops, device {device}, "
          f"{steps} timed step(s), {time.perf_counter() - t0:.1f}s total\n")
    print(f"| phase | ms / step | share | peak {mem_unit} |")
    print("|---|---:|---:|---:|")
    for phase in PHASES:
        ms = 1000 * timer.time[phase] / steps
        print(f"| {phase} | {ms:.1f} | {timer.time[phase] / timer.time['whole_step']:.0%} | {timer.mem[phase]:.0f} |")
    print(f"| **whole SeCo step** | {1000 * seco_s:.1f} | 100% | {max(timer.mem.values()):.0f} |")
    print(f"\nclassification-only step: {1000 * cls_s:.1f} ms -> **SeCo / cls-only = {seco_s / cls_s:.2f}x**")
    print(f"multi-scale CAMs incl. training forward: ours {1000 * ours:.1f} ms vs published-style "
          f"{1000 * published:.1f} ms -> ratio {ours / published:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("tiny", "base"), default=None)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per config")
    parser.add_argument("--device", default="auto", help="device of the base config (tiny always runs on CPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, python {sys.version.split()[0]}")
    for name in ("tiny", "base"):
        if args.only in (None, name):
            run(name, args.steps, args.device)


if __name__ == "__main__":
    main()
