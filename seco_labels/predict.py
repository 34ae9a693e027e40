"""Use a trained model on new images (``seco predict``): fit-segmenter smp models and the SeCo decoder.

:func:`load_predictor` accepts

- a ``seco fit-segmenter`` run folder (``SEG_DIR``, holding ``model/`` in smp's ``save_pretrained`` format and
  ``config.yaml``) or its ``model/`` folder: the smp model predicts each image at its own size, padded at the
  bottom/right to the model's input-size multiple (:func:`seco_labels.segmenters.predict_mask`), optionally plus
  its mirror image;
- a ``seco train`` checkpoint (``RUN_DIR/last.pt``) or its run folder: the SeCo decoder predicts with the
  paper's segmentation protocol of :mod:`seco_labels.segment` (multi-scale + flip logits, optional dense CRF).

A :class:`Predictor` maps an (H, W, 3) uint8 RGB image to an (H, W) uint8 class mask at the image's size.
:func:`predict_to_folder` runs one over an image source (an :class:`ImageFolder`, or a dataset reader of
:mod:`seco_labels.data.readers` for a split) and writes ``OUT/<id>.png`` (VOC palette, as the exporter writes) and,
optionally, ``OUT/overlay/<id>.jpg``; it resumes (finished ids are skipped) and records its settings in
``OUT/manifest_predict.json`` so that a rerun with other settings refuses.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .artifacts import manifest_path, read_manifest, save_mask_png, settings_changes
from .cams import check_scales
from .checkpoint import checkpoint_kind, load_checkpoint, load_seco
from .config_io import load_config_file
from .data import build_reader
from .data.images import decode_image, image_to_rgb
from .data.readers import READERS, SegmentationReader
from .errors import CheckpointError, ConfigError, DataError
from .io import atomic_path, atomic_write_text, folder_lock, remove_stale_temps, sha256_file
from .refine import require_crf
from .segment import SEG_SCALES, segment_image
from .segmenters import forward_logits, predict_mask, size_multiple
from .show import VOC_COLORS, blend
from .runtime import resolve_device

__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST_NAME",
    "OVERLAY_DIR",
    "ImageSource",
    "ImageFolder",
    "Predictor",
    "SmpPredictor",
    "SecoPredictor",
    "load_predictor",
    "split_images",
    "overlay_image",
    "predict_to_folder",
]

log = logging.getLogger(__name__)

#: image files ``--images DIR`` picks up (any case), in DIR and its subfolders
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: ``OUT/manifest_<MANIFEST_NAME>.json`` holds the settings of the predictions in OUT (see ``artifacts.read_manifest``)
MANIFEST_NAME = "predict"
#: overlays go to ``OUT/<OVERLAY_DIR>/<id>.jpg``
OVERLAY_DIR = "overlay"
#: the advisory lock of an OUT being written (:func:`seco_labels.io.folder_lock`): one seco predict per OUT
LOCK_NAME = ".lock_predict"
#: weight of the class colour in an overlay pixel (the image keeps the rest); background pixels keep the image
OVERLAY_ALPHA = 0.5


# -- image sources -------------------------------------------------------------------------------------------
class ImageSource(Protocol):
    """What :func:`predict_to_folder` reads: a :class:`ImageFolder` or a :class:`SegmentationReader` (a split)."""

    ids: list[str]
    root: Path

    def image_path(self, image_id: str) -> Path: ...

    def load_image(self, image_id: str) -> np.ndarray: ...


class ImageFolder:
    """Every image file under a folder (nested folders too), in sorted order.

    An id is the file's path relative to the folder without its suffix, '/'-separated (``cats/001`` for
    ``DIR/cats/001.jpg``); hidden files and folders and everything under ``exclude`` (an output folder inside
    ``DIR``) are left out.

    Raises:
        DataError: ``folder`` is not a folder, holds no image file, or two files give one id (``a.jpg``, ``a.png``).
        ConfigError: ``exclude`` is ``folder`` itself (masks would be written among the images).
    """

    def __init__(self, folder: str | Path, *, exclude: str | Path | None = None) -> None:
        self.root = Path(folder)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} not found")
        skip = Path(exclude).resolve() if exclude is not None else None
        if skip == self.root.resolve():
            raise ConfigError(f"--out {exclude} is the image folder itself: <id>.png masks would mix with (and could "
                              f"replace) the images; pass another folder, e.g. --out {self.root / 'masks'}")
        paths: dict[str, Path] = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root)
            if p.suffix.lower() not in IMAGE_SUFFIXES or any(part.startswith(".") for part in rel.parts):
                continue
            if skip is not None and p.resolve().is_relative_to(skip):
                continue  # our own outputs, when OUT is inside DIR: PNG masks are not inputs
            if not p.is_file():
                continue
            image_id = rel.with_suffix("").as_posix()
            if image_id in paths:
                raise DataError(f"{paths[image_id]} and {p} would both be written as {image_id}.png; rename one")
            paths[image_id] = p
        if not paths:
            raise DataError(f"no images in {self.root} (looked for {', '.join(IMAGE_SUFFIXES)} files, also in "
                            "subfolders)")
        self._paths = paths
        self.ids = list(paths)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        return self._paths[image_id]

    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB (grey, 16-bit, RGBA, palette images converted as the dataset readers do); DataError
        naming an unreadable file."""
        path = self._paths[image_id]
        with decode_image(path, "image") as img:
            return image_to_rgb(img, path)


# -- predictors ----------------------------------------------------------------------------------------------
@dataclass
class Predictor:
    """A trained model that maps one image to its class mask.

    Attributes:
        kind: ``"smp"`` (fit-segmenter) or ``"seco"`` (the SeCo decoder).
        weights: the file the weights came from (``model.safetensors`` or ``last.pt``).
        num_classes: K, background included; masks hold 0..K-1.
        data_root, layout: the training dataset (defaults of ``--split``), None when not recorded.
        settings: what changes the masks (recorded in ``OUT/manifest_predict.json``).
    """

    kind: str
    weights: Path
    num_classes: int
    device: torch.device
    data_root: str | None = None
    layout: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class indices 0..K-1 of an (H, W, 3) uint8 RGB image, at its size."""
        raise NotImplementedError


class _FlipSum(nn.Module):
    """Logits of the input plus those of its mirror image, flipped back (test-time flip of an smp model)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = forward_logits(self.model, torch.cat([x, x.flip(-1)]))  # (2B, K, H, W), one pass for both
        return y[: x.shape[0]] + y[x.shape[0] :].flip(-1)


@dataclass
class SmpPredictor(Predictor):
    """An smp model (fit-segmenter): one pass at the image's size padded to ``multiple``, optional flip."""

    model: nn.Module | None = None
    multiple: int = 32
    flip: bool = False

    def predict(self, image: np.ndarray) -> np.ndarray:
        # padding and cropping stay predict_mask's; the flip wraps the model so both see the same padded input
        net = _FlipSum(self.model) if self.flip else self.model
        return predict_mask(net, image, multiple=self.multiple, device=self.device)


@dataclass
class SecoPredictor(Predictor):
    """The SeCo decoder with :mod:`seco_labels.segment`'s protocol: the image resized to ``input_size`` squared,
    logits at ``scales`` x that size (+ mirror image), upsampled to the image size, max over scales, optional CRF."""

    model: nn.Module | None = None
    input_size: int = 448
    scales: tuple[float, ...] = SEG_SCALES
    flip: bool = True
    crf: bool = False

    def predict(self, image: np.ndarray) -> np.ndarray:
        return segment_image(self.model, image, input_size=self.input_size, scales=self.scales, flip=self.flip,
                             crf=self.crf, device=self.device)


def _model_kind(path: Path) -> tuple[str, Path]:
    """(``"smp"``, the smp model folder) or (``"seco"``, the checkpoint file) for ``--model``; CheckpointError
    naming the path when it is neither."""
    if not path.exists():
        raise CheckpointError(f"--model {path} not found; pass a fit-segmenter run folder (SEG_DIR or SEG_DIR/model) "
                              "or a seco train checkpoint (RUN_DIR/last.pt or RUN_DIR)")
    if path.is_dir():
        for folder in (path / "model", path):
            if (folder / "config.json").is_file():
                return "smp", folder
        if (path / "model").is_dir():
            raise CheckpointError(f"model folder {path / 'model'} holds no model (no config.json); the fit-segmenter "
                                  "run may not have finished: continue it with seco fit-segmenter --resume auto")
        if not (path / "last.pt").is_file():
            raise CheckpointError(
                f"--model {path} is neither a fit-segmenter run (no model/config.json), an smp model folder (no "
                "config.json) nor a seco train run (no last.pt); pass SEG_DIR, SEG_DIR/model, RUN_DIR or "
                "RUN_DIR/last.pt"
            )
        path = path / "last.pt"
    try:  # a peek at the checkpoint's kind: memory-mapped, so a large checkpoint is not read twice
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint, truncated, foreign: load_checkpoint says which, naming the file
        ckpt = load_checkpoint(path)
    if isinstance(ckpt, dict) and checkpoint_kind(ckpt) == "segmenter":
        run = path.parent
        hint = (f"pass its run folder {run}" if (run / "model" / "config.json").is_file() else
                "its model/ is written when training ends: continue it with seco fit-segmenter --resume auto")
        raise CheckpointError(f"{path} is a fit-segmenter training checkpoint, not a model to predict with; {hint}")
    return "seco", path


def _load_smp(folder: Path, device: torch.device, flip: bool) -> SmpPredictor:
    import segmentation_models_pytorch as smp  # seconds to import: only when an smp model is loaded

    weights = folder / "model.safetensors"
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'} is unreadable ({e}); save the model again") from None
    if "_model_class" not in config or not weights.is_file():
        raise CheckpointError(f"model folder {folder} holds no smp model (needs config.json with _model_class and "
                              "model.safetensors, as smp's save_pretrained writes)")
    k = config.get("classes")
    if not isinstance(k, int) or k < 2:
        raise CheckpointError(f"{folder / 'config.json'} records no number of classes (classes: {k!r}); save the "
                              "model with smp's save_pretrained")
    run_cfg = folder.parent / "config.yaml"  # SEG_DIR/config.yaml of fit-segmenter, when folder is SEG_DIR/model
    data = (load_config_file(run_cfg).get("data") or {}) if run_cfg.is_file() else {}
    if data.get("num_classes") not in (None, k):
        raise CheckpointError(f"{folder / 'config.json'} has {k} classes but {run_cfg} records data.num_classes="
                              f"{data['num_classes']}; the model folder is not this run's")
    try:
        model = smp.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # smp/safetensors/hub raise many types on a foreign or truncated folder
        raise CheckpointError(f"smp cannot load the model in {folder} ({e}); save it again") from None
    model = model.to(device).eval()
    multiple = size_multiple(model)
    return SmpPredictor(kind="smp", weights=weights, num_classes=k, device=device, data_root=data.get("root") or None,
                        layout=data.get("layout") or None, model=model, multiple=multiple, flip=flip,
                        settings={"flip": flip, "size_multiple": multiple, "arch": config["_model_class"],
                                  "encoder": config.get("encoder_name")})


def load_predictor(
    path: str | Path,
    *,
    device: str = "auto",
    scales: Sequence[float] | None = None,
    flip: bool | None = None,
    crf: bool = False,
    input_size: int | None = None,
) -> Predictor:
    """The model at ``path``, ready to predict (eval mode, on ``device``).

    Args:
        path: ``SEG_DIR`` or ``SEG_DIR/model`` of fit-segmenter, or ``RUN_DIR/last.pt`` or ``RUN_DIR`` of seco train.
        scales: SeCo only: multiples of ``input_size`` (default :data:`seco_labels.segment.SEG_SCALES`).
        flip: add the mirror image's logits; default on for SeCo (the protocol), off for smp models.
        crf: SeCo only: dense-CRF post-processing (needs the crf extra).
        input_size: SeCo only: base square side in pixels (default the training crop).

    Raises:
        CheckpointError: ``path`` is neither kind, holds no model, or records no number of classes.
        ConfigError: a SeCo-only option with an smp model, or a scale that leaves less than one ViT patch.
        CrfUnavailableError: ``crf`` without the crf extra.
    """
    kind, where = _model_kind(Path(path))
    dev = resolve_device(device)
    if kind == "smp":
        given = [name for name, v in (("--scales", scales), ("--crf", crf or None), ("--input-size", input_size))
                 if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to the SeCo decoder; {where} is an smp model (fit-segmenter), "
                              "which predicts at the image's own size (only --flip applies)")
        return _load_smp(where, dev, bool(flip))
    if crf:
        require_crf()  # fail before the model loads, not at the first image
    model, cfg = load_seco(where, dev)
    size = input_size or cfg.data.crop_size
    scales = tuple(SEG_SCALES if scales is None else scales)
    check_scales(scales, size, model.encoder.patch_size)
    flip = True if flip is None else flip
    return SecoPredictor(kind="seco", weights=where, num_classes=cfg.data.num_classes, device=dev,
                         data_root=cfg.data.root or None, layout=cfg.data.layout or None, model=model, input_size=size,
                         scales=scales, flip=flip, crf=crf,
                         settings={"scales": list(scales), "flip": flip, "crf": crf, "input_size": size})


def split_images(predictor: Predictor, split: str, *, data_root: str | None = None, layout: str | None = None,
                 skip_bad: bool = False) -> SegmentationReader:
    """The images of ``split`` of a dataset (default: the model's training dataset) as an image source.

    Raises:
        ConfigError: no ``data_root`` given and none recorded with the model.
        CheckpointError: the layout's classes are not the model's.
        DataError: see :func:`seco_labels.data.build_reader`.
    """
    root, lay = data_root or predictor.data_root, layout or predictor.layout or "voc"
    if not root:
        raise ConfigError(f"--split needs --data-root: {predictor.weights} records no training dataset")
    if lay in READERS and lay != predictor.layout:  # same check as export's: another layout's class count
        k = len(READERS[lay].default_classes)
        if k != predictor.num_classes:
            raise CheckpointError(f"model {predictor.weights} predicts {predictor.num_classes} classes but layout "
                                  f"{lay!r} has {k}; use a model trained on this dataset's classes")
    # skip_bad defers a missing image to its loading, where it is logged and skipped
    return build_reader(lay, root, split, num_classes=predictor.num_classes, require_images=not skip_bad,
                        require_tags=False)


# -- writing -------------------------------------------------------------------------------------------------
def overlay_image(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: the image blended with the VOC colour of each pixel's class (``alpha`` = colour weight);
    background (0) pixels keep the image, so the objects stand out."""
    blended = blend(image, VOC_COLORS[mask], alpha)
    return np.where((mask == 0)[..., None], image, blended)


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="JPEG", quality=90)


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """ConfigError when ``out`` holds predictions made with other settings (export's rule: keys only one side
    has, e.g. added by a newer version, and the volatile ``created``/``package_version`` do not count)."""
    before = read_manifest(out, MANIFEST_NAME)
    if before is None:
        return
    changes = settings_changes(before, settings)
    if changes:
        shown = "; ".join(changes[:5])
        raise ConfigError(f"{out} already holds predictions made with other settings "
                          f"({manifest_path(out, MANIFEST_NAME)}): {shown}. Pass --overwrite to predict every image "
                          "again, or choose another --out")


def predict_to_folder(
    predictor: Predictor,
    images: ImageSource,
    out_dir: str | Path,
    *,
    overlay: bool = False,
    overwrite: bool = False,
    skip_bad: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write ``OUT/<id>.png`` (VOC-palette 'P' PNG, class indices, the image's size) for every image, and with
    ``overlay`` ``OUT/overlay/<id>.jpg`` (the image blended with the mask's colours). Files are written atomically.

    Resumable: an id whose PNG (and overlay, if asked for) exists is skipped; an existing mask gets its missing
    overlay drawn from the PNG. The settings (the model's kind, weights hash and classes, where the images come
    from, the predictor's options) are recorded in ``OUT/manifest_predict.json``; a rerun with other settings raises
    ConfigError unless ``overwrite``, which predicts every image again (files of images not in ``images`` are left
    alone). For a split, ``OUT/config.yaml`` records its dataset, so ``seco evaluate --pred OUT --split S`` finds
    the ground truth.

    Runs holding ``OUT/.lock_predict`` (:data:`LOCK_NAME`); holding it, removes the temp files a killed run left.

    Returns:
        ``{"images", "predicted", "overlaid", "skipped_done", "bad" (ids), "seconds", "out"}``.

    Raises:
        ConfigError: other settings in ``OUT``. DataError: an unreadable image (unless ``skip_bad``).
        FolderBusyError: another process is writing ``OUT``. DiskFullError: a file did not fit (finished images
            are kept; a rerun resumes).
    """
    with folder_lock(Path(out_dir), LOCK_NAME, what="seco predict"):
        return _predict_to_folder(predictor, images, Path(out_dir), overlay=overlay, overwrite=overwrite,
                                  skip_bad=skip_bad, quiet=quiet)


def _predict_to_folder(predictor: Predictor, images: ImageSource, out: Path, *, overlay: bool, overwrite: bool,
                       skip_bad: bool, quiet: bool) -> dict[str, Any]:
    """:func:`predict_to_folder`'s work, under its lock."""
    if isinstance(images, SegmentationReader):
        source = {"split": images.split, "data_root": str(images.root.resolve()), "layout": images.layout}
    else:
        source = {"images": str(Path(images.root).resolve())}
    settings = {"model_kind": predictor.kind, "model_sha256": sha256_file(predictor.weights),
                "num_classes": predictor.num_classes, "source": source, **predictor.settings,
                "package_version": __version__}
    if not overwrite:
        _check_settings(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out, recursive=True)  # left by a killed run's atomic writes (their names only)
    atomic_write_text(manifest_path(out, MANIFEST_NAME), json.dumps(settings, indent=2, sort_keys=True) + "\n")
    if isinstance(images, SegmentationReader):  # the data section seco evaluate reads (cli.options._art_config)
        data = {"root": source["data_root"], "layout": images.layout, "num_classes": predictor.num_classes}
        atomic_write_text(out / "config.yaml", yaml.safe_dump({"data": data}, sort_keys=False))

    def mask_file(image_id: str) -> Path:
        return out / f"{image_id}.png"

    def overlay_file(image_id: str) -> Path:
        return out / OVERLAY_DIR / f"{image_id}.jpg"

    def done(image_id: str) -> bool:
        return mask_file(image_id).is_file() and (not overlay or overlay_file(image_id).is_file())

    todo = list(images.ids) if overwrite else [i for i in images.ids if not done(i)]
    counts = {"predicted": 0, "overlaid": 0}
    bad: list[str] = []
    start = time.perf_counter()
    for image_id in tqdm(todo, desc="predict", unit="img", disable=quiet or not sys.stderr.isatty()):
        try:
            image = images.load_image(image_id)
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{e} (pass --skip-bad to log such images and go on)") from None
            log.warning("skipping %s: %s", image_id, e)
            bad.append(image_id)
            continue
        if overwrite or not mask_file(image_id).is_file():
            mask = predictor.predict(image)
            save_mask_png(mask_file(image_id), mask)
            counts["predicted"] += 1
        else:  # only the overlay is missing: draw it from the finished mask
            with Image.open(mask_file(image_id)) as png:
                mask = np.asarray(png)
        if overlay:
            _save_jpeg(overlay_file(image_id), overlay_image(image, mask))
            counts["overlaid"] += 1
    return {"images": len(images.ids), **counts, "skipped_done": len(images.ids) - len(todo), "bad": bad,
            "seconds": round(time.perf_counter() - start, 3), "out": str(out)}
