"""Learning-rate schedule as a pure function of the step (docs/design.md §3; published PolyWarmupAdamW)."""

from __future__ import annotations

from ..config import OptimConfig

__all__ = ["lr_multiplier"]


def lr_multiplier(step: int, cfg: OptimConfig, total_iters: int) -> float:
    """Factor applied to every group's base lr before the optimiser step ``step`` (0-based).

    Linear warm-up from ``warmup_ratio`` to 1 over ``warmup_iters``, then poly decay
    ``(1 - step / total_iters) ** power``; past ``total_iters`` the last value is kept at 0.
    """
    if step < cfg.warmup_iters:
        return 1.0 - (1.0 - step / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
    if step < total_iters:
        return (1.0 - step / total_iters) ** cfg.power
    return 0.0
