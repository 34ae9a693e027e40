"""Typed configuration: dataclasses grouped by concern, their validation, presets, and layering onto a config.

Layering (lowest to highest priority): preset -> ``--config FILE`` -> ``--set key=value`` / named CLI options.
Every number of docs/design.md §3 lives here, never as a literal in the training code. Reading config files,
converting values to a field's type and writing a resolved config out are :mod:`seco_labels.config_io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from .config_io import check_choices, coerce, either, field_types, get_key, set_key
from .errors import ConfigError
from .runtime.pretrained import PAPER_BACKBONE_WEIGHTS, RANDOM

__all__ = [
    "AmpMode",
    "LogKind",
    "EnergyFilter",
    "DataConfig",
    "ModelConfig",
    "CamConfig",
    "DecomposeConfig",
    "LossTerm",
    "LossConfig",
    "OptimConfig",
    "LoopConfig",
    "TrainConfig",
    "SecoConfig",
    "PRESETS",
    "get_preset",
    "list_presets",
    "apply_overrides",
    "set_values",
    "config_from_dict",
    "parse_override",
    "SCHEDULE_KEYS",
    "dotted_keys",
    "scale_schedule",
    "default_max_side",
]

# The fixed choices of config values: a value that is none of a field's Literal is refused where YAML, JSON and
# --set values are converted (config_io.coerce) and by validate() (values set in code).
#: ``train.amp`` (both trainers) and ``ExportOptions.amp``: :func:`seco_labels.runtime.precision.resolve_amp`
AmpMode = Literal["auto", "bf16", "fp16", "off"]
#: ``train.log``: the keys of :data:`seco_labels.training.sinks.SINKS`
LogKind = Literal["jsonl", "tensorboard"]
#: ``loss.energy_filter``: the keys of :data:`seco_labels.method.energy.GAUSSIAN_FILTERS` (written out here, where
#: importing them would import torch; tests/test_config_choices.py checks that the two agree)
EnergyFilter = Literal["lattice", "exact"]


@dataclass
class DataConfig:
    """Where the images and tags are, and how training views are made (docs/design.md §3)."""

    root: str = ""  #: dataset root folder
    layout: str = "voc"  #: reader name: voc | coco | coco-seco | folder (images/ + tags.csv: docs/data.md)
    train_split: str = "train_aug"
    val_split: str = "val"
    num_classes: int = 21  #: including background (class 0)
    #: the K class names, background first; () = the layout's own (voc, coco) or class_1... (``--classes FILE``)
    class_names: tuple[str, ...] = ()
    ignore_index: int = 255
    crop_size: int = 448  #: side of the square training crop, pixels
    #: long side, pixels, that larger images (and their masks) are downscaled to when read, for training and export;
    #: 0 = off. ``seco train`` sets 2 x crop_size for the folder layout unless given (docs/data.md "Large photos")
    max_side: int = 0
    rescale_range: tuple[float, float] = (0.5, 2.0)  #: random rescale factor of the training image
    global_crop_scale: tuple[float, float] = (0.4, 1.0)  #: area fraction of the second global view's crop
    #: horizontal flip of the image and of the second global view; 0 where a mirrored class is another (digits, text)
    flip_p: float = 0.5
    strong_flip_p: float = 0.5  #: published code flips the strong view independently; 0 keeps crops aligned
    batch_size: int = 4  #: images per step, the global batch: split evenly over torchrun processes
    num_workers: int = 2


@dataclass
class ModelConfig:
    """The SeCo network (docs/design.md §2)."""

    backbone: str = "vit_base_patch16_224"  #: any timm ViT with a class token
    #: pretrained weights: a timm tag (the paper's by default), hf-hub:ORG/NAME, a local file, or "random"
    #: (seco_labels.runtime.pretrained; names resolve through the Hugging Face cache)
    backbone_weights: str | None = PAPER_BACKBONE_WEIGHTS
    #: sha256 of the weights file, filled when a run starts (config.yaml, checkpoint); set it to pin the file: a run
    #: whose resolved weights have another hash (or do not start with this prefix) is refused
    backbone_weights_sha256: str = ""
    backbone_kwargs: dict = field(default_factory=dict)  #: extra timm kwargs, e.g. {"depth": 4} in tests
    aux_layer: int = -3  #: block whose (un-normed) tokens feed the aux classifier
    proj_hidden: int = 2048  #: hidden width of the projection MLP; output width = embed dim
    aspp_rates: tuple[int, ...] = (6, 12, 18, 24)
    ema_momentum: float = 0.999  #: local teacher EMA
    reservoir_size: int = 4608  #: FIFO of teacher keys; a multiple of batch_size * (2 + num_local_crops)
    proto_momentum: float = 0.9  #: eta of the prototype EMA
    proto_start: int = 600  #: first iteration that updates the prototypes


@dataclass
class CamConfig:
    """Online CAMs, PAR and background thresholds (docs/design.md §4)."""

    scales: tuple[float, ...] = (1.0, 0.5, 0.75, 1.5)  #: training-time multi-scale CAM scales
    flip: bool = True  #: also the flipped image's CAMs at every scale (published: always; False with data.flip_p=0)
    bkg_thre: float = 0.5
    high_thre: float = 0.7
    low_thre: float = 0.25
    par_dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    par_iters: int = 10
    par_downscale: int = 2
    roi_final_cam_from: int = 10000  #: decomposition uses the aux CAM before this iteration, the final CAM after
    seg_final_cam_from: int = 0  #: decoder pseudo labels use the aux CAM before this iteration (COCO: 12000)


@dataclass
class DecomposeConfig:
    """Patch decomposition: local crops and their tags (docs/design.md §3 steps 1-3)."""

    num_local_crops: int = 10
    local_crop_size: int = 64  #: pixels
    bg_fraction: float = 0.2  #: phi: a crop with at most this much fg+uncertain is background
    area_rule: Literal["label_sum", "fraction"] = "label_sum"  #: "label_sum" (published code) or "fraction" (paper)


@dataclass
class LossTerm:
    """One term of the objective: ``weight`` applies from iteration ``start`` (0-based) on; weight 0 turns it off."""

    weight: float = 1.0
    start: int = 0


@dataclass
class LossConfig:
    """Weights, schedules and hyper-parameters of every loss (docs/design.md §3)."""

    cls: LossTerm = field(default_factory=lambda: LossTerm(1.0, 0))
    aux: LossTerm = field(default_factory=lambda: LossTerm(1.0, 0))
    ptc: LossTerm = field(default_factory=lambda: LossTerm(0.3, 0))
    # Published code gates with `n_iter <= 1000`, i.e. active from iteration 1001.
    lig: LossTerm = field(default_factory=lambda: LossTerm(0.5, 1001))
    lil: LossTerm = field(default_factory=lambda: LossTerm(0.5, 1001))
    seg: LossTerm = field(default_factory=lambda: LossTerm(0.12, 2001))
    reg: LossTerm = field(default_factory=lambda: LossTerm(0.05, 2001))
    lig_tau: float = 0.1
    lil_tau: float = 0.08
    rectify: bool = True  #: re-tag crops whose positives look like noise as background
    rectify_ratio: float = 10.0
    #: "code" (published normalisation) or "supcon" (paper, mean over positives)
    lil_variant: Literal["code", "supcon"] = "code"
    #: images per loss-normalisation group: PTC, seg, LIL and LIG take their counts (pairs, pixels, rows, positives,
    #: present classes; LIL's step keys) over each group of this many consecutive images of the global batch and the
    #: group losses are averaged, as a published run on batch/N GPUs x N images normalises per GPU; 0 = the whole
    #: global batch. Any number of processes gives the same losses (docs/distributed.md "Loss normalisation")
    norm_group_size: int = 0
    energy_weight: float = 1e-7  #: inner scale of the CRF energy (published DenseEnergyLoss weight)
    energy_sigma_rgb: float = 15.0
    energy_sigma_xy: float = 100.0  #: pixels at crop resolution
    energy_scale: float = 0.5  #: the energy is computed on an image downscaled by this factor
    #: Gaussian filter of the energy: "lattice" (published permutohedral lattice, linear in pixels, ~0.6x the
    #: exact sum, which the published strength includes) or "exact" (dense, quadratic in pixels)
    energy_filter: EnergyFilter = "lattice"


@dataclass
class OptimConfig:
    """AdamW with warm-up then poly decay; heads at ``head_lr_mult`` x lr."""

    lr: float = 6e-5
    head_lr_mult: float = 10.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6  #: lr multiplier at step 0 of the warm-up
    power: float = 0.9
    #: gradients of trainable parameters no active loss term reaches (projection head before LIL/LIG start, decoder
    #: before seg/reg): "zero" (published: its loop adds every term from step 0 as 0 x term, so AdamW decays those
    #: weights and advances their moments and step counts) or "none" (they stay None and AdamW leaves them alone)
    unstarted_grads: Literal["zero", "none"] = "zero"


@dataclass
class LoopConfig:
    """What the training loop reads, in ``seco train`` and ``seco fit-segmenter`` alike
    (:func:`seco_labels.training.loop.run_loop` and the two trainers): loop length, seed, device, precision,
    checkpoints, logging and validation. Each command's ``train`` section subclasses it and gives ``iters`` its
    own default."""

    iters: int
    seed: int = 0
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    #: auto (bf16 if supported else fp16 on CUDA, fp32 on CPU) | bf16 | fp16 (on CUDA or CPU) | off
    amp: AmpMode = "auto"
    ckpt_every: int = 1000
    val_every: int = 2000
    log_every: int = 20
    val_max_images: int = 0  #: 0 = the whole val split
    #: where the log goes besides RUN_DIR/metrics.jsonl (always written): jsonl (nowhere else) | tensorboard
    #: (RUN_DIR/tensorboard/, needs the [tensorboard] extra)
    log: LogKind = "jsonl"


@dataclass
class TrainConfig(LoopConfig):
    """``seco train``'s loop: :class:`LoopConfig` and torch.compile."""

    iters: int = 20000  #: the published VOC schedule (each preset sets its own)
    #: torch.compile the blocks of the student and teacher ViTs (regional: the first step compiles in seconds to a
    #: minute; checkpoints unchanged)
    compile: bool = False


@dataclass
class SecoConfig:
    """The whole resolved configuration of a run; saved as ``RUN_DIR/config.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    decompose: DecomposeConfig = field(default_factory=DecomposeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "voc"

    def validate(self) -> "SecoConfig":
        """Raise :class:`ConfigError` naming the key of the first inconsistent value; return self."""
        # imported here: the data package imports torch, which importing config does not
        from .data.classes import check_class_names

        check_choices(self)
        d, m, c, k = self.data, self.model, self.cam, self.decompose
        if d.num_classes < 2:
            raise ConfigError(f"data.num_classes={d.num_classes}: need background plus at least one class")
        if d.class_names:
            check_class_names(d.class_names, "data.class_names")
            if len(d.class_names) != d.num_classes:
                raise ConfigError(
                    f"data.class_names names {len(d.class_names)} classes but data.num_classes={d.num_classes}; "
                    "give --classes FILE alone (it sets both) or make them agree"
                )
        if not 0 <= c.low_thre <= c.high_thre <= 1:
            raise ConfigError(
                f"cam.low_thre={c.low_thre} and cam.high_thre={c.high_thre} must satisfy 0 <= low <= high <= 1"
            )
        group = self.loss.norm_group_size
        if group < 0 or (group and d.batch_size % group):
            raise ConfigError(
                f"loss.norm_group_size={group} must be 0 (the whole batch) or divide data.batch_size={d.batch_size}"
            )
        if d.max_side < 0:
            raise ConfigError(f"data.max_side={d.max_side}: give the long side in pixels that larger images are "
                              "downscaled to, or 0 to read images at their own size")
        if k.local_crop_size >= d.crop_size:
            raise ConfigError(
                f"decompose.local_crop_size={k.local_crop_size} must be smaller than data.crop_size={d.crop_size}"
            )
        keys_per_step = d.batch_size * (2 + k.num_local_crops)
        if m.reservoir_size % keys_per_step:
            # the reservoir is a FIFO that takes whole steps of keys (docs/design.md §3): say which values fit
            per_image = 2 + k.num_local_crops
            batches = [b for b in range(1, m.reservoir_size // per_image + 1)
                       if m.reservoir_size % (b * per_image) == 0]
            near = sorted(sorted(batches, key=lambda b: (abs(b - d.batch_size), b))[:4])
            lower = m.reservoir_size // keys_per_step * keys_per_step
            sizes = [n for n in (lower, lower + keys_per_step) if n > 0]
            hints = [f"keep the reservoir with a batch size of {either(near)} (--batch-size)"] if near else []
            hints.append(f"keep the batch size with --set model.reservoir_size={either(sizes)}")
            raise ConfigError(
                f"model.reservoir_size={m.reservoir_size} must be a multiple of data.batch_size * (2 + "
                f"decompose.num_local_crops) = {d.batch_size} * {per_image} = {keys_per_step}; {', or '.join(hints)}"
            )
        if not c.scales or any(s <= 0 for s in c.scales):
            raise ConfigError(f"cam.scales={c.scales}: give one or more positive scales")
        return self


def _voc() -> SecoConfig:
    return SecoConfig(preset="voc").validate()


def _coco() -> SecoConfig:
    # Values of the published scripts/train_coco.py.
    cfg = SecoConfig(preset="coco")
    cfg.data.layout = "coco-seco"
    cfg.data.num_classes = 81
    cfg.data.train_split = "train"
    cfg.cam.high_thre = 0.65
    cfg.cam.bkg_thre = 0.45
    cfg.cam.scales = (1.0, 0.5, 0.75, 1.25, 1.5)
    cfg.cam.roi_final_cam_from = 50000
    cfg.cam.seg_final_cam_from = 12000
    cfg.model.proto_momentum = 0.99
    cfg.model.proto_start = 6000
    cfg.loss.ptc = LossTerm(0.2, 8001)
    cfg.loss.lig = LossTerm(0.5, 12001)
    cfg.loss.lil = LossTerm(0.3, 12001)
    cfg.loss.seg = LossTerm(0.12, 16001)
    cfg.loss.reg = LossTerm(0.05, 16001)
    cfg.train.iters = 80000
    # The published COCO run: 2 GPUs x 4 images (--spg 4); our batch is the global one (docs/distributed.md),
    # normalised per 4 images as each of those GPUs normalised its own losses.
    cfg.data.batch_size = 8
    cfg.loss.norm_group_size = 4
    return cfg.validate()


def _demo() -> SecoConfig:
    """A tiny ViT on small crops: the whole schedule of the VOC preset compressed into 300 CPU iterations."""
    cfg = SecoConfig(preset="demo")
    cfg.data.root = str(Path(__file__).resolve().parent / "demo_data" / "voc-demo")
    cfg.data.train_split = "train"
    cfg.data.crop_size = 128
    cfg.data.num_workers = 0
    cfg.model.backbone = "vit_tiny_patch16_224"
    cfg.model.backbone_weights = RANDOM  # offline, and what a CPU learns from 32 images shows the pipeline only
    cfg.model.proj_hidden = 256
    cfg.model.reservoir_size = 4 * 12 * 10
    cfg.model.proto_start = 40
    cfg.cam.scales = (1.0, 0.5, 1.5)
    cfg.cam.roi_final_cam_from = 150
    cfg.decompose.local_crop_size = 32
    cfg.loss.lig = LossTerm(0.5, 61)
    cfg.loss.lil = LossTerm(0.5, 61)
    cfg.loss.seg = LossTerm(0.12, 121)
    cfg.loss.reg = LossTerm(0.05, 121)
    cfg.optim.lr = 2e-4
    cfg.optim.warmup_iters = 30
    cfg.train.iters = 300
    cfg.train.ckpt_every = 50
    cfg.train.val_every = 100
    cfg.train.log_every = 10
    return cfg.validate()


def _small() -> SecoConfig:
    """The VOC recipe on a ViT-S/16 with ImageNet-21k weights at 320 px: for your own data on one small GPU, or a CPU
    with ``--iters`` (docs/quickstart.md "Pretrained on modest hardware"). Not tuned: only its speed is measured."""
    cfg = SecoConfig(preset="small")
    cfg.model.backbone = "vit_small_patch16_224"
    cfg.model.backbone_weights = "vit_small_patch16_224.augreg_in21k_ft_in1k"
    cfg.data.crop_size = 320
    return cfg.validate()


PRESETS: dict[str, Callable[[], SecoConfig]] = {"voc": _voc, "coco": _coco, "demo": _demo, "small": _small}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> SecoConfig:
    """A fresh config for preset ``name``; raises :class:`ConfigError` listing the presets on a miss."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())}") from None


def _update(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    known = {f.name: f for f in fields(obj)}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown config key {path!r}; known keys here: {', '.join(sorted(known))}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if isinstance(value, dict):
                _update(current, value, prefix=f"{path}.")
            elif isinstance(current, LossTerm) and isinstance(value, (int, float)):
                current.weight = float(value)
            else:
                raise ConfigError(f"{path} is a section; give a mapping, e.g. {path}.<key>=value")
        else:
            setattr(obj, key, coerce(value, field_types(type(obj))[key], path))


def config_from_dict(data: dict[str, Any], base: SecoConfig | None = None) -> SecoConfig:
    """Apply a nested mapping onto ``base`` (default: the preset named in ``data`` or 'voc')."""
    data = dict(data)
    if base is None:
        base = get_preset(str(data.get("preset", "voc")))
    data.pop("preset", None)
    _update(base, data)
    return base


def set_values(cfg: SecoConfig, values: dict[str, Any]) -> SecoConfig:
    """Set dotted keys (``{"train.iters": 100}``) to already-typed values (coerced to the field type)."""
    for key, value in values.items():
        nested: dict[str, Any] = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        _update(cfg, nested)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """``section.key=value`` (a ``--set`` item) -> ``(key, value)``, the value parsed as a YAML scalar.

    Raises:
        ConfigError: no ``=``, or a value that is not valid YAML.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.iters=100")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not valid YAML") from None


def apply_overrides(cfg: SecoConfig, overrides: list[str] | tuple[str, ...]) -> SecoConfig:
    """Apply ``section.key=value`` strings (``--set``, :func:`parse_override`)."""
    for item in overrides:
        set_values(cfg, dict([parse_override(item)]))
    return cfg


#: the steps of a preset's schedule that ``--iters`` stretches (:func:`scale_schedule`): the warm-up, every loss
#: term's start, the switches from the aux to the final CAM and the prototypes' start. The cadences
#: (``train.val_every``, ``train.ckpt_every``, ``train.log_every``) stay in steps: they set how often a run is
#: checked and saved, not what it trains.
SCHEDULE_KEYS: tuple[str, ...] = (
    "optim.warmup_iters",
    *(f"loss.{f.name}.start" for f in fields(LossConfig) if isinstance(getattr(LossConfig(), f.name), LossTerm)),
    "cam.roi_final_cam_from",
    "cam.seg_final_cam_from",
    "model.proto_start",
)


def dotted_keys(mapping: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys a nested mapping sets (``{"loss": {"lig": {"start": 5}}}`` -> ``{"loss.lig.start"}``); a
    mapping value is followed into, so ``{"loss.lig": {"start": 5}}`` gives the same."""
    keys: set[str] = set()
    for key, value in mapping.items():
        path = f"{prefix}{str(key).strip()}"
        if isinstance(value, dict) and value:
            keys |= dotted_keys(value, f"{path}.")
        else:
            keys.add(path)
    return keys


def _half_up(x: float) -> int:
    return int(x + 0.5)


def scale_schedule(cfg: SecoConfig, preset_iters: int, given: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Stretch a preset's schedule, written for ``preset_iters`` iterations, to ``cfg.train.iters``.

    Each key of :data:`SCHEDULE_KEYS` that is not in ``given`` (the dotted keys the user set: a ``--config`` file,
    ``--set``, an option) is multiplied by ``f = train.iters / preset_iters`` and rounded to the nearest step. A
    loss term's start keeps the published shape ``k*1000+1`` (the term is on after step k*1000): it becomes
    ``round((start - 1) * f) + 1``, and a start of 0 stays 0. Nothing changes when the iterations are the preset's.
    Returns the keys whose value changed (the values land in the config, hence in ``RUN_DIR/config.yaml``).
    """
    iters = cfg.train.iters
    if preset_iters <= 0 or iters == preset_iters:
        return []
    f = iters / preset_iters
    changed = []
    for key in SCHEDULE_KEYS:
        if key in given:
            continue
        old = int(get_key(cfg, key))
        new = (_half_up((old - 1) * f) + 1 if old > 0 else 0) if key.startswith("loss.") else _half_up(old * f)
        if new != old:
            set_key(cfg, key, new)
            changed.append(key)
    return changed


def default_max_side(data: DataConfig) -> int:
    """``data.max_side`` when the user gives none: 2 x ``crop_size`` for the folder layout (users' photos), 0 (off)
    for the research layouts, whose published numbers read images at their own size (docs/data.md)."""
    return 2 * data.crop_size if data.layout == "folder" else 0
