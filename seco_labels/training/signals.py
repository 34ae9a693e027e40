"""Stopping a training run cleanly on SIGINT/SIGTERM: :class:`StopOnSignals`, the context the training loop
(:func:`seco_labels.training.loop.run_loop`) runs in and asks after each step, and :class:`TrainingInterrupted`, what
the loop then raises.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Self

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
    """While entered, SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption) sets :attr:`signum` instead of ending the
    process; the loop asks :meth:`requested` after each step.

    A second Ctrl-C stops at once, without saving (the previous handler); a repeated SIGTERM does not, because
    schedulers send it to every process and torchrun forwards it again (their SIGKILL after the grace period is the
    hard stop). Handlers are only installed from the main thread (Python's rule) and restored on exit; enter this
    before DataLoader workers fork, so they inherit it and leave the decision to the main process instead of dying
    of the terminal's Ctrl-C.

    Args:
        dist: this process's place in the run; under torchrun :meth:`requested` asks every process.
        quiet: no "finishing this step" line on stderr when a signal arrives.
    """

    def __init__(self, dist: DistContext, *, quiet: bool = False) -> None:
        self.dist = dist
        self.quiet = quiet
        #: the signal that asked to stop (0: none yet)
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        self.signum = 0
        if threading.current_thread() is not threading.main_thread():
            return self
        pid = os.getpid()
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, lambda signum, frame: self._handle(signum, frame, pid))
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None, pid: int) -> None:
        if os.getpid() != pid:  # a forked DataLoader worker inherited this: the main process decides
            return
        if self.signum:
            if signum != signal.SIGINT or self.signum != signal.SIGINT:
                return
            for s, h in self._previous.items():
                signal.signal(s, h)
            signal.raise_signal(signum)  # KeyboardInterrupt for SIGINT, termination for SIGTERM
            return
        self.signum = signum
        if not self.quiet:
            print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint (send it "
                  "again to stop at once, without saving)", file=sys.stderr, flush=True)

    def requested(self) -> bool:
        """Whether any process got SIGINT/SIGTERM. Under torchrun one small all-reduce per step, so that every
        process stops after the same step (a process that stopped alone would leave the others waiting in a
        collective); a process that got no signal itself reports SIGTERM."""
        if not self.dist.distributed:
            return bool(self.signum)
        flag = torch.tensor([float(bool(self.signum))], device=self.dist.device)
        anyone = float(global_sum(flag).item()) > 0
        if anyone and not self.signum:
            self.signum = int(signal.SIGTERM)
        return anyone
