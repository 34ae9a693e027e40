"""The first thing to run on a GPU: one table of what the voc preset costs there, and whether the GPU paths work.

    python -m benchmarks.gpu_check                         # the GPU that is present (cuda:0)
    python -m benchmarks.gpu_check --peak-tflops 989,67    # a GPU missing from the table of known peaks
    python -m benchmarks.gpu_check --device cpu --tiny     # the smoke version a test runs on CPU

Rows, each measured with fp32 and with bf16 autocast (``train.amp=off`` / ``bf16``) in the same run:

- the voc preset's training step (ViT-B/16 at 448, batch 4, every loss term on): seconds per iteration, peak
  memory, and MFU, the model FLOPs of one step (counted by ``torch.utils.flop_counter``) per second against the
  device's peak (from the table below, or ``--peak-tflops BF16,FP32``);
- the projected time of the preset's 20k iterations at that speed;
- export (CAMs -> PAR -> HDF5 + PNG) in images per second with 1 scale and with the published 7-scale set, each
  with flip, on the bundled demo images, and against the per-image fp32 loop of ``benchmarks/export.py`` (a model
  of the published loop) on the same images;
- a 1-process ``torchrun`` training run of 3 steps (NCCL on a GPU, gloo on CPU), as a user would launch it;
- the parity of bf16 against fp32 on one step from the same weights and batch: the largest relative difference
  of a loss term, and of the number of crops that got a tag;
- what one step asks of the device (issue 28): top-level operations (``benchmarks/step_ops.py``'s count), syncs
  (on a GPU, what ``torch.cuda.set_sync_debug_mode`` reports; else the CPU twin's count), the kernels the twin
  expects and the GPU kernels launched, and the 15 kernels with the most GPU time, printed after the table.

Nothing is downloaded: the data is the bundled demo set (seco_labels/demo_data/voc-demo), the weights are random
(speed does not depend on them). ``--tiny`` swaps in the demo preset (a tiny ViT at 128 px) and fewer steps, so
the whole script runs on a CPU in about a minute. On one GPU the full check takes a few minutes.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.export import SCALE_SETS, per_image_loop  # noqa: E402  (1 scale and the published 7)
from seco_labels.config import SecoConfig, get_preset  # noqa: E402
from seco_labels.data import build_reader  # noqa: E402
from seco_labels.inference.export import ExportOptions, export_split  # noqa: E402
from seco_labels.method.objective import HOST_KEYS, steady_step  # noqa: E402
from seco_labels.runtime.checkpoint import load_seco  # noqa: E402
from seco_labels.runtime.device import batch_to_device  # noqa: E402
from seco_labels.training.trainer import Trainer  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "seco_labels" / "demo_data" / "voc-demo"
#: dense peak TFLOP/s (bf16 tensor cores, fp32 without TF32), matched by substring of the CUDA device name
PEAK_TFLOPS = {
    "H200": (989.0, 67.0), "H100 SXM": (989.0, 67.0), "H100 PCIe": (756.0, 51.0), "H100": (989.0, 67.0),
    "A100": (312.0, 19.5), "L40S": (362.0, 91.6), "L40": (181.0, 90.5), "L4": (121.0, 30.3),
    "A10": (125.0, 31.2), "RTX 4090": (165.0, 82.6), "RTX 3090": (71.0, 35.6), "V100": (125.0, 15.7),
}
AMP_MODES = ("off", "bf16")  #: the two columns: fp32, bf16 autocast


@dataclass
class Column:
    """What one precision measured."""

    step_s: float = float("nan")
    peak_gib: float = float("nan")
    flops: float = float("nan")
    export_ips: dict[str, float] = field(default_factory=dict)
    terms: dict[str, float | None] = field(default_factory=dict)
    counts: dict[str, float | None] = field(default_factory=dict)
    ops: int = -1  #: top-level operations per step (benchmarks/step_ops.py's count)
    syncs: int = -1  #: sync-forcing operations per step: the CUDA sync debug mode's on a GPU, else the CPU twin's
    #: kernels the CPU twin expects per step: forward and backward launches and the optimiser's operations
    launches: int = -1
    kernels: int = -1  #: GPU kernels launched per step (-1: not on a GPU)
    top_kernels: str = ""  #: the 15 kernels with the most GPU time in one step, as torch.profiler's table


def subset_root(src: Path, dst: Path, images: int) -> Path:
    """A VOC-layout root at ``dst`` that links to ``src``'s files, with the first ``images`` ids of each split."""
    dst.mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (dst / name).symlink_to((src / name).resolve())
    splits = dst / "ImageSets" / "Segmentation"
    splits.mkdir(parents=True)
    for split in ("train", "val"):
        ids = (src / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        (splits / f"{split}.txt").write_text("\n".join(ids[:images]) + "\n")
    return dst


def check_config(tiny: bool, device: str, amp: str, data_root: Path) -> SecoConfig:
    """The voc preset (ViT-B/16 at 448, batch 4) or, with ``tiny``, the demo preset, on the bundled images."""
    cfg = get_preset("demo" if tiny else "voc")
    cfg.data.root, cfg.data.layout = str(data_root), "voc"
    cfg.data.train_split, cfg.data.val_split = "train", ""
    cfg.data.num_workers = 0
    cfg.model.backbone_weights = "random"
    cfg.train.device, cfg.train.amp = device, amp
    return cfg.validate()


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the process's RSS high-water mark


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps(cfg: SecoConfig, run_dir: Path, warmup: int, steps: int) -> tuple[Column, Path]:
    """Parity step, FLOP count, timed steps and a checkpoint for the export rows, for one precision."""
    trainer = Trainer(cfg, run_dir=run_dir, quiet=True)
    device = trainer.device
    # every term on, the final CAM source for the ROI: the steady state of a run
    trainer.step = steady_step(cfg)
    loader = iter(trainer.train_loader())
    batch = batch_to_device(next(loader), device, HOST_KEYS)
    col = Column()
    out = trainer.train_step(batch)  # the parity step: same weights and batch in both columns
    col.terms, col.counts = dict(out.terms), dict(out.counts)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch)
    col.flops = float(counter.get_total_flops())
    for _ in range(warmup):
        trainer.train_step(batch)
    profile_step(trainer, batch, col)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    _sync(device)
    col.step_s = (time.perf_counter() - start) / steps
    col.peak_gib = _peak_memory_gib(device)
    return col, trainer.save()


def profile_step(trainer: Trainer, batch: dict, col: Column) -> None:
    """What one step asks of the device: top-level operations and syncs by ``benchmarks/step_ops.py``; on a GPU also
    the kernels launched (torch.profiler's CUDA events), the 15 with the most GPU time, and the syncs the CUDA sync
    debug mode reports (each one warning)."""
    from benchmarks.step_ops import count_step

    ops = count_step(trainer, batch, stack=False)  # the counts alone: no Python frames, a fraction of the cost
    col.ops, col.syncs = ops.top_level, ops.syncs
    col.launches = ops.launches + ops.backward_launches + ops.optimizer
    if trainer.device.type != "cuda":
        return
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        trainer.train_step(batch)
        torch.cuda.synchronize(trainer.device)
    col.kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    col.top_kernels = prof.key_averages().table(sort_by="device_time_total", row_limit=15)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    col.syncs = sum(1 for w in caught if "synchroniz" in str(w.message))


def measure_export(ckpt: Path, data_root: Path, out: Path, device: str, amp: str) -> dict[str, float]:
    """Images per second of a whole export of the val split (the export's own timer: model load excluded) at 1 scale
    and at the published 7 scales, each with flip."""
    ips = {}
    for name, scales in SCALE_SETS.items():
        opts = ExportOptions(scales=scales, flip=True, overwrite=True, device=device, amp=amp, num_workers=2)
        res = export_split(ckpt, "val", out / name.replace(" ", "-"), data_root=str(data_root), layout="voc",
                           options=opts, quiet=True)
        ips[name] = res["exported"] / res["seconds"]["total"]
    return ips


def measure_per_image(ckpt: Path, data_root: Path, out: Path, device: str) -> dict[str, float]:
    """Images per second of ``benchmarks/export.py``'s per-image loop (a model of the published loop: one image and
    its flip per network pass, fp32) over the same val split, after one untimed image: the baseline of the issue's
    target, export >= 3x it at both scale sets."""
    dev = torch.device(device)
    model, cfg = load_seco(ckpt, dev)
    ids = build_reader("voc", str(data_root), "val").ids
    ips = {}
    for name, scales in SCALE_SETS.items():
        folder = out / name.replace(" ", "-")
        per_image_loop(model, cfg, data_root, ids[:1], scales, folder / "warm", dev, split="val")
        sec = per_image_loop(model, cfg, data_root, ids, scales, folder / "timed", dev, split="val")
        ips[name] = len(ids) / sec["total"]
    return ips


def torchrun_check(tiny: bool, device: str, data_root: Path, out: Path) -> str:
    """A 1-process torchrun training run of 3 steps, launched as a user would: 'ok (N s)' or the error."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "seco_labels.cli", "train", "--preset", "demo" if tiny else "voc", "--data-root", str(data_root),
           "--split", "train", "--val-split", "", "--out", str(out), "--iters", "3", "--device", device, "--quiet",
           "--set", "data.num_workers=0"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    backend = "NCCL" if device.startswith("cuda") else "gloo"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"FAILED ({backend}, exit {proc.returncode}): {last[:200]}"
    return f"ok ({backend}, {time.perf_counter() - start:.0f} s incl. start-up)"


def peak_tflops(device: torch.device, override: str | None) -> tuple[float, float] | None:
    """(bf16, fp32) dense peak TFLOP/s: ``--peak-tflops``, else the known-device table, else None."""
    if override:
        bf16, fp32 = (float(v) for v in override.split(","))
        return bf16, fp32
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks
    return None


def _rel_diff(a: dict[str, float | None], b: dict[str, float | None]) -> tuple[str, float]:
    """The key with the largest relative difference between two dicts of numbers, and that difference."""
    worst = ("-", 0.0)
    for k, va in a.items():
        vb = b.get(k)
        if va is None or vb is None:
            continue
        diff = abs(va - vb) / max(abs(va), 1e-12)
        if diff >= worst[1]:
            worst = (k, diff)
    return worst


def format_table(cols: dict[str, Column], peaks: tuple[float, float] | None, iters: int, nccl: str,
                 per_image: dict[str, float]) -> str:
    fp32, bf16 = cols["off"], cols["bf16"]

    def cells(fmt, get) -> str:
        return " | ".join(fmt(get(c)) for c in (fp32, bf16))

    def mfu(c: Column, peak: float | None) -> str:
        return f"{100 * c.flops / c.step_s / (peak * 1e12):.1f}%" if peak else "— (pass --peak-tflops)"

    lines = ["| check | fp32 | bf16 |", "|---|---:|---:|",
             f"| training step, s/iter | {cells(lambda v: f'{v:.3f}', lambda c: c.step_s)} |",
             f"| peak memory, GiB | {cells(lambda v: f'{v:.2f}', lambda c: c.peak_gib)} |",
             f"| model TFLOP per step | {cells(lambda v: f'{v / 1e12:.2f}', lambda c: c.flops)} |",
             f"| MFU | {mfu(fp32, peaks[1] if peaks else None)} | {mfu(bf16, peaks[0] if peaks else None)} |",
             f"| {iters} iterations, projected | {cells(lambda v: f'{v * iters / 3600:.1f} h', lambda c: c.step_s)} |",
             f"| top-level operations per step (target <= 1,400) | {cells(lambda v: f'{v:,}', lambda c: c.ops)} |",
             f"| sync-forcing operations per step (target <= 5) | {cells(lambda v: f'{v:,}', lambda c: c.syncs)} |",
             f"| kernels per step, the CPU twin's estimate | {cells(lambda v: f'{v:,}', lambda c: c.launches)} |",
             f"| GPU kernels per step | {cells(lambda v: f'{v:,}' if v >= 0 else '—', lambda c: c.kernels)} |"]
    for name in fp32.export_ips:
        lines.append(f"| export, {name} + flip, images/s | "
                     f"{cells(lambda v: f'{v:.2f}', lambda c: c.export_ips.get(name, float('nan')))} |")
    for name, base in per_image.items():
        lines.append(f"| export / per-image fp32 loop ({base:.2f} images/s), {name} + flip (target >= 3x) | "
                     f"{cells(lambda v: f'{v / base:.2f}x', lambda c: c.export_ips.get(name, float('nan')))} |")
    lines.append(f"| torchrun, 1 process, 3 steps | {nccl} | |")
    term, diff = _rel_diff(fp32.terms, bf16.terms)
    count, cdiff = _rel_diff(fp32.counts, bf16.counts)
    lines.append(f"| bf16 vs fp32, one step: largest relative difference | | loss_{term} {diff:.2%}; "
                 f"{count} {cdiff:.2%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="demo preset (tiny ViT at 128 px), fewer steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per precision (10; --tiny 2)")
    parser.add_argument("--peak-tflops", default=None, metavar="BF16,FP32",
                        help="the device's dense peak TFLOP/s, for a GPU missing from the table")
    parser.add_argument("--data-root", type=Path, default=DEMO, help="a VOC-layout set (default: the demo set)")
    parser.add_argument("--images", type=int, default=None,
                        help="use only the first N images of each split (at least the batch size, 4)")
    parser.add_argument("--skip-torchrun", action="store_true", help="leave out the torchrun row")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --tiny for the CPU smoke check", file=sys.stderr)
        return 2
    steps = args.steps or (2 if args.tiny else 10)
    warmup = 1 if args.tiny else 3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# gpu_check: {name}; torch {torch.__version__}; {'tiny (demo preset)' if args.tiny else 'voc preset'}")
    cols: dict[str, Column] = {}
    with tempfile.TemporaryDirectory(prefix="seco-gpu-check-") as tmp:
        work = Path(tmp)
        data_root = subset_root(args.data_root, work / "data", args.images) if args.images else args.data_root
        for amp in AMP_MODES:
            torch.manual_seed(0)
            cfg = check_config(args.tiny, args.device, amp, data_root)
            t0 = time.perf_counter()
            col, ckpt = measure_steps(cfg, work / f"run-{amp}", warmup, steps)
            col.export_ips = measure_export(ckpt, data_root, work / f"art-{amp}", args.device, amp)
            cols[amp] = col
            print(f"  {amp}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        per_image = measure_per_image(ckpt, data_root, work / "per-image", args.device)
        iters = get_preset("demo" if args.tiny else "voc").train.iters
        nccl = "skipped" if args.skip_torchrun else torchrun_check(args.tiny, args.device, data_root,
                                                                   work / "torchrun")
    print(format_table(cols, peak_tflops(device, args.peak_tflops), iters, nccl, per_image))
    for amp, col in cols.items():
        if col.top_kernels:
            print(f"\n{amp}: the 15 kernels with the most GPU time in one step\n\n```\n{col.top_kernels}```")
    return 0 if not nccl.startswith("FAILED") else 1


if __name__ == "__main__":
    sys.exit(main())
