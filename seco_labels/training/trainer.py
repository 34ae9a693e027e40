"""SeCo training: the trainer of a run, its optimiser step, validation, checkpoints and resume (docs/design.md §3, §6).

The objective of one step is :mod:`seco_labels.method.objective` (``seco_step``), validation on the val split
:mod:`seco_labels.training.validation`, ``train.compile`` support :mod:`seco_labels.training.compiling`. What the
trainer shares with ``seco fit-segmenter`` and the inference commands is in :mod:`seco_labels.runtime.device` (device, batches, the
batch sampler) and the parts of a run in :mod:`seco_labels.training`: the run folder (:mod:`~.run_folder`: lock,
config.yaml, log, checkpoint), the starting weights (:mod:`~.start_weights`), resume (:mod:`~.resume`), the loss
checks (:mod:`~.loss_monitor`) and the training loop (:mod:`~.loop`: progress, validation, signals).
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from ..config import ModelConfig, SecoConfig
from ..config_io import config_to_dict
from ..data import EvalDataset, TrainDataset, TrainViews, build_reader, check_class_count, dataset_classes
from ..errors import ConfigError
from ..method.cams import check_scales
from ..method.objective import HOST_KEYS, PhaseTimer, SecoObjective, StepOutput, no_timer
from ..method.refine import PAR
from ..models import SeCoNet, build_seco
from ..runtime.checkpoint import SECO_ARCH_KEYS, ConfigChange, check_compatible, latest_checkpoint, require_kind
from ..runtime.device import StepBatchSampler, batch_to_device, leave_signals_to_main, resolve_device
from ..runtime.distributed import DistributedError, all_gather_objects, all_reduce_mean, init_distributed, norm_groups
from ..runtime.precision import autocast_context, grad_scaler, resolve_amp
from ..runtime.pretrained import Weights, resolve_weights
from .compiling import compile_encoders, compile_errors
from .loop import opened_run, run_loop
from .loss_monitor import LossMonitor
from .resume import ResumeKeys, restore_training_state, resume_run, training_state
from .run_folder import RunFolder
from .schedule import lr_multiplier
from .sinks import image_count
from .start_weights import StartWeights
from .validation import validation_images, validation_scores

__all__ = ["Trainer", "memory_digest", "zero_missing_grads", "resolve_backbone_weights"]


def resolve_backbone_weights(m: ModelConfig) -> Weights:
    """``m.backbone_weights`` as a local file (:func:`seco_labels.runtime.pretrained.resolve_weights`), refused when its
    source names another architecture than ``m.backbone`` (before a strict load would fail on every shape).

    Raises:
        ConfigError: unknown weights, or weights of another architecture.
        WeightsUnavailableError: a name neither cached nor downloadable now.
    """
    weights = resolve_weights(m.backbone_weights)
    if weights.architecture and weights.architecture != m.backbone:
        raise ConfigError(
            f"--backbone-weights {weights.spec} holds weights of {weights.architecture}, but the backbone is "
            f"{m.backbone} (model.backbone); name weights of {m.backbone}, or set --set "
            f"model.backbone={weights.architecture}"
        )
    return weights


def zero_missing_grads(optimizer: torch.optim.Optimizer) -> int:
    """Give every parameter of ``optimizer`` that no loss term reached this step a zero gradient; returns how many.

    The published loop adds every term from step 0, as ``0 * term`` before it starts (scripts/train_voc.py
    lines 219-224), so the projection head and decoder get zero gradients, not none: AdamW then decays their weights
    and advances their moments and step counts, and a term's first updates are larger than on fresh moments
    (docs/divergences.md). Every parameter we optimise is one that graph reaches; the published groups' never-used
    ones (the ViT's ImageNet head, the frozen positional embedding, ``DINOHead.last_layer``) are not ours.
    """
    filled = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
                filled += 1
    return filled


def memory_digest(model: SeCoNet) -> str:
    """SHA-1 of the reservoir (keys, tags, pointer) and prototypes: equal across processes when they agree."""
    h = hashlib.sha1()
    for t in (model.reservoir.keys, model.reservoir.tags, model.reservoir.ptr, model.prototypes.vectors):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def adamw(params: list[dict], **kwargs) -> torch.optim.AdamW:
    """AdamW as one fused update of every parameter where the device has the fused kernel (CUDA; CPU from torch
    2.4), else the multi-tensor one: the per-parameter loop costs a dozen operations and a step-count read per
    parameter (docs/benchmarks.md "Operations and syncs per step"). Same update, to float rounding."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except RuntimeError:  # no fused kernel for this device in this torch
        return torch.optim.AdamW(params, foreach=True, **kwargs)


class Trainer:
    """Owns a run folder: builds data, model and optimiser from a resolved config, trains, checkpoints,
    validates, and resumes from ``RUN_DIR/last.pt``.

    It has the parts of :mod:`seco_labels.training` a run is made of: ``folder`` (:class:`RunFolder`),
    ``start_weights`` (:class:`StartWeights` of ``--backbone-weights``), ``losses`` (:class:`LossMonitor`); ``fit``
    runs :func:`~seco_labels.training.loop.run_loop` and ``resume`` :func:`~seco_labels.training.resume.resume_run`.

    Under ``torchrun`` (docs/distributed.md) every process builds the same trainer: ``data.batch_size`` is the
    global batch, split evenly over the processes; gradients are averaged by DistributedDataParallel; the
    memories gather every process's keys; validation is sharded and its counts summed. Rank 0 alone writes the
    run folder and shows the progress bar.

    Files written in ``run_dir``: ``config.yaml`` (resolved config), ``last.pt`` (every ``ckpt_every`` steps
    and at the end), ``metrics.jsonl`` (one JSON record per step and per validation; under torchrun also the
    processes' memory digests at each checkpoint).
    """

    #: config keys on resume: the network's architecture cannot change (see :class:`ResumeKeys`)
    RESUME_KEYS: ClassVar[ResumeKeys] = ResumeKeys(arch=tuple(f"{s}.{k}" for s, k in SECO_ARCH_KEYS))

    def __init__(self, cfg: SecoConfig, run_dir: str | Path, *, quiet: bool = False,
                 weights: Weights | None = None) -> None:
        """``weights``: ``model.backbone_weights`` already resolved (:func:`resolve_backbone_weights`; the CLI does so
        before the data is read); None resolves them when a fresh run starts."""
        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        self.dist = init_distributed(resolve_device(cfg.train.device))
        self.quiet = quiet or not self.dist.is_primary
        self.device = self.dist.device
        self.amp_dtype = resolve_amp(cfg.train.amp, self.device)
        #: ``torch.autocast`` in ``amp_dtype`` (a no-op context for fp32), for the step and validation
        self.autocast = functools.partial(autocast_context, self.device, self.amp_dtype)
        self.folder = RunFolder(self.run_dir, dist=self.dist)
        self.start_weights = StartWeights(
            name_key="model.backbone_weights", sha_key="model.backbone_weights_sha256", option="--backbone-weights",
            target_key="model.backbone", resolve=lambda: resolve_backbone_weights(self.cfg.model),
            load=lambda w: self.model.load_backbone(w.path), weights=weights, announce=not self.quiet,
        )
        self.losses = LossMonitor(self.run_dir, lr_hint="--set optim.lr=...", warn=self.dist.is_primary)
        #: set by :meth:`resume`: the checkpoint loaded (None: starting at step 0) and the recorded config changes
        self.resumed_from: Path | None = None
        self.config_changes: list[ConfigChange] = []
        #: set by :meth:`fit`: the run had already reached ``train.iters`` when it was called (nothing was trained)
        self.already_finished = False
        d = cfg.data
        if not d.root:
            raise ConfigError("no dataset: pass --data-root DIR (or data.root in the config file)")
        if not d.class_names and (named := dataset_classes(d.layout, d.root)):
            d.class_names, d.num_classes = named, len(named)  # the folder layout's own classes, saved in config.yaml
        self.reader = build_reader(d.layout, d.root, d.train_split, num_classes=d.num_classes,
                                   class_names=d.class_names or None, ignore_index=d.ignore_index,
                                   max_side=d.max_side)
        if not d.class_names:
            check_class_count(self.reader)
        views = TrainViews(d.crop_size, d.rescale_range, d.global_crop_scale, d.strong_flip_p, d.flip_p)
        self.dataset = TrainDataset(self.reader, views, seed=cfg.train.seed)
        self._sampler(0)  # a batch that cannot be split over the processes fails here, before the model is built
        # so do loss groups that straddle processes unevenly; the first call also creates their process groups
        norm_groups(cfg.loss.norm_group_size, d.batch_size // self.dist.world_size)
        torch.manual_seed(cfg.train.seed)
        # random init: a fresh run loads its starting weights when it starts (start_weights), a resume its checkpoint
        self.model = build_seco(cfg.model, d.num_classes).to(self.device)
        self._check_sizes(self.model.encoder.patch_size)
        if cfg.train.compile:
            compile_encoders(self.model)
        self.par = PAR(cfg.cam.par_dilations, cfg.cam.par_iters).to(self.device)
        objective = SecoObjective(self.model, self.par, self.cfg)
        self.objective: nn.Module = objective if not self.dist.distributed else DistributedDataParallel(
            objective, device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=True, forward_sync_buffers=False,  # the memories are kept equal by gathering
        )
        groups = self.model.param_groups()
        o = cfg.optim
        lr_mult = {"backbone": 1.0, "backbone_norm": 1.0, "heads": o.head_lr_mult, "decoder": o.head_lr_mult}
        self.optimizer = adamw(
            [{"params": ps, "lr": o.lr * lr_mult[name], "name": name} for name, ps in groups.items()],
            lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=1e-8,
        )
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scaler = grad_scaler(self.device, self.amp_dtype)
        self.step = 0
        self._val_loader: DataLoader | None = None

    def _check_sizes(self, patch: int) -> None:
        """Crops, their CAM scales and the local crops must hold at least one ``patch`` x ``patch`` token: check
        before step 0."""
        d, k = self.cfg.data, self.cfg.decompose
        check_scales((1.0, *self.cfg.cam.scales), d.crop_size, patch, size_option="data.crop_size",
                     scales_option="cam.scales")
        if k.local_crop_size < patch:  # any larger size works, as published: the remainder is dropped
            raise ConfigError(
                f"decompose.local_crop_size={k.local_crop_size} is smaller than one of the backbone's {patch} px "
                f"patches; set it to {patch} or more"
            )

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"kind": "seco", **training_state(self)}

    def load_state_dict(self, ckpt: dict[str, Any], source: str | Path) -> None:
        require_kind(ckpt, "seco", source)
        check_compatible(ckpt.get("config", {}), config_to_dict(self.cfg), source)
        restore_training_state(self, ckpt, source)

    def resume(self, spec: str | None, *, allow_changes: bool = False, keep: Iterable[str] = ()) -> bool:
        """``None``: fresh run (refuses to overwrite an existing one); ``auto``: continue ``last.pt`` if present;
        a path: continue from that checkpoint, with the config-change check (:func:`resume_run`). Sets
        ``resumed_from`` and ``config_changes``; returns whether a checkpoint was loaded."""
        self.resumed_from, self.config_changes = resume_run(self, spec, allow_changes=allow_changes, keep=keep)
        return self.resumed_from is not None

    def save(self) -> Path:
        """Write ``RUN_DIR/last.pt`` (rank 0; every process waits for it)."""
        return self.folder.save_checkpoint(self.state_dict)

    # -- loop ----------------------------------------------------------------------------------------------
    def _sampler(self, start_step: int) -> StepBatchSampler:
        return StepBatchSampler(len(self.dataset), self.cfg.data.batch_size, self.cfg.train.seed,
                                start_step=start_step, rank=self.dist.rank, world_size=self.dist.world_size)

    def train_loader(self) -> DataLoader:
        """The training batches from ``self.step`` on: the step-indexed sampler (each process its share under
        torchrun), so a resumed run draws what an uninterrupted one would have."""
        d = self.cfg.data
        return DataLoader(
            self.dataset, batch_sampler=self._sampler(self.step), num_workers=d.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=d.num_workers > 0,
            worker_init_fn=leave_signals_to_main,
        )

    def val_loader(self) -> DataLoader | None:
        """This process's share of the validation images (the first ``train.val_max_images`` when set)."""
        d = self.cfg.data
        if self._val_loader is None and d.val_split:
            reader = build_reader(
                d.layout, d.root, d.val_split, num_classes=d.num_classes, class_names=d.class_names or None,
                ignore_index=d.ignore_index, require_masks=True, max_side=d.max_side,
            )
            dataset = EvalDataset(reader, size=d.crop_size)
            n = min(len(dataset), self.cfg.train.val_max_images or len(dataset))
            shard = Subset(dataset, range(self.dist.rank, n, self.dist.world_size))
            self._val_loader = DataLoader(shard, batch_size=1, num_workers=d.num_workers,
                                          worker_init_fn=leave_signals_to_main)
        return self._val_loader

    def train_step(self, batch: dict[str, Any], timer: PhaseTimer = no_timer) -> StepOutput:
        """One optimiser step at ``self.step`` (lr set from the schedule first).

        The returned terms and loss are this process's; :meth:`fit` logs their mean over processes.
        """
        mult = lr_multiplier(self.step, self.cfg.optim, self.cfg.train.iters)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * mult
        batch = batch_to_device(batch, self.device, HOST_KEYS)
        with compile_errors(self.cfg.train.compile):  # the compiled encoder's forward and backward
            out = self.objective(batch, self.step, autocast=self.autocast, timer=timer)
            self.losses.check(out.loss_value, out.terms, step=self.step,
                              lr=self.optimizer.param_groups[0]["lr"])
            with timer("backward"):
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(out.loss).backward()
                if self.cfg.optim.unstarted_grads == "zero":
                    zero_missing_grads(self.optimizer)
        with timer("optimizer_step"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return out

    def _over_processes(self, out: StepOutput) -> dict[str, float | None]:
        """The step's log fields (``loss``, ``loss_<term>``, crop counts) with the loss and terms averaged and the
        counts summed over processes (one small all-reduce): what one process would log for the global batch."""
        fields = {"loss": out.loss_value, **{f"loss_{k}": v for k, v in out.terms.items()}, **out.counts}
        if self.dist.world_size == 1:  # nothing to reduce: no round trip through the device
            return fields
        active = [k for k, v in fields.items() if v is not None]
        values = torch.tensor([fields[k] for k in active], dtype=torch.float64, device=self.device)
        fields.update(zip(active, all_reduce_mean(values).cpu().tolist()))
        for k in out.counts:
            if fields[k] is not None:  # counts add up over processes; the mean times N is a whole number again
                fields[k] = int(round(fields[k] * self.dist.world_size))
        return fields

    def check_memories(self) -> list[str]:
        """Every process's :func:`memory_digest`, in rank order.

        Raises:
            DistributedError: the processes' reservoirs or prototypes differ (they must stay identical).
        """
        digests = all_gather_objects(memory_digest(self.model))
        if len(set(digests)) > 1:
            raise DistributedError(
                f"step {self.step}: the processes' key reservoirs / prototypes diverged (digests {digests}); "
                "this is a bug, please report it with the run's config.yaml"
            )
        return digests

    def validate(self) -> dict[str, float]:
        loader = self.val_loader()
        if loader is None:
            return {}
        with compile_errors(self.cfg.train.compile):
            return validation_scores(
                self.model, loader, self.cfg, self.device, autocast=self.autocast,
                quiet=self.quiet or not sys.stderr.isatty(),
            )

    def validation_images(self) -> list[tuple[str, np.ndarray]]:
        """Strips of the first val images (:func:`seco_labels.training.validation.validation_images`) for the log
        sink."""
        loader = self.val_loader()
        if loader is None:
            return []
        dataset = loader.dataset.dataset  # the whole split, not this process's shard: rank 0 draws them alone
        with compile_errors(self.cfg.train.compile):
            return validation_images(
                self.model, dataset, self.cfg, self.device, count=image_count(self.cfg.train.val_max_images),
                class_names=dataset.reader.class_names, autocast=self.autocast,
            )

    def checkpoint(self) -> Path:
        """The periodic checkpoint of :func:`run_loop`: :meth:`save`; under torchrun first checks and logs that every
        process holds the same memories."""
        if self.dist.distributed:
            self.folder.log({"step": self.step - 1, "memory_digests": self.check_memories()})
        return self.save()

    def fit(self) -> dict[str, Any]:
        """Train from ``self.step`` to ``train.iters``; returns the last step's terms and validation scores.

        A run that had already reached ``train.iters`` trains nothing (``already_finished``) and returns the last
        step and validation records of ``metrics.jsonl``. Records of steps >= ``self.step`` are dropped from the log
        first (they are re-run), so each step is logged once.

        Runs holding ``RUN_DIR/.lock`` (:func:`~seco_labels.training.loop.opened_run`).

        Raises:
            TrainingInterrupted: SIGINT/SIGTERM arrived; the step under way was finished and checkpointed first.
            FolderBusyError: another process is writing ``RUN_DIR``.
            DiskFullError: a checkpoint or log write did not fit; the previous ``last.pt`` is kept.
        """
        with opened_run(self):
            if self.step >= self.cfg.train.iters:
                self.already_finished = True
                if latest_checkpoint(self.run_dir) is None:  # resumed a finished run from another folder's checkpoint
                    self.save()
                return self.folder.last_logged()
            return run_loop(self, self.train_loader, lambda batch: self._over_processes(self.train_step(batch)),
                            self._validation_entry, desc="train")

    def _validation_entry(self) -> tuple[dict[str, float], str] | None:
        """:meth:`validate` as :func:`run_loop` logs and shows it (None: no val split)."""
        scores = self.validate()
        return (scores, ", ".join(f"{k} {v:.4f}" for k, v in scores.items())) if scores else None
