"""Score pseudo masks (or raw CAMs) against ground-truth masks (docs/design.md §4, §7; ``seco evaluate``).

Predictions come from a *source*: anything with ``name``, ``ids()`` and ``load_mask(id)`` (:class:`MaskSource`)
or ``load_cam(id)`` (:class:`CamSource`). The artifact readers of :mod:`seco_labels.artifacts` (``<id>.png`` files:
:class:`PngMaskFolder`; the HDF5 file: ``ArtifactFile``) implement them, and :class:`ArrayCamSource` holds CAMs in
memory. Ground truth comes from a dataset reader (:func:`open_ground_truth` also accepts mask-only copies such as
``voc2012-gt``, which has no images).

Metric conventions are those of :mod:`seco_labels.evaluation.metrics`: GT pixels of ``ignore_index`` are skipped, mIoU is
the nanmean of the K per-class IoUs (classes present in the GT or the prediction).

Scores are taken at the ground truth's size. Predictions of an export whose images were bounded by
``data.max_side`` (docs/data.md "Large photos") are brought back to it: masks with nearest neighbour, CAMs
bilinearly (``max_side`` of :func:`evaluate_masks` and :func:`sweep_cam_threshold`); the GT is never resampled.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..artifacts import PngMaskFolder
from ..data.images import bounded_size, read_image_size, resize
from ..data.readers import READERS, SegmentationReader
from ..errors import ConfigError, DataError
from ..io import atomic_write_text
from .metrics import ConfusionMatrix

__all__ = [
    "MaskSource",
    "CamSource",
    "PngMaskFolder",
    "ArrayCamSource",
    "EvalResult",
    "SweepResult",
    "DEFAULT_THRESHOLDS",
    "open_ground_truth",
    "evaluate_masks",
    "sweep_cam_threshold",
    "write_reports",
    "PER_CLASS_COLUMNS",
]

#: the background-threshold grid of the WSSS literature: 0.05, 0.10, ..., 0.95
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))

#: column order of ``per_class_<split>.csv``
PER_CLASS_COLUMNS = (
    "index", "name", "iou", "precision", "recall", "fp_tp", "tp", "fp", "fp_bg", "fp_fg", "fn", "gt_pixels",
    "pred_pixels",
)


# -- sources -------------------------------------------------------------------------------------------------
@runtime_checkable
class MaskSource(Protocol):
    """Predicted masks by image id: (H, W) integer class indices, ``ignore_index`` for unlabelled pixels."""

    name: str  #: shown in messages (a folder or file path)

    def ids(self) -> set[str]: ...

    def load_mask(self, image_id: str) -> np.ndarray: ...


@runtime_checkable
class CamSource(Protocol):
    """Raw CAMs by image id: ``(cam (k, H, W) float in [0, 1], keys (k,) int)``.

    ``keys`` are the class indices of the k channels in the mask numbering (1..K-1; background 0 has no
    channel).
    """

    name: str

    def ids(self) -> set[str]: ...

    def load_cam(self, image_id: str) -> tuple[np.ndarray, np.ndarray]: ...


class ArrayCamSource:
    """CAMs held in memory: ``{image_id: (cam (k, H, W), keys (k,))}``."""

    def __init__(self, cams: dict[str, tuple[np.ndarray, np.ndarray]], name: str = "<in-memory CAMs>") -> None:
        self.cams = cams
        self.name = name

    def ids(self) -> set[str]:
        return set(self.cams)

    def load_cam(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        cam, keys = self.cams[image_id]
        return np.asarray(cam), np.asarray(keys)


# -- ground truth --------------------------------------------------------------------------------------------
def open_ground_truth(
    root: str | Path,
    split: str,
    *,
    layout: str = "voc",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> SegmentationReader:
    """The ``layout`` reader of ``split`` with every mask required and images optional; ``class_names`` (K names,
    background first) name the classes in the reports.

    GT-only copies (``voc2012-gt``: masks and split lists, no images) work: when an image is absent the mask's
    own size is taken as the image size.

    Raises:
        ConfigError: unknown layout.
        DataError: missing root, split list or mask (names the file).
    """
    try:
        base = READERS[layout]
    except KeyError:
        raise ConfigError(f"unknown dataset layout {layout!r}; valid layouts: {', '.join(sorted(READERS))}") from None

    class _MasksOnly(base):  # type: ignore[valid-type,misc]
        def _check_files(self, require_masks: bool, require_images: bool = True) -> None:
            # masks are what evaluation reads; images are not needed
            missing = [self.mask_path(i) for i in self.ids if not self.mask_path(i).is_file()]
            if missing:
                more = f" ({len(missing)} of {len(self.ids)} listed masks are missing)" if len(missing) > 1 else ""
                raise DataError(f"{missing[0]} (listed in {self.split_file}) not found; check --gt{more}")

        def image_size(self, image_id: str) -> tuple[int, int]:
            if self.image_path(image_id).is_file():
                return super().image_size(image_id)
            return read_image_size(self.mask_path(image_id), "mask", "Re-copy it")

    _MasksOnly.__name__ = _MasksOnly.__qualname__ = f"MasksOnly{base.__name__}"
    return _MasksOnly(root, split, num_classes=num_classes, class_names=class_names, ignore_index=ignore_index,
                      require_masks=True)


# -- results -------------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Accumulated confusion matrix of one evaluation plus where its inputs came from."""

    confusion: ConfusionMatrix
    class_names: list[str]
    num_images: int
    pred: str  #: the prediction source's name
    gt: str  #: ground-truth root
    split: str
    info: dict = field(default_factory=dict)  #: extra JSON-safe entries for the JSON report (e.g. the sweep)
    #: each image's mIoU (classes in its GT or prediction; None when it has no labelled pixel), by id
    per_image: dict[str, float | None] = field(default_factory=dict)

    def summary(self) -> dict:
        """Scalar metrics (see :meth:`ConfusionMatrix.summary`) plus the number of images and the inputs."""
        out = dict(self.confusion.summary())
        out.update({"num_images": self.num_images, "split": self.split, "pred": self.pred, "gt": self.gt,
                    "ignore_index": self.confusion.ignore_index})
        out.update(self.info)
        return out

    def per_class_rows(self) -> list[dict[str, object]]:
        return self.confusion.per_class_rows(self.class_names)

    def format_table(self) -> str:
        """Per-class IoU, precision, recall and FP/TP in percent (FP/TP as a ratio), then the mean lines."""

        def pct(x: float | None) -> str:
            return "    -" if x is None else f"{100 * x:5.1f}"

        def num(x: float | None) -> str:
            return "    -" if x is None else f"{x:5.2f}"

        width = max(12, *(len(n) for n in self.class_names))
        lines = [f"{'class':<{width}}  {'IoU':>5}  {'prec':>5}  {'rec':>5}  {'FP/TP':>5}"]
        for r in self.per_class_rows():
            lines.append(f"{r['name']:<{width}}  {pct(r['iou'])}  {pct(r['precision'])}  {pct(r['recall'])}  "
                         f"{num(r['fp_tp'])}")
        s = self.summary()
        lines.append("")
        lines.append(
            f"mIoU {pct(s['miou']).strip()} (classes in GT or prediction; over GT classes only: "
            f"{pct(s['miou_gt']).strip()})  pixel acc {pct(s['pixel_accuracy']).strip()}  "
            f"FP/TP {num(s['fp_tp']).strip()} (bg {num(s['fp_tp_bg']).strip()}, fg {num(s['fp_tp_fg']).strip()})"
        )
        lines.append(f"{self.num_images} images of split {self.split!r}; "
                     f"{pct(s['pred_ignored_fraction']).strip()}% of labelled GT pixels left unlabelled (255)")
        return "\n".join(lines)


@dataclass
class SweepResult:
    """mIoU of raw CAMs for each background threshold; ``best`` holds the confusion at the best threshold."""

    thresholds: list[float]
    mious: list[float]
    best_threshold: float
    best: EvalResult

    @property
    def best_miou(self) -> float:
        return self.best.confusion.miou()


# -- evaluation ----------------------------------------------------------------------------------------------
def _to_gt_size(pred: np.ndarray, gt_shape: tuple[int, ...], max_side: int, *, labels: bool) -> np.ndarray:
    """A (H, W) mask (``labels``: nearest neighbour) or (k, H, W) CAM (bilinear) exported at the GT's size bounded
    by ``max_side``, at the GT's size (H0, W0); any other prediction as it is (its size is checked after)."""
    size = pred.shape[-2:]
    h0, w0 = gt_shape[-2:]
    if not max_side or size == (h0, w0) or size != bounded_size((h0, w0), max_side):
        return pred
    if labels:
        return resize(pred.astype(np.uint8, copy=False), (h0, w0), labels=True)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), mode="F").resize(
        (w0, h0), resample=Image.Resampling.BILINEAR)) for c in pred.reshape(-1, *size)]
    return np.stack(channels).reshape(*pred.shape[:-2], h0, w0) if channels else np.zeros(
        (*pred.shape[:-2], h0, w0), np.float32)


def _check_ids(ids: Sequence[str], source: MaskSource | CamSource, what: str) -> None:
    have = source.ids()
    missing = [i for i in ids if i not in have]
    if missing:
        first = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} of {len(ids)} {what}s missing from {source.name}: {first}; export them first or "
            "evaluate the split they were exported for"
        )


def _select_ids(reader: SegmentationReader, ids: Iterable[str] | None) -> list[str]:
    if ids is None:
        return list(reader.ids)
    ids = list(ids)
    known = set(reader.ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise DataError(f"{len(unknown)} id(s) not in split {reader.split!r} ({reader.split_file}): "
                        f"{', '.join(unknown[:5])}")
    return ids


def evaluate_masks(
    pred: MaskSource | str | Path,
    reader: SegmentationReader,
    *,
    ignore_index: int = 255,
    ids: Iterable[str] | None = None,
    progress: bool = False,
    max_side: int = 0,
) -> EvalResult:
    """Confusion-matrix metrics of predicted masks against the reader's GT masks.

    Args:
        pred: a :class:`MaskSource`, or a folder of ``<id>.png`` masks.
        reader: ground truth (see :func:`open_ground_truth`); its ``num_classes`` and ``class_names`` are used.
        ignore_index: GT value that is skipped, and the prediction's "unlabelled" value.
        ids: a subset of the split (default: all its ids).
        progress: show a tqdm bar.
        max_side: the export's ``data.max_side``: a mask of the GT's size bounded by it is scaled up to the GT's
            size (nearest neighbour) before it is scored; 0 = masks must have the GT's size.

    Raises:
        DataError: a prediction is missing (count and the first 5 ids), unreadable, of another size than its
            GT mask, or holds values outside 0..K-1 and ``ignore_index`` (names the id).
    """
    source = pred if isinstance(pred, MaskSource) else PngMaskFolder(pred)
    ids = _select_ids(reader, ids)
    _check_ids(ids, source, "prediction")
    k = reader.num_classes
    cm = ConfusionMatrix(k, ignore_index)
    per_image: dict[str, float | None] = {}
    allowed = np.array([*range(k), ignore_index])
    for image_id in tqdm(ids, desc="evaluate", unit="img", disable=not progress):
        gt = reader.load_mask(image_id)
        mask = _to_gt_size(source.load_mask(image_id), gt.shape, max_side, labels=True)
        if mask.shape != gt.shape:
            raise DataError(
                f"prediction for {image_id} in {source.name} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its "
                f"ground truth is {gt.shape[1]}x{gt.shape[0]}; masks must be at the original image size"
            )
        bad = np.setdiff1d(np.unique(mask), allowed)
        if bad.size:
            raise DataError(
                f"prediction for {image_id} in {source.name} has values {bad.tolist()[:8]} outside 0..{k - 1} and "
                f"{ignore_index}; it was written for another number of classes (check --num-classes/--layout)"
            )
        one = ConfusionMatrix(k, ignore_index)
        one.update(gt, mask)
        cm.merge(one)
        miou = one.miou()
        per_image[image_id] = None if np.isnan(miou) else float(miou)
    return EvalResult(cm, list(reader.class_names), len(ids), source.name, str(reader.root), reader.split,
                      per_image=per_image)


def _check_cam(image_id: str, cam: np.ndarray, keys: np.ndarray, gt_shape: tuple[int, ...], k: int,
               name: str) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray(keys).reshape(-1).astype(np.int64)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim == 2:
        cam = cam[None]
    if cam.ndim != 3 or cam.shape[0] != keys.size:
        raise DataError(f"CAM of {image_id} in {name} has shape {cam.shape} for {keys.size} keys; "
                        "expected (k, H, W) with one key per channel")
    if cam.shape[1:] != gt_shape:
        raise DataError(f"CAM of {image_id} in {name} is {cam.shape[2]}x{cam.shape[1]} (WxH) but its ground truth "
                        f"is {gt_shape[1]}x{gt_shape[0]}; CAMs must be at the original image size")
    if keys.size and (keys.min() < 1 or keys.max() >= k):
        raise DataError(f"CAM keys of {image_id} in {name} are {keys.tolist()}; keys are class indices 1..{k - 1} "
                        "(background 0 has no channel)")
    if not np.isfinite(cam).all():
        raise DataError(f"CAM of {image_id} in {name} holds NaN or inf values; re-export it")
    return cam, keys


def sweep_cam_threshold(
    cams: CamSource,
    reader: SegmentationReader,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    ignore_index: int = 255,
    ids: Iterable[str] | None = None,
    progress: bool = False,
    max_side: int = 0,
) -> SweepResult:
    """Sweep the background threshold of raw CAMs and keep the best mIoU (the WSSS CAM evaluation).

    For threshold t a pixel's label is ``keys[argmax_c cam[c]]`` if ``max_c cam[c] > t``, else background 0:
    the published ``np.pad(cam, constant_values=t)`` then argmax, comparisons in float32. All thresholds are
    scored in one pass: each image adds a (GT, argmax class, threshold bin) histogram. CAMs of an export bounded
    by ``max_side`` are scaled up to the GT's size bilinearly first (:func:`evaluate_masks`).

    Returns:
        A :class:`SweepResult`; ``best_threshold`` is the lowest threshold with the highest mIoU, and
        ``best.info`` records the whole curve for ``cams_metrics_<split>.json``.

    Raises:
        DataError: a CAM is missing, of the wrong shape or size, has keys outside 1..K-1, or holds NaN.
    """
    thr = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float32)
    if thr.size == 0:
        raise ValueError("thresholds is empty")
    ids = _select_ids(reader, ids)
    _check_ids(ids, cams, "CAM")
    k = reader.num_classes
    nb = thr.size + 1
    hist = np.zeros((k, k, nb), dtype=np.int64)  # GT class, argmax fg class (0 = no channel), threshold bin
    for image_id in tqdm(ids, desc="CAM threshold sweep", unit="img", disable=not progress):
        gt = reader.load_mask(image_id)
        cam, keys = cams.load_cam(image_id)
        cam, keys = _check_cam(image_id, _to_gt_size(np.asarray(cam, dtype=np.float32), gt.shape, max_side,
                                                     labels=False), keys, gt.shape, k, cams.name)
        if keys.size:
            top = cam.max(0)
            label = keys[cam.argmax(0)]
            # bin b = number of thresholds below the top score: the pixel is foreground for thr[j] iff j < b
            b = np.searchsorted(thr, top, side="left")
        else:
            label = np.zeros(gt.shape, dtype=np.int64)
            b = np.zeros(gt.shape, dtype=np.int64)
        keep = (gt != ignore_index) & (gt < k)
        g = gt[keep].astype(np.int64)
        flat = (g * k + label[keep]) * nb + b[keep]
        hist += np.bincount(flat, minlength=k * k * nb).reshape(k, k, nb)
    # mats[j][g, l] for l >= 1 = sum_{b > j} hist[g, l, b]; everything else is background
    above = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]  # above[..., b] = sum_{b' >= b}
    mious, mats = [], []
    for j in range(thr.size):
        fg = above[..., j + 1] if j + 1 < nb else np.zeros((k, k), dtype=np.int64)
        mat = fg.copy()
        mat[:, 0] = hist.sum(axis=(1, 2)) - fg.sum(1)
        cm = ConfusionMatrix.from_matrix(mat, ignore_index)
        mats.append(cm)
        mious.append(cm.miou())
    scores = np.nan_to_num(np.asarray(mious), nan=-1.0)
    best = int(np.argmax(scores))
    curve = [{"threshold": round(float(t), 6), "miou": None if np.isnan(m) else float(m)} for t, m in zip(thr, mious)]
    result = EvalResult(
        mats[best], list(reader.class_names), len(ids), cams.name, str(reader.root), reader.split,
        info={"cam_threshold": round(float(thr[best]), 6), "threshold_sweep": curve},
    )
    return SweepResult([round(float(t), 6) for t in thr], [float(m) for m in mious], round(float(thr[best]), 6), result)


# -- reports -------------------------------------------------------------------------------------------------
def write_reports(result: EvalResult, out_dir: str | Path, *, prefix: str = "",
                  split_in_name: bool = False) -> tuple[Path, Path]:
    """Write the JSON report (summary with ``split``, conventions, per-class rows) and the per-class CSV, each
    atomically; returns the two paths.

    Names: ``<prefix>metrics_<split>.json`` and ``<prefix>per_class_<split>.csv`` with ``split_in_name`` (what
    ``seco evaluate`` and the demo write, so that one folder holds the reports of several splits side by side),
    else ``<prefix>metrics.json`` and ``<prefix>per_class.csv`` (a ``seco fit-segmenter`` run folder, which scores
    its one validation split). The split is ``result.split``; it is recorded in the JSON either way.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result.per_class_rows()
    doc = {
        **result.summary(),
        "conventions": {
            "miou": "nanmean of per-class IoU over the classes present in the GT or the prediction",
            "miou_gt": "mean IoU over the classes present in the GT",
            "ignore": f"GT pixels of {result.confusion.ignore_index} are skipped; predicted "
                      f"{result.confusion.ignore_index} pixels are skipped and counted in pred_ignored_pixels",
            "fp_tp": "sum over foreground classes of FP (pixels predicted as c whose GT is another class) / "
                     "sum of TP; fp_tp_bg and fp_tp_fg split FP by GT background vs other foreground",
        },
        "per_class": rows,
    }
    tail = f"_{result.split}" if split_in_name else ""
    json_path = out / f"{prefix}metrics{tail}.json"
    csv_path = out / f"{prefix}per_class{tail}.csv"
    atomic_write_text(json_path, json.dumps(doc, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(PER_CLASS_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r[c] is None else r[c]) for c in PER_CLASS_COLUMNS})
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path
