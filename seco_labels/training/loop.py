"""The training loop of both trainers (:func:`run_loop`), the run it runs in (:func:`opened_run`: the run folder's
lock, the starting weights, ``config.yaml`` and the log), and its progress lines.

A trainer provides what :class:`LoopTrainer` lists; the loop owns the order of a step's parts (train, log,
validate, checkpoint, stop on a signal), so ``seco train`` and ``seco fit-segmenter`` behave alike.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..runtime.device import peak_memory_mb
from ..runtime.distributed import DistContext
from .run_folder import RunFolder
from .signals import StopOnSignals, TrainingInterrupted
from .start_weights import StartWeights

__all__ = ["LoopTrainer", "opened_run", "run_loop"]


class LoopTrainer(Protocol):
    """What :func:`opened_run` and :func:`run_loop` need of a trainer."""

    #: the resolved config: ``train.iters``, ``train.log_every``, ``train.val_every``, ``train.ckpt_every``,
    #: ``train.log``, ``data.val_split``
    cfg: Any
    #: the next step to train; the loop advances it after each step
    step: int
    model: nn.Module
    #: its first param group's ``lr`` is logged with each step
    optimizer: torch.optim.Optimizer
    device: torch.device
    dist: DistContext
    #: no progress bar, progress lines or signal message
    quiet: bool
    folder: RunFolder
    start_weights: StartWeights

    def checkpoint(self) -> Path:
        """Write the periodic checkpoint (``RUN_DIR/last.pt``) and return its path."""

    def validation_images(self) -> list[tuple[str, np.ndarray]]:
        """``(tag, (H, W, 3) uint8)`` pictures of a few validation images and what the model makes of them, for a
        log sink that keeps pictures (rank 0 alone calls it)."""


@contextlib.contextmanager
def opened_run(trainer: LoopTrainer) -> Iterator[None]:
    """The frame of a trainer's ``fit``: hold the run folder's lock (:meth:`RunFolder.lock`, which first removes
    the temp files a killed run left), load the starting weights of a fresh run (unless ``resume`` loaded or
    checked them already), then write ``config.yaml``, drop the log records of steps >= ``trainer.step`` and open
    the sink of ``train.log`` (:meth:`RunFolder.open`). The sink is closed when the block ends or raises, so an
    interrupted run's events are on disk.

    Raises:
        FolderBusyError: another process is writing the run folder.
        ConfigError: ``train.log=tensorboard`` without the tensorboard package; unknown or mismatched weights.
    """
    with trainer.folder.lock():
        try:
            if not trainer.start_weights.loaded:  # fit() without resume(): a fresh run
                trainer.start_weights.start(trainer.cfg)
            trainer.folder.open(trainer.cfg, trainer.step)
            yield
        finally:
            trainer.folder.close()


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))  # "0:02:23", "1 day, 2:46:29" (as mmsegmentation)


def _plain_progress(trainer: LoopTrainer, record: dict[str, Any], times: list[float]) -> None:
    """When stderr is not a terminal (nohup, a cluster's log file) and not quiet, write one plain line (what the
    progress bar shows on a terminal): step/total, loss and its terms, lr, mean s/it over ``times`` (the steps
    since the last line), ETA at that speed, and :func:`peak_memory_mb`."""
    if trainer.quiet or sys.stderr.isatty():
        return
    iters, step = trainer.cfg.train.iters, trainer.step
    terms = [f"{k[5:]} {v:.4f}" for k, v in record.items() if k.startswith("loss_") and v is not None]
    sec = sum(times) / max(len(times), 1)
    loss = f"loss {record['loss']:.4f}" + (f" ({', '.join(terms)})" if terms else "")
    line = (f"step {step}/{iters} | {loss} | lr {record['lr']:.3e} | {sec:.3f} s/it | "
            f"eta {_eta(sec * (iters - step))} | peak mem {peak_memory_mb(trainer.device):.0f} MB")
    print(line, file=sys.stderr, flush=True)


def _end_step(trainer: LoopTrainer, record: dict[str, Any], bar: tqdm, times: list[float]) -> None:
    """After a training step: log ``record``, advance ``trainer.step`` and the bar, collect the step time, and
    every ``train.log_every`` steps (and at the last) set the bar's postfix (the loss terms ``loss_<term>`` of
    ``record``, or its ``loss`` when it has none) and write the plain line."""
    trainer.folder.log(record)
    times.append(record["time"])
    trainer.step += 1
    bar.update(1)
    t = trainer.cfg.train
    if trainer.step % t.log_every == 0 or trainer.step == t.iters:
        terms = [k for k in record if k.startswith("loss_")]
        bar.set_postfix({k[5:]: f"{record[k]:.3f}" for k in terms if record[k] is not None} if terms else
                        {"loss": f"{record['loss']:.3f}"})
        _plain_progress(trainer, record, times)
        times.clear()


def run_loop(trainer: LoopTrainer, batches: Callable[[], Iterable[Any]], step: Callable[[Any], dict[str, Any]],
             validate: Callable[[], tuple[dict[str, Any], str] | None], *, desc: str,
             validate_last_step: bool = True) -> dict[str, Any]:
    """Train ``trainer`` from ``trainer.step`` to ``train.iters``: the loop of both trainers' ``fit``, inside
    :func:`opened_run`. Returns the last step's record merged with what was validated after it ({} when no step
    ran).

    ``batches()`` makes the training batches from step ``trainer.step`` on (called once, after the signal handlers
    are installed, so that DataLoader workers inherit them). ``step(batch)`` makes one optimiser step at
    ``trainer.step`` and returns the fields of its log record (``loss`` and, for SeCo, ``loss_<term>`` and counts);
    the record is ``{"step", "lr", **fields, "time"}``. ``validate()`` returns the scores to log (beside ``step``
    and ``split``) and the line to show, or None (no val split). It is due every ``train.val_every`` steps and at
    the last step, unless not ``validate_last_step`` (fit-segmenter validates after the loop itself, for its
    reports).

    Each step, in this one order: the step -> log its record, advance the bar, the plain progress line ->
    validate if due -> ``trainer.checkpoint()`` every ``train.ckpt_every`` steps and at the last -> on
    SIGINT/SIGTERM, checkpoint (unless just done) and raise :class:`TrainingInterrupted`. Validation comes
    before the checkpoint so that a checkpoint holds all its step did: the validation record is in the log it
    resumes with (a run killed while validating resumes from the previous checkpoint and validates again,
    rather than skipping that validation), and the RNG state it saves is the one after validation (SeCo's val
    DataLoader draws its seed from torch's RNG), so a resumed run draws what the uninterrupted run would.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM arrived; the step under way was finished and checkpointed first.
    """
    t, folder = trainer.cfg.train, trainer.folder
    trainer.model.train()
    last: dict[str, Any] = {}
    bar = tqdm(total=t.iters, initial=trainer.step, desc=desc, dynamic_ncols=True,
               disable=trainer.quiet or not sys.stderr.isatty())
    times: list[float] = []
    # handlers first: the loader's workers inherit them
    with StopOnSignals(trainer.dist, quiet=trainer.quiet) as stop, contextlib.closing(bar):
        loader = iter(batches()) if trainer.step < t.iters else iter(())
        while trainer.step < t.iters:
            start = time.perf_counter()
            fields = step(next(loader))
            last = {"step": trainer.step, "lr": trainer.optimizer.param_groups[0]["lr"], **fields,
                    "time": time.perf_counter() - start}
            _end_step(trainer, last, bar, times)
            at_end = trainer.step == t.iters
            if t.val_every and (trainer.step % t.val_every == 0 or at_end) and (validate_last_step or not at_end):
                shown = validate()
                if shown is not None:
                    folder.log({"step": trainer.step - 1, "split": trainer.cfg.data.val_split, **shown[0]})
                    folder.log_images(trainer.step - 1, trainer.validation_images)
                    last = {**last, **shown[0]}
                    if trainer.dist.is_primary:
                        bar.write(f"step {trainer.step}: {shown[1]}")
            saved = trainer.step % t.ckpt_every == 0 or trainer.step == t.iters
            if saved:
                trainer.checkpoint()
            if stop.requested():
                path = folder.checkpoint_path if saved else trainer.checkpoint()
                raise TrainingInterrupted(stop.signum, trainer.step, t.iters, path)
    return last
