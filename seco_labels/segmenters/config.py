"""Typed configuration of ``seco fit-segmenter``: data, model, optimiser, loop (docs/design.md §5-6).

Defaults are the usual DeepLab recipe on one GPU: 512 px crops, batch 8, SGD lr 0.01 (momentum 0.9, weight decay
1e-4), poly decay (power 0.9) over 20k iterations. CPU runs pass smaller values on the command line.

Layering (lowest to highest priority): these defaults -> ``--config FILE`` (a nested mapping, e.g. a run's own
``config.yaml``) -> ``--set key=value`` -> named CLI options. The resolved config is saved as ``RUN_DIR/config.yaml``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import LoopConfig, apply_overrides, set_values
from ..config_io import check_choices, load_config_file
from ..errors import ConfigError

__all__ = [
    "SegDataConfig",
    "SegModelConfig",
    "SegOptimConfig",
    "SegTrainConfig",
    "SegmenterConfig",
    "RETIRED_KEYS",
    "segmenter_config",
]

log = logging.getLogger(__name__)


@dataclass
class SegDataConfig:
    """Training labels, images and augmentation."""

    labels: str = ""  #: "gt" (the split's GT masks) or an export folder (cams_<split>.h5 and/or masks_<split>/)
    root: str = ""  #: dataset root; "" = the export's dataset_root (manifest_<split>.json)
    layout: str = ""  #: reader name: voc | coco | coco-seco; "" = the export's, else voc
    num_classes: int | None = None  #: K including background; None = the layout's (voc 21, coco 81)
    #: the K class names, background first; () = the export's own names for its dataset, else the layout's
    class_names: tuple[str, ...] = ()
    ignore_index: int = 255
    split: str = "train_aug"  #: training split (its ids must all have a label)
    val_split: str = "val"  #: GT-scored split; "" for none
    #: long side, pixels, that larger images (and masks) are downscaled to for training, validation and prediction;
    #: None = the export's data.max_side (what its masks were made at), 0 for GT labels; 0 = images at their own size
    max_side: int | None = None
    #: train only on the pseudo masks whose confidence (docs/export.md "Confidence") is at least this, in [0, 1];
    #: None = every image. Not with labels "gt"
    min_confidence: float | None = None
    #: train only on this share (0, 1] of the pseudo masks, the most confident; None = every image
    keep_share: float | None = None
    #: filled when the run starts: how many images min_confidence or keep_share kept (None when neither is set)
    kept_images: int | None = None
    crop_size: int = 512  #: square training crop, pixels; rounded up to the model's size multiple
    scale_range: tuple[float, float] = (0.5, 2.0)  #: random rescale factor before the crop
    flip_p: float = 0.5  #: horizontal flip probability
    batch_size: int = 8
    num_workers: int = 4


@dataclass
class SegModelConfig:
    """Any segmentation_models_pytorch architecture and encoder."""

    arch: str = "deeplabv3plus"  #: a key of smp.MODEL_ARCHITECTURES_MAPPING
    encoder: str = "resnet50"  #: an smp encoder name or tu-<timm model>
    #: the encoder's starting weights: smp's own name (imagenet, ssl, ...), a timm tag or hf-hub:ORG/NAME for tu-
    #: encoders (imagenet = timm's default tag), a local file, or random; a run records the resolved name
    #: (docs/segmenters.md "Encoder weights"). None (configs of older runs) = random
    encoder_weights: str | None = "imagenet"
    #: sha256 of the weights file, filled when the run starts; set it to pin the file (a prefix of 8+ hex digits)
    encoder_weights_sha256: str = ""
    kwargs: dict = field(default_factory=dict)  #: extra smp.create_model arguments, e.g. {"encoder_depth": 3}


@dataclass
class SegOptimConfig:
    """SGD (or AdamW) with optional linear warm-up, then poly decay per iteration."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  #: SGD only
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  #: AdamW only
    head_lr_mult: float = 1.0  #: decoder + head lr = lr x this (10 is common with a pretrained encoder)
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6  #: lr multiplier at step 0 of the warm-up
    power: float = 0.9


@dataclass
class SegTrainConfig(LoopConfig):
    """The loop of ``seco fit-segmenter``: length, seed, device, precision, checkpoints, logging and validation
    (:class:`seco_labels.config.LoopConfig`; nothing of ``seco train`` alone, such as ``train.compile``)."""

    iters: int = 20000  #: the usual DeepLab schedule's length


#: keys that fit-segmenter runs recorded in config.yaml and last.pt while their train section was ``seco train``'s
#: (SeCo-only, never read by the segmenter): a ``--config`` file holding them loads without them (with a note), and a
#: resume ignores them in the checkpoint's config (``SegmenterTrainer.SILENT_KEYS``). ``--set`` refuses them.
RETIRED_KEYS: tuple[str, ...] = ("train.compile",)


@dataclass
class SegmenterConfig:
    """The resolved configuration of one ``seco fit-segmenter`` run."""

    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    optim: SegOptimConfig = field(default_factory=SegOptimConfig)
    train: SegTrainConfig = field(default_factory=SegTrainConfig)

    def validate(self) -> "SegmenterConfig":
        """Raise :class:`ConfigError` naming the key of the first inconsistent value; return self.

        Architecture and encoder names are checked against smp by :func:`seco_labels.segmenters.check_names`.
        """
        check_choices(self)
        d, o, t = self.data, self.optim, self.train
        if not d.labels:
            raise ConfigError("no training labels: pass --labels ART_DIR (an export folder) or --labels gt")
        if d.num_classes is not None and (not isinstance(d.num_classes, int) or d.num_classes < 2):
            raise ConfigError(f"data.num_classes={d.num_classes}: need background plus at least one class")
        if d.min_confidence is not None or d.keep_share is not None:
            if d.labels == "gt":
                raise ConfigError("--min-confidence and --keep-share choose pseudo masks by their export's confidence; "
                                  "--labels gt has none: drop them, or pass --labels ART_DIR")
            if d.min_confidence is not None and d.keep_share is not None:
                raise ConfigError(f"data.min_confidence={d.min_confidence} and data.keep_share={d.keep_share}: pass "
                                  "one of --min-confidence and --keep-share")
            if d.min_confidence is not None and not 0 <= d.min_confidence <= 1:
                raise ConfigError(f"data.min_confidence={d.min_confidence}: confidences lie in [0, 1]")
            if d.keep_share is not None and not 0 < d.keep_share <= 1:
                raise ConfigError(f"data.keep_share={d.keep_share}: give the share of images to keep, in (0, 1]")
        if d.crop_size < 1 or d.batch_size < 1:
            raise ConfigError(f"data.crop_size={d.crop_size} and data.batch_size={d.batch_size} must be positive")
        if not 0 < d.scale_range[0] <= d.scale_range[1]:
            raise ConfigError(f"data.scale_range={d.scale_range} must be (low, high) with 0 < low <= high")
        if not 0 <= d.flip_p <= 1:
            raise ConfigError(f"data.flip_p={d.flip_p} is a probability in [0, 1]")
        if o.lr <= 0:
            raise ConfigError(f"optim.lr={o.lr} must be positive")
        if t.iters < 1 or t.ckpt_every < 1 or t.log_every < 1:
            raise ConfigError(f"train.iters={t.iters}, train.ckpt_every={t.ckpt_every} and train.log_every="
                              f"{t.log_every} must be positive")
        pin = self.model.encoder_weights_sha256
        if pin and not re.fullmatch(r"[0-9a-fA-F]{8,64}", str(pin)):
            raise ConfigError(f"model.encoder_weights_sha256={pin!r}: give the weights file's sha256 hex digest (or "
                              "a prefix of at least 8 hex digits), or '' for none")
        if not isinstance(self.model.kwargs, dict):
            raise ConfigError(f"model.kwargs={self.model.kwargs!r} must be a mapping of smp.create_model arguments")
        for reserved in ("arch", "encoder_name", "encoder_weights", "classes"):
            if reserved in self.model.kwargs:
                raise ConfigError(f"model.kwargs sets {reserved!r}; use the dedicated option (--arch, --encoder, "
                                  "--encoder-weights, --num-classes) instead")
        return self


def segmenter_config(
    config_file: str | None = None, overrides: tuple[str, ...] | list[str] = (), **named: Any
) -> SegmenterConfig:
    """Defaults, then ``config_file`` (nested mapping), then ``--set`` items, then ``named`` dotted keys whose value
    is not None (``{"train.iters": 100}``). Returns the validated config."""
    cfg = SegmenterConfig()
    if config_file:
        # top-level keys are sections: nested mappings apply
        set_values(cfg, _without_retired(load_config_file(config_file), config_file))
    apply_overrides(cfg, list(overrides))
    set_values(cfg, {k: v for k, v in named.items() if v is not None})
    return cfg.validate()


def _without_retired(mapping: dict[str, Any], source: str) -> dict[str, Any]:
    """``mapping`` (a config file's) without the :data:`RETIRED_KEYS` an older run's config.yaml holds, each one
    dropped with a note."""
    out = dict(mapping)
    for key in RETIRED_KEYS:
        section, name = key.split(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != name}
            log.warning("%s: ignoring %s=%r, recorded by fit-segmenter runs of older versions (the segmenter never "
                        "read it)", source, key, mapping[section][name])
    return out
