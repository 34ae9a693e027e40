"""Multi-process runs under ``torchrun``: process-group set-up and the few collectives the toolkit needs.

Nothing here launches processes: ``torchrun`` (PyTorch's own launcher) starts them and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads that
environment. Without it every helper degrades to the single-process identity, so the same code path runs
in one process and in many (docs/distributed.md).

Backends follow PyTorch's advice: NCCL when the processes drive CUDA devices, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ..errors import ConfigError, SecoError

__all__ = [
    "DistContext", "DistributedError", "launched_by_torchrun", "is_primary_process", "init_distributed", "all_gather_cat", "all_reduce_mean",
    "all_gather_objects", "barrier", "shutdown_distributed", "global_sum", "world_size", "LOCAL", "normalise_over",
    "NormGroups", "norm_groups",
]


class DistributedError(SecoError, RuntimeError):
    """Processes of one run disagree (state drifted apart) or the launch environment is inconsistent."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run. ``world_size == 1`` means a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_primary(self) -> bool:
        """Rank 0 alone writes checkpoints, logs, merged artifacts and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment names more than one process (``torchrun --nproc_per_node N``, N > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_primary_process() -> bool:
    """Whether this process is rank 0 (or the only one): the one that prints results."""
    return int(os.environ.get("RANK", "0")) == 0


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip().lstrip("-").isdigit():
        raise DistributedError(
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} asks for a multi-process run but {name}={value!r}; "
            "start the command with torchrun, which sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
        )
    return int(value)


def init_distributed(device: torch.device, *, timeout_min: float = 60.0) -> DistContext:
    """Join the process group ``torchrun`` describes and pick this process's device.

    Args:
        device: the device the single-process run would use (from ``--device``). Under torchrun a CUDA device
            becomes ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` is refused because each process needs its own GPU.
        timeout_min: collective timeout, minutes; long enough for rank 0 to write a checkpoint or merge an export.

    Returns:
        The :class:`DistContext`; a single-process one (rank 0 of 1, ``device`` unchanged) outside torchrun.
        Calling it again in an initialised process returns the same context.
    """
    if not launched_by_torchrun():
        return DistContext(device=device)
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda or auto "
                "and choose the GPUs with CUDA_VISIBLE_DEVICES"
            )
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are visible; start at most "
                "that many processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=timedelta(minutes=timeout_min),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order; identity in a single process.

    Every rank must pass the same shape (the global batch is split evenly, so they do). No gradient flows.
    """
    if not _active():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


#: :func:`normalise_over` scope of a process that normalises its losses alone: no collective
LOCAL = "local"

_scopes: list[Any] = []  # the active normalise_over scopes, innermost last; none = every process


def _scope() -> Any:
    return _scopes[-1] if _scopes else None


def _is_local(scope: Any) -> bool:
    return isinstance(scope, str) and scope == LOCAL


@contextlib.contextmanager
def normalise_over(scope: Any) -> Iterator[None]:
    """Within the block, :func:`global_sum` and :func:`world_size` sum and count over ``scope`` instead of every
    process: ``None`` (every process), :data:`LOCAL` (this process alone) or a process group (its processes).

    The training step normalises each group of images of ``loss.norm_group_size`` by that group's own counts with
    it (:func:`norm_groups`, docs/distributed.md "Loss normalisation").
    """
    _scopes.append(scope)
    try:
        yield
    finally:
        _scopes.pop()


def world_size() -> int:
    """Processes in the run (1 outside torchrun), or in the :func:`normalise_over` scope when one is active."""
    scope = _scope()
    if _is_local(scope) or not _active():
        return 1
    return dist.get_world_size(scope)


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes of a detached tensor (counts, flags); ``t.detach()`` in a single process.

    Batch-wide losses use it for their normalisers: ``world_size() * local_sum / global_sum(local_count)``,
    averaged over processes as DDP averages gradients, has the value and gradient of ``sum / count`` on the
    global batch, so a run does not depend on how the batch is split (docs/distributed.md). Inside
    :func:`normalise_over` the sum (and :func:`world_size`) cover that scope's processes only.
    """
    scope = _scope()
    if _is_local(scope) or not _active():
        return t.detach()
    out = t.detach().clone()
    dist.all_reduce(out, group=scope)
    return out


@dataclass(frozen=True)
class NormGroups:
    """Where this process's images fall in the loss-normalisation groups of ``loss.norm_group_size``
    (docs/distributed.md "Loss normalisation").

    The global batch is cut into consecutive groups of ``size`` images. This process holds ``chunks`` whole groups
    (``chunks`` equal consecutive slices of its batch), or, when a group spans several processes, its share of one
    (``chunks == 1``). ``first`` is the global-batch index of the first image of this process's first group;
    ``scope`` is what a group's counts are summed over (:func:`normalise_over`): :data:`LOCAL` for whole groups,
    ``None`` for a group of every process, else the process group of its processes.
    """

    size: int
    chunks: int
    first: int
    scope: Any


_rank_groups: dict[int, Any] = {}  # processes per group -> this process's group (created once, collectively)


def _consecutive_group(k: int) -> Any:
    """This process's group of ``k`` consecutive ranks; the first call creates every such group on every rank
    (``new_group`` is collective, so all processes call this at the same point)."""
    if k not in _rank_groups:
        rank, mine = dist.get_rank(), None
        for start in range(0, dist.get_world_size(), k):
            group = dist.new_group(list(range(start, start + k)))
            if start <= rank < start + k:
                mine = group
        _rank_groups[k] = mine
    return _rank_groups[k]


def norm_groups(group_size: int, local_batch: int) -> NormGroups:
    """The :class:`NormGroups` of this process for groups of ``group_size`` images (0: the whole global batch).

    Args:
        group_size: ``loss.norm_group_size``.
        local_batch: this process's images per step (the global batch over the processes).

    Raises:
        ConfigError: the groups do not fall on process boundaries: ``group_size`` must divide this process's
            batch or be a multiple of it.
    """
    world = dist.get_world_size() if _active() else 1
    rank = dist.get_rank() if _active() else 0
    size = group_size or local_batch * world
    if size <= local_batch:
        if local_batch % size:
            raise ConfigError(
                f"loss.norm_group_size={group_size} does not divide the {local_batch} images each of {world} "
                "process(es) takes; pick a number of processes that gives each a multiple or divisor of it"
            )
        return NormGroups(size, local_batch // size, rank * local_batch, LOCAL)
    if size % local_batch:
        raise ConfigError(
            f"loss.norm_group_size={group_size} is not a multiple of the {local_batch} images each of {world} "
            "processes takes; pick a number of processes that gives each a multiple or divisor of it"
        )
    k = size // local_batch  # processes per group
    scope = None if k == world else _consecutive_group(k)
    return NormGroups(size, 1, rank // k * size, scope)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of ``t`` (a new tensor); identity in a single process."""
    if not _active():
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order; ``[obj]`` in a single process."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank; nothing in a single process."""
    if _active():
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group (end of a torchrun command); nothing in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _rank_groups.clear()
