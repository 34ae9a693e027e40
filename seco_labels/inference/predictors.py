"""Trained models ready to predict masks of new images (``seco predict``): fit-segmenter smp models and the SeCo
decoder, loaded by :func:`load_predictor` from

- a ``seco fit-segmenter`` run folder (``SEG_DIR``, holding ``model/`` in smp's ``save_pretrained`` format and
  ``config.yaml``) or its ``model/`` folder: the smp model predicts each image at its own size, padded at the
  bottom/right to the model's input-size multiple (:func:`seco_labels.segmenters.predict_mask`), optionally plus
  its mirror image;
- a ``seco train`` checkpoint (``RUN_DIR/last.pt``) or its run folder: the SeCo decoder predicts with the
  paper's segmentation protocol of :mod:`seco_labels.inference.decoder_masks` (multi-scale + flip logits, optional dense CRF).

A :class:`Predictor` maps an (H, W, 3) uint8 RGB image to an (H, W) uint8 class mask at the image's size; running
one over a folder or a split is :mod:`seco_labels.inference.predict_folder`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..config_io import load_config_file
from ..errors import CheckpointError, ConfigError
from ..method.cams import check_scales
from ..method.refine import require_crf
from ..runtime.checkpoint import checkpoint_kind, load_checkpoint, load_seco
from ..runtime.device import resolve_device
from ..segmenters import forward_logits, predict_mask, size_multiple
from .decoder_masks import SEG_SCALES, segment_image

__all__ = ["Predictor", "SmpPredictor", "SecoPredictor", "load_predictor"]


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
    max_side: int = 0  #: the run's data.max_side: images are bounded to it, as the model was trained

    def predict(self, image: np.ndarray) -> np.ndarray:
        # padding and cropping stay predict_mask's; the flip wraps the model so both see the same padded input
        net = _FlipSum(self.model) if self.flip else self.model
        return predict_mask(net, image, multiple=self.multiple, device=self.device, max_side=self.max_side)


@dataclass
class SecoPredictor(Predictor):
    """The SeCo decoder with :mod:`seco_labels.inference.decoder_masks`'s protocol: the image resized to ``input_size`` squared,
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
    max_side = int(data.get("max_side") or 0)  # the size its training images were bounded to
    return SmpPredictor(kind="smp", weights=weights, num_classes=k, device=device, data_root=data.get("root") or None,
                        layout=data.get("layout") or None, model=model, multiple=multiple, flip=flip,
                        max_side=max_side,
                        settings={"flip": flip, "size_multiple": multiple, "arch": config["_model_class"],
                                  "encoder": config.get("encoder_name"), "max_side": max_side})


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
        scales: SeCo only: multiples of ``input_size`` (default :data:`seco_labels.inference.decoder_masks.SEG_SCALES`).
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
