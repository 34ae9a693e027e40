"""Stopping a training run cleanly on SIGINT/SIGTERM: the flag the training loop reads after each step
(:class:`StopOnSignals`, mixed into :class:`seco_labels.training.run_state.RunState`) and the exception it then raises
(:class:`TrainingInterrupted`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import SecoError
from ..runtime.distributed import DistContext, global_sum

__all__ = ["TrainingInterrupted", "StopOnSignals"]


class TrainingInterrupted(SecoError):
    """SIGINT or SIGTERM stopped training after a whole step, and ``checkpoint`` holds that step.

    ``step`` steps of ``iters`` are trained; :attr:`exit_code` is the shell's convention for a process ended by the
    signal (128 + its number: 130 for SIGINT, 143 for SIGTERM), which the CLI exits with.
    """

    def __init__(self, signum: int, step: int, iters: int, checkpoint: Path) -> None:
        self.signum, self.step, self.iters, self.checkpoint = signum, step, iters, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}/{iters}; saved {checkpoint}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignals:
    """The signal flag of a training run (needs ``quiet``, ``dist`` and ``device``)."""

    quiet: bool
    dist: DistContext
    device: torch.device

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While training: SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption) sets a flag that the loop reads after
        each step (:meth:`_stop_requested`). A second Ctrl-C stops at once, without saving (the previous handler);
        a repeated SIGTERM does not, because schedulers send it to every process and torchrun forwards it again
        (their SIGKILL after the grace period is the hard stop). Handlers are only installed from the main thread
        (Python's rule) and restored on exit; enter this before DataLoader workers fork, so they inherit it and
        leave the decision to the main process instead of dying of the terminal's Ctrl-C."""
        self._stop_signal = 0
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        pid = os.getpid()
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            if os.getpid() != pid:  # a forked DataLoader worker inherited this: the main process decides
                return
            if self._stop_signal:
                if signum != signal.SIGINT or self._stop_signal != signal.SIGINT:
                    return
                for s, h in previous.items():
                    signal.signal(s, h)
                signal.raise_signal(signum)  # KeyboardInterrupt for SIGINT, termination for SIGTERM
                return
            self._stop_signal = signum
            if not self.quiet:
                print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint (send it "
                      "again to stop at once, without saving)", file=sys.stderr, flush=True)

        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _stop_requested(self) -> bool:
        """Whether any process got SIGINT/SIGTERM. Under torchrun one small all-reduce per step, so that every
        process stops after the same step (a process that stopped alone would leave the others waiting in a
        collective); a process that got no signal itself reports SIGTERM."""
        flag = getattr(self, "_stop_signal", 0)
        if not self.dist.distributed:
            return bool(flag)
        anyone = float(global_sum(torch.tensor([float(bool(flag))], device=self.device)).item()) > 0
        if anyone and not flag:
            self._stop_signal = int(signal.SIGTERM)
        return anyone
