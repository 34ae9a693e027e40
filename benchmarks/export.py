"""Throughput of ``seco export-masks`` (CAMs -> PAR -> HDF5/PNG) against a plain per-image loop, at 1 scale + flip
and at the published 7-scale set + flip.

    python -m benchmarks.export                               # tiny ViT @ 256 px, 20 voc-mini val images
    python -m benchmarks.export --threads 1 --repeats 3       # one torch thread (as the published comparison)
    python -m benchmarks.export --config base --images 2      # ViT-B/16 @ 448 px (slow on a CPU)
    python -m benchmarks.export --config base --device cuda --images 100

**Baseline** (``per-image``): a faithful model of the published per-image loop (``tools/infer_cam.py`` +
``multi_scale_cam2`` + ``refine_cams_with_bkg_v2`` of github.com/zwyang6/SeCo) over the *same* network, PAR and
PNG writer as the export: for each image in turn, decode, normalise, resize to the crop size; for each scale,
resize, one network pass on the image and its flip (batch 2), both raw CAMs (final and aux) of every class
upsampled to the crop size, max of image and flipped-back flip, ReLU; sum over scales, min-max normalise; the
used CAM's every class upsampled to the original size and multiplied by the tags; PAR with the high/low background
thresholds (:func:`seco_labels.method.refine.refine_with_background`); the mask written as a PNG. Nothing overlaps,
nothing is batched across images. Its masks are compared with the export's (``same masks``).

**Export**: :func:`seco_labels.inference.export.export_split` with its defaults (HDF5 + PNG, batch 4, 2 DataLoader
workers) unless ``--batch-size``/``--workers``/``--formats`` say otherwise. Seconds exclude loading the model (both).

Every measured run is a fresh subprocess (warm-up on one image first, not timed), so that its peak resident
memory (``ru_maxrss``; on CUDA also the peak allocated GPU memory) is its own. Baseline and export runs are
interleaved, ``--repeats`` times, and the fastest of each is kept: other jobs on a shared machine slow single runs
down, rarely speed them up. The number to read is **export / per-image** in images per second (target: >= 3x).
The split columns say where each run's time goes: CAM (network passes and CAM post-processing), PAR (upsampling
to the original size + refinement), write (waiting on the writer, assembling the HDF5 file) and other (loading).
``CPU s`` is the CPU time of the run (all threads, DataLoader workers included; the least of the repeats): with
one torch thread (``--threads 1``) it shows the work done, which other jobs on a shared machine change less than
the wall time (still by 10-20% on a busy 2-core VM: caches and cores are shared); a ratio by wall time well above
the one by CPU time means the run overlapped work on more cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from seco_labels.artifacts import save_mask_png  # noqa: E402
from seco_labels.config import get_preset  # noqa: E402
from seco_labels.config_io import config_to_dict  # noqa: E402
from seco_labels.data import build_reader, normalize  # noqa: E402
from seco_labels.inference.export import SCALE_PRESETS, ExportOptions, export_split  # noqa: E402
from seco_labels.method.refine import PAR, refine_with_background  # noqa: E402
from seco_labels.models import build_seco  # noqa: E402
from seco_labels.runtime.checkpoint import load_seco, save_checkpoint  # noqa: E402
from seco_labels.runtime.device import resolve_device  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc-mini"
SPLIT = "bench"
CONFIGS = {
    # name: (preset, backbone, input size, split of voc-mini, number of images)
    "tiny": ("demo", "vit_tiny_patch16_224", 256, "val", 20),
    "base": ("voc", "vit_base_patch16_224", 448, "val", 4),
}
SCALE_SETS = {"1 scale": SCALE_PRESETS["seeds"], "7 scales": SCALE_PRESETS["published-ms"]}


# -- set-up --------------------------------------------------------------------------------------------------
def make_subset(src: Path, dst: Path, split: str, n: int) -> list[str]:
    """A VOC-layout folder at ``dst`` with the first ``n`` ids of ``src``'s ``split`` as split ``bench``."""
    ids = (src / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
    (dst / "JPEGImages").mkdir(parents=True)
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i in ids:
        (dst / "JPEGImages" / f"{i}.jpg").symlink_to((src / "JPEGImages" / f"{i}.jpg").resolve())
    (dst / "ImageSets" / "Segmentation" / f"{SPLIT}.txt").write_text("\n".join(ids) + "\n")
    shutil.copy(src / "cls_labels_onehot.npy", dst / "cls_labels_onehot.npy")
    return ids


def make_checkpoint(name: str, size: int, root: Path, path: Path) -> None:
    """A checkpoint in the format ``load_seco`` reads, from a randomly initialised network (speed does
    not depend on the weights)."""
    preset, backbone, *_ = CONFIGS[name]
    cfg = get_preset(preset)
    cfg.model.backbone = backbone
    cfg.model.backbone_weights = "random"
    cfg.data.crop_size = size
    cfg.data.root, cfg.data.layout, cfg.data.train_split = str(root), "voc", SPLIT
    cfg.validate()
    torch.manual_seed(0)
    model = build_seco(cfg.model, cfg.data.num_classes)
    save_checkpoint(path, {"step": 0, "config": config_to_dict(cfg), "model": model.state_dict()})


# -- the baseline: the published per-image loop, restated over our network ------------------------------------
def published_ms_cam(model, x: torch.Tensor, scales) -> tuple[torch.Tensor, torch.Tensor]:
    """Published ``multi_scale_cam2`` on one image x (1, 3, S, S): scale 1.0 first, then every other scale; per
    scale one pass on image + flip; both CAMs, every class. Returns (cam, cam_aux), each (1, C, S, S)."""
    _, _, h, w = x.shape
    cam_list, aux_list = [], []
    for s in [1.0] + [s for s in scales if s != 1.0]:
        xs = x if s == 1.0 else F.interpolate(x, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
        cam, aux = model.cams(torch.cat([xs, xs.flip(-1)]))  # (2, C, h', w') each
        for raw, out in ((cam, cam_list), (aux, aux_list)):
            up = F.interpolate(raw, size=(h, w), mode="bilinear", align_corners=False)
            out.append(F.relu(torch.max(up[:1], up[1:].flip(-1))))
    result = []
    for maps in (cam_list, aux_list):
        cam = torch.stack(maps).sum(0)
        cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
        cam = cam / (F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5)
        result.append(cam)
    return result[0], result[1]


def per_image_loop(model, cfg, root: Path, ids: list[str], scales, out: Path, device: torch.device,
                   split: str = SPLIT) -> dict:
    """The baseline over ``ids`` of ``split`` of the VOC-layout ``root``; returns seconds split into cam, refine,
    write, other (decoding) and total. Also what ``benchmarks/gpu_check.py`` compares the export against."""
    c = cfg.cam
    par = PAR(c.par_dilations, c.par_iters).to(device)
    reader = build_reader("voc", str(root), split)
    size = cfg.data.crop_size
    out.mkdir(parents=True, exist_ok=True)
    sec = {"cam": 0.0, "refine": 0.0, "write": 0.0, "other": 0.0}
    t_start = time.perf_counter()
    with torch.no_grad():
        for image_id in ids:
            t0 = time.perf_counter()
            rgb = reader.load_image(image_id)
            tags = torch.from_numpy(reader.tags(image_id).copy()).to(device)
            x = F.interpolate(normalize(rgb)[None].to(device), size=(size, size), mode="bilinear",
                              align_corners=False)
            t1 = time.perf_counter()
            cam = published_ms_cam(model, x, scales)[0]  # the final classifier's CAM (cam_source "final")
            _sync(device)
            t2 = time.perf_counter()
            h, w = rgb.shape[:2]
            cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False) * tags[None, :, None, None]
            image = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float() / 255.0
            mask = refine_with_background(par, image, cam, tags[None], high_thre=c.high_thre, low_thre=c.low_thre,
                                          ignore_index=cfg.data.ignore_index)[0]
            mask = mask.cpu().numpy().astype(np.uint8)
            t3 = time.perf_counter()
            save_mask_png(out / f"{image_id}.png", mask)
            t4 = time.perf_counter()
            for k, dt in zip(("other", "cam", "refine", "write"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                sec[k] += dt
    sec["total"] = time.perf_counter() - t_start
    return sec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- one measured run, in its own process -----------------------------------------------------------------------
def child(args) -> None:
    """Warm up on the first image, then time one run over all images; print its result as one JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    root, out, scales = Path(args.root), Path(args.out), tuple(args.scales)
    ids = build_reader("voc", str(root), SPLIT).ids
    if args.child == "per-image":
        model, cfg = load_seco(args.ckpt, device)
        per_image_loop(model, cfg, root, ids[:1], scales, out.with_name(out.name + "-warm"), device)
        start, cpu0 = _start_memory(device), _cpu_seconds()
        sec = per_image_loop(model, cfg, root, ids, scales, out, device)
    else:
        opts = dict(scales=scales, device=str(device), overwrite=True, batch_size=args.batch_size,
                    num_workers=args.workers, formats=tuple(args.formats.split("+")))
        warm = root.with_name(root.name + "-warm")
        if not warm.exists():
            make_subset(root, warm, SPLIT, 1)
        export_split(args.ckpt, SPLIT, out.with_name(out.name + "-warm"), data_root=str(warm), layout="voc",
                     options=ExportOptions(**opts), quiet=True)
        start, cpu0 = _start_memory(device), _cpu_seconds()
        sec = export_split(args.ckpt, SPLIT, out, data_root=str(root), layout="voc", options=ExportOptions(**opts),
                           quiet=True)["seconds"]
        sec["other"] = max(0.0, sec["total"] - sec["cam"] - sec["refine"] - sec["write"])
    res = {"seconds": sec, "cpu_seconds": _cpu_seconds() - cpu0, "images": len(ids),
           "threads": torch.get_num_threads(), **start,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print("RESULT " + json.dumps(res))


def _start_memory(device: torch.device) -> dict:
    """Resident memory (MiB) before the timed run: the model, torch and the warm-up's leftovers."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {"start_rss_mib": rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20}


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children (the DataLoader workers): unlike
    wall time, barely changed by other jobs on a shared machine."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_child(kind: str, args, ckpt: Path, root: Path, out: Path, scales) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--ckpt", str(ckpt), "--root", str(root), "--out", str(out),
           "--scales", *map(str, scales), "--device", args.device, "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "--formats", args.formats]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind} run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def same_masks(a: Path, b: Path) -> tuple[int, int, float]:
    """(identical masks, masks, fraction of identical pixels) of two folders of PNG masks."""
    n_same, n, px_same, px = 0, 0, 0, 0
    for p in sorted(a.glob("*.png")):
        ma, mb = np.asarray(Image.open(p)), np.asarray(Image.open(b / p.name))
        n += 1
        n_same += bool(np.array_equal(ma, mb))
        px_same += int((ma == mb).sum())
        px += ma.size
    return n_same, n, px_same / max(px, 1)


# -- the report -----------------------------------------------------------------------------------------------
def bench(args, work: Path) -> None:
    preset, backbone, size, split, n_default = CONFIGS[args.config]
    n = args.images or n_default
    root, ckpt = work / "data", work / "model.pt"
    ids = make_subset(DATA, root, split, n)
    make_checkpoint(args.config, size, root, ckpt)
    t_cfg, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for label, scales in SCALE_SETS.items():
        best: dict[str, dict] = {}
        outs = {k: work / f"out-{k}-{len(scales)}" for k in ("per-image", "export")}
        for _ in range(args.repeats):
            for kind in ("per-image", "export"):
                r = run_child(kind, args, ckpt, root, outs[kind], scales)
                cpu = min(r["cpu_seconds"], best[kind]["cpu_seconds"]) if kind in best else r["cpu_seconds"]
                if kind not in best or r["seconds"]["total"] < best[kind]["seconds"]["total"]:
                    best[kind] = r
                best[kind]["cpu_seconds"] = cpu  # the least CPU time of any repeat
        mask_dir = outs["export"] / f"masks_{SPLIT}"
        same = same_masks(outs["per-image"], mask_dir) if mask_dir.is_dir() else None
        rows.append((label, scales, best, same))

    r0 = rows[0][2]["export"]
    print(f"\n## {args.config}: {backbone} @ {size} px, {len(ids)} images ({split} split of voc-mini), device "
          f"{args.device}, {r0['threads']} torch threads, export batch {args.batch_size}, {args.workers} workers, "
          f"{args.formats}; best of {args.repeats}; {time.perf_counter() - t_cfg:.0f} s; load average "
          f"{load0:.1f} -> {os.getloadavg()[0]:.1f}\n")
    gpu = "peak_gpu_mib" in r0
    print("| scales + flip | run | images/s | **vs per-image** | CAM s | PAR s | write s | other s | total s | CPU s | "
          "vs per-image (CPU s) | peak RSS MiB (start) |" + (" peak GPU MiB |" if gpu else "") + " same masks |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "") + "---|")
    for label, scales, best, same in rows:
        base_ips = best["per-image"]["images"] / best["per-image"]["seconds"]["total"]
        base_cpu = best["per-image"]["cpu_seconds"]
        for kind in ("per-image", "export"):
            r = best[kind]
            s = r["seconds"]
            ips = r["images"] / s["total"]
            cells = [f"{label} ({len(scales)})", kind, f"{ips:.3f}", f"**{ips / base_ips:.2f}x**"]
            cells += [f"{s[k]:.2f}" for k in ("cam", "refine", "write", "other", "total")]
            cells += [f"{r['cpu_seconds']:.2f}", f"{base_cpu / r['cpu_seconds']:.2f}x"]
            cells.append(f"{r['peak_rss_mib']:.0f} ({r['start_rss_mib']:.0f})")
            if gpu:
                cells.append(f"{r.get('peak_gpu_mib', float('nan')):.0f}")
            cells.append("–" if kind == "per-image" or same is None else
                         f"{same[0]}/{same[1]} ({same[2]:.4%} px)")
            print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=tuple(CONFIGS), default="tiny")
    parser.add_argument("--images", type=int, default=None, help="images (tiny: 20, base: 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timed repeats, the fastest kept")
    defaults = ExportOptions()
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="export batch size")
    parser.add_argument("--workers", type=int, default=defaults.num_workers, help="export DataLoader workers")
    parser.add_argument("--formats", default="+".join(defaults.formats), help="export formats, e.g. h5+png, png")
    parser.add_argument("--keep", default=None, help="keep the data, checkpoint and outputs in this folder")
    # one measured run (internal)
    parser.add_argument("--child", choices=("per-image", "export"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--scales", type=float, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, commit {commit or '?'}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="seco-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
