"""What both trainers and the inference commands share at run time: the device, moving batches to it, the
step-indexed batch sampler, the training loaders' worker set-up, and peak memory for the progress lines.

The parts of a training run (the run folder's log, checkpoints and lock, resume, stopping on a signal, progress
lines) are in :mod:`seco_labels.training`, which the two trainers are built from.
"""

from __future__ import annotations

import resource
import signal
import sys
from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

from ..errors import ConfigError, DataError

__all__ = ["resolve_device", "batch_to_device", "StepBatchSampler", "leave_signals_to_main", "peak_memory_mb"]


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda``/``cuda:N`` fail clearly without a GPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def leave_signals_to_main(worker_id: int) -> None:
    """``worker_init_fn`` of the training loaders: a DataLoader worker ignores SIGINT and SIGTERM.

    Ctrl-C, ``timeout`` and schedulers such as SLURM signal the whole process group. Left to torch's default, a
    worker dies of SIGTERM and the main process crashes ("DataLoader worker ... is killed by signal") before it can
    finish its step and save a checkpoint; ignoring it, the main process stops cleanly
    (:class:`seco_labels.training.signals.StopOnSignals`) and shuts its workers down itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def batch_to_device(batch: dict[str, Any], device: torch.device, host_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Move every tensor of a collated batch to ``device``, except those of ``host_keys`` (values the host reads:
    reading them back from a GPU would cost a sync); other values (ids) stay as they are."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) and k not in host_keys else v)
            for k, v in batch.items()}


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(epoch, index)`` pairs, a pure function of (seed, step); distributed-aware.

    Each epoch is a fresh permutation drawn from ``seed + epoch``, cut into global batches of ``batch_size``;
    incomplete last batches are dropped. Rank ``r`` of ``world_size`` gets the ``r``-th contiguous slice of each
    global batch, so the ranks' slices concatenated in rank order are the single-process batch: the global batch,
    the order of the gathered keys and hence the training run do not depend on the number of processes.
    Starting at ``start_step`` reproduces exactly the batches an uninterrupted run would have seen, which is
    what makes ``--resume`` lose nothing (with the same or another number of processes). The epoch travels with
    the index so that per-sample randomness is seeded by (seed, epoch, index) inside DataLoader workers too.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0, *, rank: int = 0,
                 world_size: int = 1) -> None:
        if num_items < batch_size:
            raise DataError(
                f"the training split has {num_items} images, fewer than data.batch_size={batch_size}; "
                "add images or lower the batch size"
            )
        if batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={batch_size} is the global batch and must split evenly over {world_size} "
                f"processes; pick a multiple of {world_size}"
            )
        self.n, self.batch_size, self.seed, self.start_step = num_items, batch_size, seed, start_step
        self.steps_per_epoch = num_items // batch_size
        per_rank = batch_size // world_size
        self.rank_slice = slice(rank * per_rank, (rank + 1) * per_rank)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            epoch, pos = divmod(step, self.steps_per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            for b in range(pos, self.steps_per_epoch):
                batch = perm[b * self.batch_size : (b + 1) * self.batch_size][self.rank_slice]
                yield [(epoch, int(i)) for i in batch]
            step = (epoch + 1) * self.steps_per_epoch


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far, MiB: CUDA ``max_memory_allocated`` on a GPU, else the process's maximum resident set size
    (``getrusage``; what ``/usr/bin/time`` reports)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
