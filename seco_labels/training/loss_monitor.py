"""The loss checks of a training step, before its update: a NaN/inf loss stops the run
(:class:`NonFiniteLossError`), a loss far above its running median is reported as a possible divergence
(:class:`LossMonitor`).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ..errors import SecoError
from ..runtime.checkpoint import latest_checkpoint

__all__ = ["NonFiniteLossError", "DIVERGENCE_FACTOR", "LossMonitor"]


class NonFiniteLossError(SecoError, FloatingPointError):
    """The loss went NaN or infinite: training stopped before the step's update (the message names the step, the
    term, the learning rate and the last good checkpoint)."""


#: a loss this many times its running median is reported as a possible divergence
DIVERGENCE_FACTOR = 100.0
#: the running median is over this many recent steps (and needs at least 3)
MEDIAN_WINDOW = 50
#: after a divergence warning, none for this many steps
WARN_EVERY = 100


class LossMonitor:
    """Checks each step's loss (:meth:`check`) and keeps what the divergence check compares with.

    Args:
        run_dir: the run folder, whose last checkpoint a :class:`NonFiniteLossError` names.
        lr_hint: how the message says to lower the learning rate (``--set optim.lr=...``, ``--lr``).
        warn: print the divergence warning (rank 0 alone under torchrun).
    """

    def __init__(self, run_dir: str | Path, *, lr_hint: str, warn: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.lr_hint = lr_hint
        self.warn = warn
        #: the losses of the last :data:`MEDIAN_WINDOW` steps
        self.recent: list[float] = []
        #: the lowest running median seen: the median of a run that has started to diverge rises with it and would
        #: hide the divergence
        self.reference = math.inf
        #: no divergence warning before this step
        self.quiet_until = -1

    def check(self, loss: float, terms: dict[str, float | None] | None = None, *, step: int, lr: float) -> None:
        """Before the update of step ``step`` (at learning rate ``lr``): raise :class:`NonFiniteLossError` for a
        NaN/inf ``loss`` (naming the first non-finite of ``terms``, the learning rate and the last checkpoint), and
        warn on stderr when the loss is :data:`DIVERGENCE_FACTOR` times the lowest running median (over up to
        :data:`MEDIAN_WINDOW` steps) seen so far (at most once per :data:`WARN_EVERY` steps)."""
        if not math.isfinite(loss):
            bad = next((k for k, v in (terms or {}).items() if v is not None and not math.isfinite(v)), None)
            which = f"loss term {bad} = {terms[bad]}" if bad else f"the loss = {loss}"  # type: ignore[index]
            last = latest_checkpoint(self.run_dir)
            where = (f"the last good checkpoint is {last} (saved before this step)" if last is not None else
                     "no checkpoint was saved yet")
            raise NonFiniteLossError(
                f"{which} at step {step} with learning rate {lr:.3e}: training stopped before this update; "
                f"{where}. Lower the learning rate ({self.lr_hint}) and continue with --resume auto --allow-changes, "
                "or start a new run"
            )
        recent = self.recent
        if len(recent) >= 3:
            median = sorted(abs(v) for v in recent)[len(recent) // 2]
            self.reference = ref = min(median, self.reference)
            if ref > 0 and abs(loss) > DIVERGENCE_FACTOR * ref and step >= self.quiet_until:
                self.quiet_until = step + WARN_EVERY
                if self.warn:
                    print(f"warning: step {step}: loss {loss:.4g} is {abs(loss) / ref:.0f}x its running median "
                          f"({ref:.4g}); training may be diverging: lower the learning rate ({lr:.3e}) if it goes on",
                          file=sys.stderr, flush=True)
        recent.append(loss)
        del recent[:-MEDIAN_WINDOW]
