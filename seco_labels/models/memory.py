"""SeCo's two memories: the FIFO key reservoir with its tags, and the class prototypes (docs/design.md §3 steps 4-5).

Both keep their state in ``register_buffer``s, so it is checkpointed with the model. Both take the keys of
*this process*; ``gather`` (by default :func:`~seco_labels.runtime.distributed.all_gather_cat`: identity in a single
process, an all-gather in rank order under torchrun) is applied first, so that every rank applies the same
update and keeps identical state, equal to a single process's on the same global batch.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime.distributed import all_gather_cat

__all__ = ["KeyReservoir", "ClassPrototypes"]

Gather = Callable[[torch.Tensor], torch.Tensor]


class KeyReservoir(nn.Module):
    """FIFO queue of ``size`` teacher keys (size, dim) and their tags (size,): -1 uncertain, 0 bg, k class.

    Initial content follows the published code: random keys (normalised along the queue axis, as written
    there) tagged 0, so early background crops already have positives.
    """

    def __init__(self, size: int, dim: int, gather: Gather = all_gather_cat) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=0))
        self.register_buffer("tags", torch.zeros(size, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.gather = gather

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def push(self, keys: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Enqueue keys (n, dim) with tags (n,), overwriting the oldest entries.

        Returns the keys and tags actually enqueued: every process's, in rank order (``(n * world, dim)``,
        ``(n * world,)``), so that a loss reading "this step's keys" sees the same set in every process.
        """
        keys, tags = self.gather(keys.detach()), self.gather(tags)
        n = keys.shape[0]
        if self.size % n:
            raise ValueError(
                f"reservoir size {self.size} is not a multiple of the {n} keys pushed per step; "
                "set model.reservoir_size to a multiple of data.batch_size * (2 + decompose.num_local_crops)"
            )
        # The pointer stays on the device (no host read): a multiple of n, so the n slots never wrap around.
        slots = self.ptr + torch.arange(n, device=self.ptr.device)
        self.keys.index_copy_(0, slots, keys.to(self.keys.dtype))
        self.tags.index_copy_(0, slots, tags.to(self.tags.dtype))
        self.ptr.add_(n).remainder_(self.size)
        return keys, tags


class ClassPrototypes(nn.Module):
    """One L2-normalised vector per foreground class, an EMA of single-label images' class tokens.

    ``update`` applies ``p <- momentum * p + (1 - momentum) * f`` for each single-label image in order
    (``label_idx`` in 1..C; -1 = multi-label, skipped), then re-normalises every prototype (published code).
    """

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.9, gather: Gather = all_gather_cat) -> None:
        super().__init__()
        self.register_buffer("vectors", torch.randn(num_classes, dim))
        self.momentum = momentum
        self.gather = gather

    @torch.no_grad()
    def update(self, embeds: torch.Tensor, label_idx: torch.Tensor) -> None:
        """embeds (B, dim) class tokens of the global teacher; label_idx (B,) long, class 1..C or -1."""
        embeds, label_idx = self.gather(embeds.detach().float()), self.gather(label_idx.reshape(-1))
        m = self.momentum
        # in image order, as published (two images of one class both enter); a multi-label image (-1) writes its
        # row back unchanged, so the labels are never read on the host
        for feat, label in zip(embeds, label_idx.long()):
            row = (label - 1).clamp(min=0).reshape(1)
            old = self.vectors.index_select(0, row)
            self.vectors.index_copy_(0, row, torch.where(label > 0, old * m + (1 - m) * feat, old))
        self.vectors.copy_(F.normalize(self.vectors, dim=1))
