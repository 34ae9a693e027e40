"""Masks of new images (``seco predict``): image sources and running a trained model over them.

The model is a :class:`~seco_labels.inference.predictors.Predictor` (:func:`seco_labels.inference.predictors.load_predictor`: a
fit-segmenter smp model or the SeCo decoder), which maps an (H, W, 3) uint8 RGB image to an (H, W) uint8 class
mask at the image's size. :func:`predict_to_folder` runs one over an image source (an :class:`ImageFolder`, or a
dataset reader of :mod:`seco_labels.data.readers` for a split) and writes ``OUT/<id>.png`` (VOC palette, as the
exporter writes) and, optionally, ``OUT/overlay/<id>.jpg``; it resumes (finished ids are skipped) and records its
settings in ``OUT/manifest_predict.json`` so that a rerun with other settings refuses.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from PIL import Image
from tqdm.auto import tqdm

from .. import __version__
from ..artifacts import manifest_path, read_manifest, save_mask_png, settings_changes
from ..data import build_reader
from ..data.images import decode_image, image_to_rgb
from ..data.readers import READERS, SegmentationReader
from ..errors import CheckpointError, ConfigError, DataError
from ..evaluation.show import VOC_COLORS, blend
from ..io import atomic_path, atomic_write_text, folder_lock, remove_stale_temps, sha256_file
from .predictors import Predictor

__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST_NAME",
    "OVERLAY_DIR",
    "ImageSource",
    "ImageFolder",
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
    if isinstance(images, SegmentationReader):  # the data section seco evaluate reads (artifacts.ArtifactSplit.record)
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
