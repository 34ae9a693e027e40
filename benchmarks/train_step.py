"""Time and peak memory of one SeCo training step, per phase, against a classification-only step.

    python -m benchmarks.train_step                 # CRF filter, tiny ViT at 256 on CPU, ViT-B/16 at 448 (1 CPU step)
    python -m benchmarks.train_step --only tiny --steps 5
    python -m benchmarks.train_step --only filter   # the CRF-energy filter alone, lattice against exact

For each config it prints a table of phases (CAM inference, crop sampling, student forward, teacher forward,
losses, backward, optimiser step) with mean time and peak memory, then the ratio of the whole SeCo step to a
plain classification-only step (encoder + max-pool classifier + multilabel loss + AdamW) of the same backbone and
batch, measured in the same run. It also compares our multi-scale CAM inference (scale 1.0 reused from the
training forward) with the published way (every scale, including 1.0, in separate no-grad passes). Each config
runs with the CRF energy's lattice filter (the default) and with the exact one (``loss.energy_filter=exact``),
and prints the step time of one against the other.

The ``filter`` section times the CRF energy's Gaussian filter alone at three crop sizes (on the half-resolution
image the energy sees, 4 images, 21 classes), with the peak memory each run adds (measured in a fresh process
per run on CPU), and reports the lattice's per-pixel output against the exact filter's on real images (its
known low bias, about 0.6).

Memory: CUDA peak allocated per phase on GPU; on CPU the process's peak RSS (a high-water mark, so only its
growth is informative).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from seco_labels.config import SecoConfig, get_preset  # noqa: E402
from seco_labels.data import TrainDataset, TrainViews, build_reader  # noqa: E402
from seco_labels.method.cams import multi_scale_cams  # noqa: E402
from seco_labels.method.energy import GAUSSIAN_FILTERS, energy_features  # noqa: E402
from seco_labels.method.losses import cls_loss  # noqa: E402
from seco_labels.method.objective import HOST_KEYS, steady_step  # noqa: E402
from seco_labels.runtime.device import batch_to_device  # noqa: E402
from seco_labels.training.trainer import Trainer  # noqa: E402

PHASES = ("cam_inference", "crop_sampling", "student_forward", "teacher_forward", "losses", "backward",
          "optimizer_step")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc-mini"
DEMO = Path(__file__).resolve().parents[1] / "seco_labels" / "demo_data" / "voc-demo"
FILTER_CROPS = (224, 448, 672)  #: crop sizes of the filter section; the energy sees them at half resolution
EXACT_MAX_CROP = 448  #: the exact filter is quadratic in pixels: larger crops take minutes on a CPU


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
        cfg.data.crop_size = 256
        cfg.decompose.local_crop_size = 64
        cfg.model.proj_hidden = 2048
        cfg.train.device = "cpu"
    else:
        cfg = get_preset("voc")
        cfg.model.reservoir_size = 4608
    cfg.model.backbone_weights = "random"  # timing: the weights' values do not matter, and nothing downloads
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
            with trainer.autocast():
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
        with trainer.autocast():
            with timer("ours"):
                out = model(x)
                multi_scale_cams(model.cams, x, scales, base=(out.cam, out.cam_aux))
            with timer("published"):
                out = model(x)
                multi_scale_cams(model.cams, x, scales)
    return timer.time["ours"] / steps, timer.time["published"] / steps


def run(name: str, steps: int, device_spec: str, energy_filter: str, baselines: bool = True) -> float:
    """Print the phase table of one config with the given CRF-energy filter; returns seconds per SeCo step."""
    cfg = bench_config(name)
    cfg.loss.energy_filter = energy_filter
    if name == "base":
        cfg.train.device = device_spec
        if not torch.cuda.is_available() or device_spec == "cpu":
            cfg.train.device = "cpu"
            steps = 1  # ViT-B/16 at 448 with batch 4 takes minutes per step on a CPU
    trainer = Trainer(cfg, run_dir="/tmp/seco-bench-unused", quiet=True)
    device = trainer.device
    trainer.step = steady_step(cfg)
    batch = batch_to_device(one_batch(cfg, 0), device, HOST_KEYS)

    trainer.train_step(batch)  # warm-up: allocator, kernels, lazy init
    timer = PhaseTimer(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with timer("whole_step"):
            trainer.train_step(batch, timer=timer)
    seco_s = timer.time["whole_step"] / steps

    mem_unit = "MiB alloc" if device.type == "cuda" else "MiB RSS hwm"
    print(f"\n## {name}: {cfg.model.backbone} @ {cfg.data.crop_size}px, batch {cfg.data.batch_size}, "
          f"{len(cfg.cam.scales)} CAM scales, {cfg.decompose.num_local_crops} local crops, CRF filter "
          f"{energy_filter}, device {device}, {steps} timed step(s), {time.perf_counter() - t0:.1f}s total\n")
    print(f"| phase | ms / step | share | peak {mem_unit} |")
    print("|---|---:|---:|---:|")
    for phase in PHASES:
        ms = 1000 * timer.time[phase] / steps
        print(f"| {phase} | {ms:.1f} | {timer.time[phase] / timer.time['whole_step']:.0%} | {timer.mem[phase]:.0f} |")
    print(f"| **whole SeCo step** | {1000 * seco_s:.1f} | 100% | {max(timer.mem.values()):.0f} |")
    if baselines:
        cls_s = time_cls_only(trainer, batch, steps)
        ours, published = time_cam_inference(trainer, batch["image"], max(1, steps))
        print(f"\nclassification-only step: {1000 * cls_s:.1f} ms -> **SeCo / cls-only = {seco_s / cls_s:.2f}x**")
        print(f"multi-scale CAMs incl. training forward: ours {1000 * ours:.1f} ms vs published-style "
              f"{1000 * published:.1f} ms -> ratio {ours / published:.2f}")
    return seco_s


def energy_inputs(crop: int, images: int = 4, classes: int = 21, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """What the CRF energy filters for a batch of real images at ``crop`` px (the preset sigmas, half resolution):
    features (B, 5, N) and smooth softmax values (B, K, N), N = (crop / 2)^2."""
    from PIL import Image

    root = DATA if DATA.is_dir() else DEMO
    files = sorted((root / "JPEGImages").glob("*.jpg"))[:images]
    half = crop // 2
    rgb = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((half, half)), np.float32))
                       .permute(2, 0, 1) for f in files])
    cfg = get_preset("voc").loss
    feats = energy_features(rgb, cfg.energy_sigma_rgb, cfg.energy_sigma_xy * cfg.energy_scale)
    g = torch.Generator().manual_seed(0)
    logits = F.interpolate(4 * torch.randn(len(files), classes, 8, 8, generator=g), size=(half, half), mode="bilinear")
    values = logits.softmax(1).reshape(len(files), classes, half * half)
    return feats.to(device), values.to(device)


def _filter_cost(energy_filter: str, crop: int, device: str, repeats: int) -> tuple[float, float]:
    """(seconds, MiB) of one filter call: best of ``repeats``; memory is what the call adds to the peak (CUDA
    allocated, or the process's RSS high-water mark, which is why each CPU measurement gets a fresh process)."""
    feats, values = energy_inputs(crop, device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.max_memory_allocated() if cuda else _rss_mb() * 2**20
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            GAUSSIAN_FILTERS[energy_filter](feats, values)
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_mb() * 2**20
    return best, (peak - base) / 2**20


def _filter_cost_in_child(args: tuple[str, int, str, int]) -> tuple[float, float]:
    torch.set_num_threads(int(os.environ.get("SECO_BENCH_THREADS", torch.get_num_threads())))
    return _filter_cost(*args)


def filter_section(device: str, repeats: int) -> None:
    """Time and memory of the CRF energy's filter at three crop sizes, and the lattice's bias against exact."""
    print(f"\n## CRF-energy filter alone: 4 real images, 21 classes, half resolution, device {device}\n")
    print("| crop | pixels / image | lattice ms | lattice MiB | exact ms | exact MiB | exact / lattice time |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    ctx = multiprocessing.get_context("spawn")
    os.environ["SECO_BENCH_THREADS"] = str(torch.get_num_threads())
    rows = []
    for crop in FILTER_CROPS:
        cost = {}
        for name in ("lattice", "exact"):
            if name == "exact" and crop > EXACT_MAX_CROP and not device.startswith("cuda"):
                continue
            with ctx.Pool(1) as pool:  # a fresh process: its RSS high-water mark is this run's alone
                cost[name] = pool.map(_filter_cost_in_child, [(name, crop, device, repeats)])[0]
        lat, ex = cost["lattice"], cost.get("exact")
        rows.append((crop, lat[0]))
        exact_cells = f"{1000 * ex[0]:.0f} | {ex[1]:.0f} | {ex[0] / lat[0]:.1f}x" if ex else "— | — | —"
        print(f"| {crop} | {(crop // 2) ** 2} | {1000 * lat[0]:.0f} | {lat[1]:.0f} | {exact_cells} |")
    (c0, t0), (c1, t1) = rows[0], rows[-1]
    print(f"\nlattice time from crop {c0} to {c1}: x{t1 / t0:.1f} for x{(c1 / c0) ** 2:.1f} the pixels "
          f"(linear would be x{(c1 / c0) ** 2:.1f}, quadratic x{(c1 / c0) ** 4:.0f})")
    print("\n| crop | lattice / exact per pixel: median | 5% | 95% |")
    print("|---:|---:|---:|---:|")
    for crop in (224, 448):
        feats, _ = energy_inputs(crop, images=8)
        ones = torch.ones(feats.shape[0], 1, feats.shape[2])
        with torch.no_grad():
            ratio = (GAUSSIAN_FILTERS["lattice"](feats, ones) / GAUSSIAN_FILTERS["exact"](feats, ones)).flatten()
        q = ratio.quantile(torch.tensor([0.5, 0.05, 0.95])).tolist()
        print(f"| {crop} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("filter", "tiny", "base"), default=None)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per config")
    parser.add_argument("--device", default="auto", help="device of the base config and the filter section "
                        "(tiny always runs on CPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, python {sys.version.split()[0]}")
    if args.only in (None, "filter"):
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
        filter_section("cpu" if device == "auto" else device, repeats=2)
    for name in ("tiny", "base"):
        if args.only in (None, name):
            lattice = run(name, args.steps, args.device, "lattice")
            exact = run(name, args.steps, args.device, "exact", baselines=False)
            print(f"\n**{name}: step with the lattice filter / with the exact filter = {lattice / exact:.2f}x** "
                  f"({1000 * lattice:.0f} ms vs {1000 * exact:.0f} ms)")


if __name__ == "__main__":
    main()
