"""The state of a training run folder, shared by ``seco train`` and ``seco fit-segmenter``: the training loop
(:meth:`RunState.run_loop`), the JSONL metrics log, checkpoints and resume (with the config-change check), the run
lock, stopping cleanly on SIGINT/SIGTERM (:mod:`seco_labels.training.signals`), the plain progress lines and the loss
checks (:class:`RunState`, which both trainers mix in).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..config_io import config_to_dict, get_key, recorded_value, save_config, set_key
from ..errors import CheckpointError, ConfigError, SecoError
from ..io import append_line, atomic_write_text, folder_lock, remove_stale_temps, sha256_file
from ..runtime.checkpoint import (
    SECO_ARCH_KEYS,
    ConfigChange,
    check_changes,
    latest_checkpoint,
    load_checkpoint,
    record_changes,
    save_checkpoint,
)
from ..runtime.device import peak_memory_mb
from ..runtime.distributed import DistContext, barrier
from ..runtime.pretrained import RANDOM, Weights, describe_recorded
from .signals import StopOnSignals, TrainingInterrupted
from .sinks import LogSink, open_sink

__all__ = [
    "RunState", "TrainingInterrupted", "NonFiniteLossError", "DIVERGENCE_FACTOR", "RUN_LOCK", "RUN_FILES",
    "holding_run_lock",
]


class NonFiniteLossError(SecoError, FloatingPointError):
    """The loss went NaN or infinite: training stopped before the step's update (the message names the step, the
    term, the learning rate and the last good checkpoint)."""


#: a loss this many times its running median is reported as a possible divergence
DIVERGENCE_FACTOR = 100.0


#: the lock file of a run folder (:func:`seco_labels.io.folder_lock`)
RUN_LOCK = ".lock"
#: files of a run folder written by temp file + rename: a killed run may leave their ``.<name>.<random>.tmp``
RUN_FILES = ("last.pt", "config.yaml", "metrics.jsonl", "metrics.json", "per_class.csv")


def holding_run_lock(fit: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a trainer's ``fit``: it runs holding the run folder's lock (``RUN_DIR/.lock``; rank 0 alone under
    torchrun, for all processes), and first removes the temp files a killed run left there (:data:`RUN_FILES`).

    The log sink ``fit`` opened (:meth:`RunState._open_run`) is closed when it returns or raises, so an interrupted
    run's events are on disk.

    Raises:
        FolderBusyError: another process is writing the run folder.
    """
    @functools.wraps(fit)
    def locked(self: "RunState", *args: Any, **kwargs: Any) -> Any:
        with self.run_lock():
            try:
                return fit(self, *args, **kwargs)
            finally:
                self._close_sink()

    return locked


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))  # "0:02:23", "1 day, 2:46:29" (as mmsegmentation)


#: how a start line names what the weights load into, by the config key of its name
WEIGHTS_FOR_LABEL = {"model.backbone": "backbone", "model.encoder": "encoder"}


class RunState(StopOnSignals):
    """What the SeCo and segmenter trainers share: the training loop (:meth:`run_loop`), the JSONL metrics log,
    resume (with the config-change check), checkpoints, the plain progress lines, stopping cleanly on SIGINT/SIGTERM,
    the log sink of ``train.log`` (:mod:`seco_labels.training.sinks`), the autocast context, and restoring model,
    optimiser, grad scaler and torch/CUDA RNG from a checkpoint (needs ``run_dir``, ``device``, ``amp_dtype``,
    ``model``, ``optimizer``, ``scaler``, ``quiet``; ``resume``/``save`` call the trainer's
    ``state_dict``/``load_state_dict``, ``run_loop`` its ``_train_loader``). Under torchrun
    (``dist``) only rank 0 writes the log and checkpoints; every rank reads them on resume.

    Config keys on resume (:func:`seco_labels.runtime.checkpoint.check_changes`): ``SILENT_KEYS`` may change freely,
    ``ALLOWED_KEYS`` may change and are recorded in ``RUN_DIR/config_changes.jsonl``, ``ARCH_KEYS`` are checked by
    ``load_state_dict`` and ``WEIGHTS_KEYS`` (the starting weights) by :meth:`_check_start` (neither can change); any
    other change needs ``allow_changes`` and is recorded too.

    With ``train.log=tensorboard`` each validation also sends the sink the pictures of the trainer's
    :meth:`validation_images`.
    """

    run_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    cfg: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int
    quiet: bool = False
    dist: DistContext = DistContext()
    #: the trainer's checkpoint (what :meth:`save` writes) and its restore (what :meth:`resume` calls)
    state_dict: Callable[[], dict[str, Any]]
    load_state_dict: Callable[[dict[str, Any], str | Path], None]
    #: the training batches from step ``self.step`` on (what :meth:`run_loop` iterates)
    _train_loader: Callable[[], Iterable[Any]]
    #: where and how verbosely the run goes, not what it computes
    SILENT_KEYS: tuple[str, ...] = ("train.device", "data.num_workers", "train.log_every", "train.ckpt_every",
                                    "preset", "train.compile", "train.log")
    #: the config keys of the weights a run starts from (name, sha256), the option that sets them, and the key of
    #: what they load into: set once by a fresh run, never changed by a resume (not even with allow_changes)
    WEIGHTS_KEYS: tuple[str, str]
    WEIGHTS_OPTION: str
    WEIGHTS_FOR: str
    #: the resolved starting weights (given by the command, or resolved by a fresh run); None until then
    weights: Weights | None = None
    #: the starting weights are in the model (a fresh run) or checked against the checkpoint's (a resume)
    _weights_loaded: bool = False
    #: extending (or shortening) the run, and what only validation reads
    ALLOWED_KEYS: tuple[str, ...] = ("train.iters", "train.val_every", "train.val_max_images", "data.val_split",
                                     "data.root", "train.amp")
    ARCH_KEYS: tuple[str, ...] = tuple(f"{s}.{k}" for s, k in SECO_ARCH_KEYS)
    #: set by :meth:`resume`: the checkpoint loaded (None: starting at step 0) and the recorded config changes
    resumed_from: Path | None = None
    config_changes: list[ConfigChange] = []
    #: set by ``fit``: the run had already reached ``train.iters`` when it was called (nothing was trained)
    already_finished: bool = False
    #: the sink of ``train.log`` besides ``metrics.jsonl`` (rank 0, set by :meth:`_open_run`; None for jsonl)
    _sink: LogSink | None = None

    # -- logging -------------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _truncate_log(self, step: int) -> None:
        """Drop records of steps >= ``step``: they are (re-)run now, after a resume or by a fresh start at step 0
        over the log of an attempt that died before its first checkpoint. Each step is logged once."""
        if not self.dist.is_primary or not self.log_path.exists():
            return
        kept = [ln for ln in self.log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < step]
        atomic_write_text(self.log_path, "".join(ln + "\n" for ln in kept))

    def _log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` (rank 0), whole or not at all (DiskFullError on a full disk)."""
        if not self.dist.is_primary:
            return
        append_line(self.log_path, json.dumps(record))
        if self._sink is not None:
            self._sink.write(record)

    def validation_images(self) -> list[tuple[str, np.ndarray]]:
        """``(tag, (H, W, 3) uint8)`` pictures of a few validation images and what the model makes of them, drawn
        after each validation for the log sink (trainers override this; rank 0 alone calls it)."""
        return []

    def _log_images(self, step: int) -> None:
        """Send the sink :meth:`validation_images` for the validation after step ``step``, when it keeps
        pictures (drawing them costs forward passes a jsonl-only run does not pay)."""
        if self._sink is not None and self._sink.wants_images and self.dist.is_primary:
            self._sink.add_images(step, self.validation_images())

    def _close_sink(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    @contextlib.contextmanager
    def run_lock(self) -> Iterator[None]:
        """Hold ``RUN_DIR/.lock`` (re-entrant; rank 0 only) and, holding it, remove the temp files of
        :data:`RUN_FILES` a killed run left in ``RUN_DIR`` (other files there are left alone).

        Raises:
            FolderBusyError: another process is writing ``RUN_DIR``.
        """
        with folder_lock(self.run_dir, RUN_LOCK, what="a training run", enabled=self.dist.is_primary):
            if self.dist.is_primary:
                remove_stale_temps(self.run_dir, RUN_FILES)
            yield

    def last_logged(self) -> dict[str, Any]:
        """The last step record of ``metrics.jsonl`` merged with the validation records of that step ({} when there
        is no log): what ``fit`` returns for a run that had already finished."""
        if not self.log_path.is_file():
            return {}
        records = [json.loads(ln) for ln in self.log_path.read_text().splitlines() if ln.strip()]
        steps = [r for r in records if "loss" in r]
        if not steps:
            return {}
        last = dict(steps[-1])
        for r in records:
            if "split" in r and r["step"] == last["step"]:
                last.update({k: v for k, v in r.items() if k not in ("step", "split")})
        return last

    def _plain_progress(self, record: dict[str, Any], times: list[float]) -> None:
        """When stderr is not a terminal (nohup, a cluster's log file) and not quiet, write one plain line (what the
        progress bar shows on a terminal): step/total, loss and its terms, lr, mean s/it over ``times`` (the steps
        since the last line), ETA at that speed, and :func:`peak_memory_mb`."""
        if self.quiet or sys.stderr.isatty():
            return
        iters = self.cfg.train.iters
        terms = [f"{k[5:]} {v:.4f}" for k, v in record.items() if k.startswith("loss_") and v is not None]
        sec = sum(times) / max(len(times), 1)
        loss = f"loss {record['loss']:.4f}" + (f" ({', '.join(terms)})" if terms else "")
        line = (f"step {self.step}/{iters} | {loss} | lr {record['lr']:.3e} | {sec:.3f} s/it | "
                f"eta {_eta(sec * (iters - self.step))} | peak mem {peak_memory_mb(self.device):.0f} MB")
        print(line, file=sys.stderr, flush=True)

    def _end_step(self, record: dict[str, Any], bar: tqdm, times: list[float]) -> None:
        """After a training step: log ``record``, advance ``self.step`` and the bar, collect the step time, and
        every ``train.log_every`` steps (and at the last) set the bar's postfix (the loss terms ``loss_<term>`` of
        ``record``, or its ``loss`` when it has none) and write the plain line."""
        self._log(record)
        times.append(record["time"])
        self.step += 1
        bar.update(1)
        t = self.cfg.train
        if self.step % t.log_every == 0 or self.step == t.iters:
            terms = [k for k in record if k.startswith("loss_")]
            bar.set_postfix({k[5:]: f"{record[k]:.3f}" for k in terms if record[k] is not None} if terms else
                            {"loss": f"{record['loss']:.3f}"})
            self._plain_progress(record, times)
            times.clear()

    # -- the training loop ---------------------------------------------------------------------------------
    def _open_run(self) -> None:
        """The start of ``fit``: the starting weights of a fresh run (if :meth:`resume` did not load them), create
        ``RUN_DIR``, write ``config.yaml``, drop the log records of steps >=
        ``self.step`` (:meth:`_truncate_log`) and open the sink of ``train.log``, which replaces those steps too
        (rank 0 alone).

        Raises:
            ConfigError: ``train.log=tensorboard`` without the tensorboard package (names the install command).
        """
        if self.resumed_from is None and not self._weights_loaded:  # fit() without resume(): a fresh run
            self.start_from_weights()
        if self.dist.is_primary:
            self._close_sink()
            self._sink = open_sink(self.cfg.train.log, self.run_dir, self.step)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
            self._truncate_log(self.step)

    def run_loop(self, step: Callable[[Any], dict[str, Any]],
                 validate: Callable[[], tuple[dict[str, Any], str] | None], *, desc: str,
                 validate_last_step: bool = True) -> dict[str, Any]:
        """Train from ``self.step`` to ``train.iters``: the loop of both trainers' ``fit``. Returns the last step's
        record merged with what was validated after it ({} when no step ran).

        ``step(batch)`` makes one optimiser step at ``self.step`` and returns the fields of its log record (``loss``
        and, for SeCo, ``loss_<term>`` and counts); the record is ``{"step", "lr", **fields, "time"}``.
        ``validate()`` returns the scores to log (beside ``step`` and ``split``) and the line to show, or None (no
        val split). It is due every ``train.val_every`` steps and at the last step, unless not
        ``validate_last_step`` (fit-segmenter validates after the loop itself, for its reports).

        Each step, in this one order: the step -> log its record, advance the bar, the plain progress line ->
        validate if due -> checkpoint (:meth:`checkpoint`) every ``train.ckpt_every`` steps and at the last -> on
        SIGINT/SIGTERM, checkpoint (unless just done) and raise :class:`TrainingInterrupted`. Validation comes
        before the checkpoint so that a checkpoint holds all its step did: the validation record is in the log it
        resumes with (a run killed while validating resumes from the previous checkpoint and validates again,
        rather than skipping that validation), and the RNG state it saves is the one after validation (SeCo's val
        DataLoader draws its seed from torch's RNG), so a resumed run draws what the uninterrupted run would.

        Raises:
            TrainingInterrupted: SIGINT/SIGTERM arrived; the step under way was finished and checkpointed first.
        """
        t = self.cfg.train
        self.model.train()
        last: dict[str, Any] = {}
        bar = tqdm(total=t.iters, initial=self.step, desc=desc, dynamic_ncols=True,
                   disable=self.quiet or not sys.stderr.isatty())
        times: list[float] = []
        with self._stop_on_signals(), contextlib.closing(bar):  # handlers first: the loader's workers inherit them
            loader = iter(self._train_loader()) if self.step < t.iters else iter(())
            while self.step < t.iters:
                start = time.perf_counter()
                fields = step(next(loader))
                last = {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"], **fields,
                        "time": time.perf_counter() - start}
                self._end_step(last, bar, times)
                at_end = self.step == t.iters
                if t.val_every and (self.step % t.val_every == 0 or at_end) and (validate_last_step or not at_end):
                    shown = validate()
                    if shown is not None:
                        self._log({"step": self.step - 1, "split": self.cfg.data.val_split, **shown[0]})
                        self._log_images(self.step - 1)
                        last = {**last, **shown[0]}
                        if self.dist.is_primary:
                            bar.write(f"step {self.step}: {shown[1]}")
                saved = self.step % t.ckpt_every == 0 or self.step == t.iters
                if saved:
                    self.checkpoint()
                if self._stop_requested():
                    path = self.run_dir / "last.pt" if saved else self.checkpoint()
                    raise TrainingInterrupted(self._stop_signal, self.step, t.iters, path)
        return last

    # -- resume and checkpoints ----------------------------------------------------------------------------
    def resume(self, spec: str | None, *, allow_changes: bool = False, keep: Iterable[str] = ()) -> bool:
        """``None``: fresh run (refuses to overwrite an existing one); ``auto``: continue ``last.pt`` if present;
        a path: continue from that checkpoint. Returns whether a checkpoint was loaded (``resumed_from``). A fresh run
        loads its starting weights (:meth:`start_from_weights`); a resumed one checks that they are the checkpoint's
        (:meth:`_check_start`) without reading them.

        The requested config is compared with the checkpoint's: architecture changes raise
        :class:`CheckpointError`; other changes follow :func:`seco_labels.runtime.checkpoint.check_changes` (raising
        :class:`ConfigError` unless ``allow_changes``); the accepted ones are in ``config_changes`` and appended to
        ``RUN_DIR/config_changes.jsonl``. The dotted config keys in ``keep`` take the checkpoint's values first (the
        schedule ``seco train`` stretched to ``--iters`` and the user did not set: the run goes on with the schedule
        it started with, whatever ``train.iters`` is now).
        """
        last = latest_checkpoint(self.run_dir)
        if spec is None:
            if last is not None:
                raise ConfigError(f"{self.run_dir} already holds a run ({last}); pass --resume auto to continue it "
                                  "or choose another --out")
            self.start_from_weights()
            return False
        path = last if spec == "auto" else Path(spec)
        if path is None:
            self.start_from_weights()
            return False
        ckpt = load_checkpoint(path, map_location=self.device)
        step = int(ckpt.get("step", 0))
        self.load_state_dict(ckpt, path)  # architecture first: it cannot change
        self._check_start(ckpt.get("config", {}), path)  # then the weights it started from: they cannot either
        self._keep_values(ckpt.get("config", {}), keep)
        changes = check_changes(
            ckpt.get("config", {}), config_to_dict(self.cfg), path, step=step, silent=self.SILENT_KEYS,
            allowed=self.ALLOWED_KEYS, skip=(*self.ARCH_KEYS, *self.WEIGHTS_KEYS), allow_changes=allow_changes,
        )
        self.resumed_from, self.config_changes = path, changes
        if changes and self.dist.is_primary:
            needed = any(c.key not in self.ALLOWED_KEYS for c in changes)
            record_changes(self.run_dir, changes, step=self.step, source=path,
                           allowed_by="--allow-changes" if needed else "allowed without a flag")
        return True

    def _keep_values(self, ckpt_config: dict[str, Any], keys: Iterable[str]) -> None:
        """Set each dotted key of ``keys`` that ``ckpt_config`` (a checkpoint's config) holds to its value there."""
        for key in keys:
            saved = recorded_value(ckpt_config, key)
            if saved is not None:  # None: a config of an older version, compared as it is
                set_key(self.cfg, key, saved)

    # -- the weights a run starts from ---------------------------------------------------------------------
    def _say(self, line: str) -> None:
        """A line on stderr unless quiet (rank 0 alone)."""
        if not self.quiet and self.dist.is_primary:
            print(line, file=sys.stderr, flush=True)

    def _weights_subject(self) -> str:
        """``backbone vit_base_patch16_224`` / ``encoder resnet50``: what the starting weights are loaded into."""
        return f"{WEIGHTS_FOR_LABEL[self.WEIGHTS_FOR]} {get_key(self.cfg, self.WEIGHTS_FOR)}"

    def start_from_weights(self) -> Weights:
        """A fresh run (no checkpoint): resolve the starting weights (``self.weights`` when the command resolved them
        already, else :meth:`resolve_start_weights`), check a pinned hash (``WEIGHTS_KEYS[1]``), load them
        (:meth:`load_start_weights`), record their name and sha256 in the config (so in config.yaml, every
        checkpoint and export) and say on stderr what the run starts from. Once; later calls return the same.

        Raises:
            ConfigError: unknown weights, or not the pinned file.
            WeightsUnavailableError: a name neither cached nor downloadable now.
        """
        if self._weights_loaded and self.weights is not None:
            return self.weights
        name_key, sha_key = self.WEIGHTS_KEYS
        weights = self.weights or self.resolve_start_weights()
        pin = str(get_key(self.cfg, sha_key) or "").strip().lower()
        if pin and not weights.sha256.startswith(pin):
            found = f"resolves to {weights.path} with sha256 {weights.sha256}" if weights.path else "is random init"
            raise ConfigError(f"{self.WEIGHTS_OPTION} {weights.spec} {found}, not the pinned {sha_key}={pin}; pass "
                              f"the pinned weights, or clear the pin (--set {sha_key}='')")
        if weights.path is not None:
            self.load_start_weights(weights)
        set_key(self.cfg, name_key, weights.spec)
        set_key(self.cfg, sha_key, weights.sha256)
        self.weights, self._weights_loaded = weights, True
        self._say(f"{self._weights_subject()}: {weights.describe()}")
        return weights

    def resolve_start_weights(self) -> Weights:
        """The trainer's ``WEIGHTS_KEYS[0]`` resolved to a file (or random init), with the checks of its kind."""
        raise NotImplementedError

    def load_start_weights(self, weights: Weights) -> None:
        """Load ``weights`` (a local file) into the freshly built model, strictly."""
        raise NotImplementedError

    def _check_start(self, ckpt_config: dict[str, Any], source: str | Path) -> None:
        """On resume: refuse a checkpoint trained from other starting weights than the requested ones (naming both),
        whatever ``allow_changes`` says, since the resumed model continues from the checkpoint's start; then hold the
        checkpoint's in the config. The weights are not read again: names are compared with the recorded name and a
        pinned hash with the recorded hash; resolved weights and an existing local file by their sha256. None (a
        config from before weights by name) is random init; a hash the checkpoint did not record is not compared."""
        name_key, sha_key = self.WEIGHTS_KEYS
        old = recorded_value(ckpt_config, name_key) or RANDOM
        old_sha = recorded_value(ckpt_config, sha_key) or ""
        new = get_key(self.cfg, name_key) or RANDOM
        pin = str(get_key(self.cfg, sha_key) or "").strip().lower()
        new_sha = self.weights.sha256 if self.weights is not None else ""
        if not new_sha and old_sha and new != RANDOM and Path(new).expanduser().is_file():
            new_sha = sha256_file(Path(new).expanduser())  # a file holds the same weights if it has the same bytes
        if new_sha and old_sha:
            same = new_sha == old_sha
        else:
            same = new == old and not (pin and old_sha and not old_sha.startswith(pin))
        if not same:
            raise ConfigError(
                f"checkpoint {source} was trained from {describe_recorded(old, old_sha)}, not the requested "
                f"{describe_recorded(new, new_sha or pin)}; a resume continues the model trained from the checkpoint's "
                f"weights, so other weights are refused even with --allow-changes: pass {self.WEIGHTS_OPTION} {old} to "
                f"continue this run, or another --out to train a new run from {new}"
            )
        set_key(self.cfg, name_key, old)
        set_key(self.cfg, sha_key, old_sha)
        self._weights_loaded = True
        self._say(f"{self._weights_subject()}: {describe_recorded(old, old_sha)}, as checkpoint {source} started from "
                  "(not read again: the checkpoint holds the trained model)")

    def save(self) -> Path:
        path = self.run_dir / "last.pt"
        if self.dist.is_primary:
            save_checkpoint(path, self.state_dict())
        barrier()  # no process runs ahead of a checkpoint it may have to resume from
        return path

    def checkpoint(self) -> Path:
        """The periodic checkpoint of ``fit``: :meth:`save` (trainers add what goes with it)."""
        return self.save()

    def _common_state(self) -> dict[str, Any]:
        """What every trainer's checkpoint holds; :meth:`_load_common_state` restores it."""
        return {
            "step": self.step,
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            },
        }

    def _load_common_state(self, ckpt: dict[str, Any], source: str | Path) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {source} does not fit this model: {e}") from None
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt.get("rng", {})
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _check_loss(self, loss: float, terms: dict[str, float | None] | None = None, *,
                    lr_hint: str = "--set optim.lr=...") -> None:
        """Before the update of step ``self.step``: raise :class:`NonFiniteLossError` for a NaN/inf ``loss`` (naming
        the first non-finite of ``terms``, the learning rate and the last checkpoint), and warn on stderr when the
        loss is :data:`DIVERGENCE_FACTOR` times the lowest running median (over up to 50 steps) seen so far (at
        most once per 100 steps)."""
        lr = self.optimizer.param_groups[0]["lr"]
        if not math.isfinite(loss):
            bad = next((k for k, v in (terms or {}).items() if v is not None and not math.isfinite(v)), None)
            which = f"loss term {bad} = {terms[bad]}" if bad else f"the loss = {loss}"  # type: ignore[index]
            last = latest_checkpoint(self.run_dir)
            where = (f"the last good checkpoint is {last} (saved before this step)" if last is not None else
                     "no checkpoint was saved yet")
            raise NonFiniteLossError(
                f"{which} at step {self.step} with learning rate {lr:.3e}: training stopped before this update; "
                f"{where}. Lower the learning rate ({lr_hint}) and continue with --resume auto --allow-changes, or "
                "start a new run"
            )
        # the reference is the lowest running median seen: the median of a run that has started to diverge
        # rises with it and would hide the divergence
        recent: list[float] = self.__dict__.setdefault("_recent_losses", [])
        if len(recent) >= 3:
            median = sorted(abs(v) for v in recent)[len(recent) // 2]
            ref = min(median, self.__dict__.get("_loss_reference", math.inf))
            self._loss_reference = ref
            quiet_until = self.__dict__.get("_divergence_quiet_until", -1)
            if ref > 0 and abs(loss) > DIVERGENCE_FACTOR * ref and self.step >= quiet_until:
                self._divergence_quiet_until = self.step + 100
                if self.dist.is_primary:
                    print(f"warning: step {self.step}: loss {loss:.4g} is {abs(loss) / ref:.0f}x its running median "
                          f"({ref:.4g}); training may be diverging: lower the learning rate ({lr:.3e}) if it goes on",
                          file=sys.stderr, flush=True)
        recent.append(loss)
        del recent[:-50]

    def _autocast(self) -> ContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)
