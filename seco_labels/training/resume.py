"""What a training checkpoint holds (:func:`training_state`, :func:`restore_training_state`) and how a run continues
from one (:func:`resume_run`, with the config-change check of :class:`ResumeKeys`), for both trainers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Protocol

import torch
import torch.nn as nn

from ..config_io import config_to_dict, recorded_value, set_key
from ..errors import CheckpointError, ConfigError
from ..runtime.checkpoint import ConfigChange, check_changes, latest_checkpoint, load_checkpoint, record_changes
from .run_folder import RunFolder
from .start_weights import StartWeights

__all__ = ["SILENT_KEYS", "ALLOWED_KEYS", "ResumeKeys", "Resumable", "training_state", "restore_training_state",
           "resume_run"]

#: where and how verbosely the run goes, not what it computes
SILENT_KEYS: tuple[str, ...] = ("train.device", "data.num_workers", "train.log_every", "train.ckpt_every", "preset",
                                "train.compile", "train.log")
#: extending (or shortening) the run, and what only validation reads
ALLOWED_KEYS: tuple[str, ...] = ("train.iters", "train.val_every", "train.val_max_images", "data.val_split",
                                 "data.root", "train.amp")


@dataclass(frozen=True)
class ResumeKeys:
    """How a resume treats the dotted config keys that differ from its checkpoint's
    (:func:`seco_labels.runtime.checkpoint.check_changes`): ``silent`` ones may change freely, ``allowed`` ones may
    change and are recorded in ``RUN_DIR/config_changes.jsonl``, ``arch`` ones are checked by the trainer's
    ``load_state_dict`` (they cannot change, nor can the starting weights); any other change needs
    ``allow_changes`` and is recorded too."""

    arch: tuple[str, ...]
    silent: tuple[str, ...] = SILENT_KEYS
    allowed: tuple[str, ...] = ALLOWED_KEYS


class Resumable(Protocol):
    """What :func:`training_state`, :func:`restore_training_state` and :func:`resume_run` need of a trainer."""

    #: its config policy on resume
    RESUME_KEYS: ClassVar[ResumeKeys]
    #: the resolved config (a dataclass); a resume may set keys of it to the checkpoint's values
    cfg: Any
    #: the next step to train (``load_state_dict`` sets it)
    step: int
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    folder: RunFolder
    start_weights: StartWeights

    def load_state_dict(self, ckpt: dict[str, Any], source: str | Path) -> None:
        """Restore the checkpoint ``ckpt`` (read from ``source``), refusing another architecture
        (:class:`CheckpointError`)."""


def training_state(trainer: Resumable) -> dict[str, Any]:
    """What every trainer's checkpoint holds: ``step``, ``config``, ``model``, ``optimizer``, ``scaler`` (None
    unless fp16) and the torch/CUDA ``rng``; :func:`restore_training_state` restores it."""
    return {
        "step": trainer.step,
        "config": config_to_dict(trainer.cfg),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if trainer.device.type == "cuda" else None,
        },
    }


def restore_training_state(trainer: Resumable, ckpt: dict[str, Any], source: str | Path) -> None:
    """Load model, optimiser, grad scaler and torch/CUDA RNG from ``ckpt`` (a :func:`training_state`) and set
    ``trainer.step``.

    Raises:
        CheckpointError: the checkpoint's model or optimiser does not fit this trainer's.
    """
    try:
        trainer.model.load_state_dict(ckpt["model"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {source} does not fit this model: {e}") from None
    if ckpt.get("scaler") and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng", {})
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and trainer.device.type == "cuda":
        torch.cuda.set_rng_state_all(rng["cuda"])
    trainer.step = int(ckpt["step"])


def _keep_values(cfg: Any, ckpt_config: dict[str, Any], keys: Iterable[str]) -> None:
    """Set each dotted key of ``keys`` that ``ckpt_config`` (a checkpoint's config) holds to its value there."""
    for key in keys:
        saved = recorded_value(ckpt_config, key)
        if saved is not None:  # None: a config of an older version, compared as it is
            set_key(cfg, key, saved)


def resume_run(trainer: Resumable, spec: str | None, *, allow_changes: bool = False,
               keep: Iterable[str] = ()) -> tuple[Path | None, list[ConfigChange]]:
    """Start or continue ``trainer``'s run. ``spec`` None: a fresh run (refuses to overwrite an existing one);
    ``auto``: continue ``last.pt`` if present; a path: continue from that checkpoint. Returns the checkpoint loaded
    (None: starting at step 0) and the accepted config changes. A fresh run loads its starting weights
    (:meth:`StartWeights.start`); a resumed one checks that they are the checkpoint's
    (:meth:`StartWeights.check_resumed`) without reading them.

    The requested config is compared with the checkpoint's: architecture changes raise :class:`CheckpointError`
    (``trainer.load_state_dict``); other changes follow ``trainer.RESUME_KEYS`` (raising :class:`ConfigError`
    unless ``allow_changes``); the accepted ones are appended to ``RUN_DIR/config_changes.jsonl`` (rank 0). The
    dotted config keys in ``keep`` take the checkpoint's values first (the schedule ``seco train`` stretched to
    ``--iters`` and the user did not set: the run goes on with the schedule it started with, whatever
    ``train.iters`` is now).

    Raises:
        ConfigError: a fresh run over an existing one; other starting weights; changes not allowed.
        CheckpointError: an unreadable checkpoint, of another kind or architecture.
    """
    folder, cfg, keys = trainer.folder, trainer.cfg, trainer.RESUME_KEYS
    last = latest_checkpoint(folder.path)
    if spec is None:
        if last is not None:
            raise ConfigError(f"{folder.path} already holds a run ({last}); pass --resume auto to continue it "
                              "or choose another --out")
        trainer.start_weights.start(cfg)
        return None, []
    path = last if spec == "auto" else Path(spec)
    if path is None:
        trainer.start_weights.start(cfg)
        return None, []
    ckpt = load_checkpoint(path, map_location=trainer.device)
    step = int(ckpt.get("step", 0))
    ckpt_config = ckpt.get("config", {})
    trainer.load_state_dict(ckpt, path)  # architecture first: it cannot change
    trainer.start_weights.check_resumed(cfg, ckpt_config, path)  # then the weights it started from: nor can they
    _keep_values(cfg, ckpt_config, keep)
    changes = check_changes(
        ckpt_config, config_to_dict(cfg), path, step=step, silent=keys.silent, allowed=keys.allowed,
        skip=(*keys.arch, *trainer.start_weights.keys), allow_changes=allow_changes,
    )
    if changes and folder.dist.is_primary:
        needed = any(c.key not in keys.allowed for c in changes)
        record_changes(folder.path, changes, step=trainer.step, source=path,
                       allowed_by="--allow-changes" if needed else "allowed without a flag")
    return path, changes
