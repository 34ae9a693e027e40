"""``export-masks``: a trained checkpoint -> multi-scale CAMs, PAR-refined pseudo masks, written as artifacts.

Per image (docs/design.md §4): resize to the training crop size (as the published inference does), multi-scale +
flip CAMs of the image's tagged classes, upsample to the original size (its long side bounded by the training
run's ``data.max_side``, as the reader gives it), constant background at the high and
low thresholds, PAR, argmax; pixels that are foreground only under the low threshold are ignored (255).
Writing (``artifacts.ArtifactWriter``) is resumable: finished ids are skipped unless ``overwrite``.

Where the work goes: the network passes run on batches of ``batch_size`` images (image + flip, one call per
distinct scaled size); after them only the tagged classes of the chosen CAM source are processed
(``cams.multi_scale_class_cams``, bit-identical to picking them from ``multi_scale_cams``); PAR runs per image on
its tagged channels; decoding overlaps in DataLoader workers and compressing/writing in the writer's thread.
``benchmarks/export.py`` measures this against a plain per-image loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import __version__
from ..artifacts import (
    ArtifactWriter,
    export_report_path,
    read_confidence,
    write_coco_json,
    write_cvat_zip,
    write_hf_dataset,
    write_label_studio,
)
from ..artifacts.cvat import annotation_labels
from ..artifacts.hf_dataset import require_pyarrow
from ..artifacts.label_studio import DEFAULT_URL_PREFIX
from ..config import AmpMode, SecoConfig
from ..config_io import check_choices, config_to_dict, save_config
from ..data import build_reader, normalize
from ..errors import CheckpointError, ConfigError, DataError
from ..io import atomic_write_text
from ..method.cams import check_scales, multi_scale_class_cams
from ..method.refine import PAR, crf_refine_mask, refine_with_background, require_crf
from ..runtime.checkpoint import load_seco, seco_provenance
from ..runtime.device import resolve_device
from ..runtime.distributed import all_gather_objects, barrier, init_distributed
from ..runtime.precision import resolve_amp
from .confidence import CONFIDENCE_SCORE, mask_confidence

__all__ = ["SCALE_PRESETS", "ExportOptions", "export_split"]

log = logging.getLogger(__name__)

#: Named multi-scale CAM sets: ours, the published training scales, the published multi-scale inference.
SCALE_PRESETS: dict[str, tuple[float, ...]] = {
    "default": (1.0, 0.5, 0.75, 1.25, 1.5),
    "seeds": (1.0,),
    "train-voc": (1.0, 0.5, 0.75, 1.5),
    "published-ms": (1.0, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0),
}


#: the ``--format`` that writes ``coco_<split>.json``
COCO_FORMAT = "coco-json"
#: the ``--format`` that writes ``hf_<split>/`` (a Hugging Face dataset; needs the ``hf`` extra)
HF_DATASET_FORMAT = "hf-dataset"
#: the formats built from the finished masks after the export (so they need h5 or png), and how each is written
DERIVED_FORMATS: dict[str, Callable[[Path, str, ExportOptions, str], Path]] = {
    COCO_FORMAT: lambda out, split, opt, root: write_coco_json(out, split, data_root=root),
    HF_DATASET_FORMAT: lambda out, split, opt, root: write_hf_dataset(out, split, data_root=root),
    "cvat": lambda out, split, opt, root: write_cvat_zip(out, split, uncertain_as=opt.uncertain_as),
    "label-studio": lambda out, split, opt, root: write_label_studio(
        out, split, data_root=root, url_prefix=opt.label_studio_prefix, uncertain_as=opt.uncertain_as),
}


@dataclass
class ExportOptions:
    """How to turn CAMs into pseudo masks; ``None`` thresholds come from the checkpoint's config."""

    scales: tuple[float, ...] = SCALE_PRESETS["default"]
    flip: bool = True
    cam_source: Literal["final", "aux"] = "final"  #: final | aux classifier
    high_thre: float | None = None
    low_thre: float | None = None
    input_size: int | None = None  #: square side the image is resized to; None = the training crop size
    #: given (the dataset's tags) | predicted (classifier scores above tag_threshold)
    tags: Literal["given", "predicted"] = "given"
    tag_threshold: float = 0.5  #: sigmoid score a class needs to count as present with tags="predicted"
    crf: bool = False  #: refine each pseudo mask with the dense CRF (needs the ``crf`` extra)
    #: of h5, png and the formats built from the h5 or png masks: coco-json (COCO RLE), hf-dataset (a Hugging Face
    #: dataset), cvat (a CVAT "Segmentation mask 1.1" zip), label-studio (Label Studio tasks with BrushLabels
    #: predictions)
    formats: tuple[Literal["h5", "png", "coco-json", "hf-dataset", "cvat", "label-studio"], ...] = ("h5", "png")
    #: cvat and label-studio: the uncertain pixels as a label of their own (to correct by hand) or as background
    uncertain_as: Literal["label", "background"] = "label"
    #: label-studio: prefix of each task's image URL, before the image path relative to the dataset root
    label_studio_prefix: str = DEFAULT_URL_PREFIX
    overwrite: bool = False
    skip_bad: bool = False
    batch_size: int = 4
    num_workers: int = 2
    device: str = "auto"
    amp: AmpMode = "auto"


class _ExportImages(Dataset):
    """Items: ``id``, ``image`` (3, S, S) normalised and resized, ``rgb`` (H, W, 3) uint8 original, ``tags``;
    or ``id`` and ``error`` when the image can't be read (so ``--skip-bad`` can go on)."""

    def __init__(self, reader, ids: list[str], size: int, with_tags: bool) -> None:
        self.reader, self.ids, self.size, self.with_tags = reader, ids, size, with_tags

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.ids[i]
        try:
            rgb = self.reader.load_image(image_id)
        except DataError as e:
            return {"id": image_id, "error": str(e)}
        x = F.interpolate(normalize(rgb)[None], size=(self.size, self.size), mode="bilinear", align_corners=False)
        item = {"id": image_id, "image": x[0], "rgb": torch.from_numpy(np.ascontiguousarray(rgb))}
        if self.with_tags:
            item["tags"] = torch.from_numpy(self.reader.tags(image_id).copy())
        return item


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _readable(items: list[dict[str, Any]], skip_bad: bool, bad: list[str]) -> list[dict[str, Any]]:
    """The items whose image was read; unreadable ones raise, or with ``skip_bad`` are logged and added to ``bad``."""
    good = []
    for item in items:
        if "error" not in item:
            good.append(item)
            continue
        if not skip_bad:
            raise DataError(f"{item['error']} (pass --skip-bad to log such images and go on)")
        log.warning("skipping %s: %s", item["id"], item["error"])
        bad.append(item["id"])
    return good


@dataclass
class _Refiner:
    """One image's crop-size CAMs of its tagged classes -> (CAMs at the original size, PAR-refined pseudo mask)."""

    par: PAR
    high: float
    low: float
    ignore_index: int
    down_scale: int  #: ``cam.par_downscale``: PAR runs at (H // down_scale, W // down_scale), as in training

    def __call__(self, cam: torch.Tensor, classes: torch.Tensor, rgb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """cam (k, S, S) on the device, classes (k,) long channel indices (class - 1) on the CPU, rgb (H, W, 3)
        uint8 -> (cam (k, H, W) float32, mask (H, W) uint8: 0 background, class indices, ignore_index)."""
        h, w = rgb.shape[:2]
        k = len(classes)
        if k == 0:  # no class: every pixel is background under both thresholds (what PAR would return)
            return np.zeros((0, h, w), np.float32), np.zeros((h, w), np.uint8)
        cam = F.interpolate(cam.float()[None], size=(h, w), mode="bilinear", align_corners=False)  # (1, k, H, W)
        image = rgb.to(cam.device).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W) in 0..1
        # PAR sees exactly the tagged channels it would pick from all C (in class order), so its labels 0..k index
        # [background, classes + 1]; passing only them spares a (C, H, W) buffer of zeros per image. Ignored
        # pixels come back as -1, which no index can be.
        label = refine_with_background(self.par, image, cam, cam.new_ones(1, k), high_thre=self.high,
                                       low_thre=self.low, ignore_index=-1, down_scale=self.down_scale)[0]  # (H, W)
        lut = torch.cat([classes.new_zeros(1), classes + 1]).to(label.device)  # label index -> class index
        mask = torch.where(label < 0, self.ignore_index, lut[label.clamp(min=0)])
        return cam[0].cpu().numpy(), mask.cpu().numpy().astype(np.uint8)


def _confidence_summary(scores: dict) -> dict[str, Any]:
    """The split's image confidences in brief, for ``export_<split>.json``: count, mean and quartiles."""
    values = np.array([c.image for c in scores.values()], dtype=np.float64)
    if not values.size:
        return {"images": 0}
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"images": int(values.size), "mean": round(float(values.mean()), 4),
            **{name: round(float(v), 4) for name, v in zip(("min", "q25", "median", "q75", "max"), q)}}


def _check_dataset(cfg: SecoConfig, checkpoint: str | Path, layout: str) -> None:
    """A dataset whose layout has another class count than the checkpoint's classifier cannot be exported."""
    from ..data.readers import READERS

    if layout in READERS and layout != cfg.data.layout:
        k = len(READERS[layout].default_classes)
        if k != cfg.data.num_classes:
            raise CheckpointError(
                f"checkpoint {checkpoint} was trained on {cfg.data.num_classes} classes ({cfg.data.layout} layout) but "
                f"--layout {layout} has {k}; export with a checkpoint trained on this dataset's classes"
            )


def export_split(
    checkpoint: str | Path,
    split: str,
    out_dir: str | Path,
    *,
    data_root: str | None = None,
    layout: str | None = None,
    options: ExportOptions | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Export CAMs and pseudo masks of every image of ``split``; returns counts and timings.

    ``data_root``/``layout`` default to the training run's; any dataset with the same classes works.

    Raises:
        ConfigError: bad options, or ``out_dir`` holds this split exported with other settings.
        CheckpointError: unreadable checkpoint, or one trained on another number of classes.
        DataError: an unreadable image (unless ``skip_bad``), a missing split or tags.
    """
    opt = options or ExportOptions()
    check_choices(opt, "ExportOptions.")
    mask_formats = tuple(f for f in opt.formats if f not in DERIVED_FORMATS)
    if not mask_formats:
        derived = ",".join(opt.formats)
        raise ConfigError(f"--format {derived}: {derived} {'are' if len(opt.formats) > 1 else 'is'} built from the "
                          f"exported masks; add h5 or png, e.g. --format png,{derived}")
    if HF_DATASET_FORMAT in opt.formats:
        require_pyarrow()  # fail before the model loads, not after the export
    if opt.crf:
        require_crf()  # fail before the model loads, not at the first image
    ctx = init_distributed(resolve_device(opt.device))
    device = ctx.device
    amp_dtype = resolve_amp(opt.amp, device)
    model, cfg = load_seco(checkpoint, device)
    c = cfg.cam
    high = c.high_thre if opt.high_thre is None else opt.high_thre
    low = c.low_thre if opt.low_thre is None else opt.low_thre
    if not 0 <= low <= high <= 1:
        raise ConfigError(f"thresholds low={low}, high={high} must satisfy 0 <= low <= high <= 1")
    root, lay = data_root or cfg.data.root, layout or cfg.data.layout
    size = opt.input_size or cfg.data.crop_size
    _check_dataset(cfg, checkpoint, lay)
    check_scales(opt.scales, size, model.encoder.patch_size)
    predicted = opt.tags == "predicted"
    reader = build_reader(lay, root, split, num_classes=cfg.data.num_classes, class_names=cfg.data.class_names or None,
                          ignore_index=cfg.data.ignore_index,
                          require_images=not opt.skip_bad, require_tags=not predicted,
                          max_side=cfg.data.max_side)  # the images as training saw them: masks of that size
    if {"cvat", "label-studio"} & set(opt.formats):  # a class name they cannot hold fails now, not after the export
        annotation_labels(reader.class_names, opt.uncertain_as)
    attrs = {
        "dataset_root": str(Path(root).resolve()), "layout": lay,
        "class_names": list(reader.class_names), "num_classes": cfg.data.num_classes,
        "ignore_index": cfg.data.ignore_index, "background_policy": "constant high/low thresholds + PAR",
        **seco_provenance(cfg, checkpoint),
        "scales": list(opt.scales), "flip": opt.flip, "cam_source": opt.cam_source,
        "tags_source": f"predicted>{opt.tag_threshold}" if predicted else "given", "crf": opt.crf,
        "high_thre": high, "low_thre": low, "input_size": size, "max_side": cfg.data.max_side,
        "confidence_score": CONFIDENCE_SCORE, "package_version": __version__, "config": config_to_dict(cfg),
    }
    par = PAR(c.par_dilations, c.par_iters).to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    pick = 0 if opt.cam_source == "final" else 1
    bad: list[str] = []
    timing = {"cam": 0.0, "refine": 0.0, "write": 0.0}
    t_start = time.perf_counter()
    with ArtifactWriter(out_dir, split, attrs, formats=mask_formats, overwrite=opt.overwrite,
                        is_primary=ctx.is_primary) as writer:
        done = writer.done_ids()
        todo = [i for i in reader.ids if i not in done]
        mine = todo[ctx.rank :: ctx.world_size]  # under torchrun: every N-th id; rank 0 merges in finalize
        loader = DataLoader(_ExportImages(reader, mine, size, with_tags=not predicted), batch_size=opt.batch_size,
                            num_workers=opt.num_workers, collate_fn=_collate)
        # rank 0's bar stands for all processes (their shards differ by at most one image)
        bar = tqdm(total=len(reader.ids), initial=len(done), desc=f"export {split}", unit="img",
                   disable=quiet or not ctx.is_primary or not sys.stderr.isatty())
        refine = _Refiner(par, high, low, cfg.data.ignore_index, cfg.cam.par_downscale)
        with torch.no_grad():
            for items in loader:
                good = _readable(items, opt.skip_bad, bad)
                if not good:
                    continue
                t0 = time.perf_counter()
                x = torch.stack([it["image"] for it in good]).to(device)  # (b, 3, S, S)
                if predicted:
                    with autocast():
                        scores = torch.sigmoid(model.classify(x)[pick].float()).cpu()  # (b, C)
                    for it, s in zip(good, scores):
                        it["tags"] = (s > opt.tag_threshold).float()
                # channels of the tagged classes, found on the CPU (no device sync); only they are computed
                classes = [torch.nonzero(it["tags"]).flatten() for it in good]
                with autocast():
                    cams = multi_scale_class_cams(model.cams, x, opt.scales, [c.to(device) for c in classes],
                                                  flip=opt.flip, source=pick)  # b x (k, S, S)
                t1 = time.perf_counter()
                timing["cam"] += t1 - t0
                for cam, cls, it in zip(cams, classes, good):
                    cam_k, mask_np = refine(cam, cls, it["rgb"])
                    if opt.crf:
                        mask_np = crf_refine_mask(it["rgb"].numpy(), mask_np, cfg.data.num_classes,
                                                  ignore_index=cfg.data.ignore_index)
                    keys = (cls + 1).numpy()
                    confidence = mask_confidence(cam_k, keys, mask_np, high=high, low=low,
                                                 ignore_index=cfg.data.ignore_index)
                    t2 = time.perf_counter()
                    writer.add(it["id"], cam_k, keys, mask_np, confidence=confidence)
                    t3 = time.perf_counter()
                    timing["refine"] += t2 - t1
                    timing["write"] += t3 - t2
                    t1 = t3
                bar.update(min(len(items) * ctx.world_size, bar.total - bar.n))
                bar.set_postfix(img_s=f"{bar.n / max(time.perf_counter() - t_start, 1e-9):.2f}", refresh=False)
        bar.close()
        t_flush = time.perf_counter()
    for name in (f for f in opt.formats if f in DERIVED_FORMATS and ctx.is_primary):
        DERIVED_FORMATS[name](Path(out_dir), split, opt, root)
    timing["write"] += time.perf_counter() - t_flush  # the queue's tail, assembling the HDF5 file, derived formats
    timing["total"] = time.perf_counter() - t_start
    bad = sorted(i for rank_bad in all_gather_objects(bad) for i in rank_bad)
    result = {
        "split": split, "images": len(reader.ids), "exported": len(todo) - len(bad), "skipped_done": len(done),
        "bad": bad, "seconds": {k: round(v, 4) for k, v in timing.items()}, "processes": ctx.world_size,
        "high_thre": high, "low_thre": low, "formats": list(opt.formats), "out_dir": str(out_dir),
    }
    if ctx.is_primary:
        result["confidence"] = _confidence_summary(read_confidence(out_dir, split) or {})  # seconds are rank 0's
        # The training config pointed at the exported dataset, next to the outputs: `seco evaluate` reads it.
        cfg.data.root, cfg.data.layout = str(root), lay
        save_config(cfg, Path(out_dir) / "config.yaml")
        atomic_write_text(export_report_path(out_dir, split), json.dumps(result, indent=2))
    barrier()
    return result
