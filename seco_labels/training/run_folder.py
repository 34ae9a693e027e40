"""The files of a training run folder, shared by ``seco train`` and ``seco fit-segmenter`` (:class:`RunFolder`):
its lock, ``config.yaml``, the ``metrics.jsonl`` log and the sink of ``train.log`` beside it, and ``last.pt``.

Under torchrun every process holds a :class:`RunFolder` of the same folder; rank 0 alone locks and writes it, and
every rank reads it on resume.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..config_io import save_config
from ..io import append_line, atomic_write_text, folder_lock, remove_stale_temps
from ..runtime.checkpoint import save_checkpoint
from ..runtime.distributed import DistContext, barrier
from .sinks import LogSink, open_sink

__all__ = ["RUN_LOCK", "RUN_FILES", "RunFolder"]

#: the lock file of a run folder (:func:`seco_labels.io.folder_lock`)
RUN_LOCK = ".lock"
#: files of a run folder written by temp file + rename: a killed run may leave their ``.<name>.<random>.tmp``
RUN_FILES = ("last.pt", "config.yaml", "metrics.jsonl", "metrics.json", "per_class.csv")


class RunFolder:
    """``RUN_DIR``: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON record per step and per
    validation, appended whole or not at all), ``last.pt`` (the checkpoint) and the lock ``.lock``.

    Args:
        path: the run folder (created by :meth:`open`).
        dist: this process's place in the run: only rank 0 locks and writes.
    """

    def __init__(self, path: str | Path, *, dist: DistContext) -> None:
        self.path = Path(path)
        self.dist = dist
        #: the sink of ``train.log`` besides ``metrics.jsonl`` (rank 0, while :meth:`open`; None for jsonl)
        self.sink: LogSink | None = None

    @property
    def log_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "last.pt"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``RUN_DIR/.lock`` (re-entrant; rank 0 only, for all processes) and, holding it, remove the temp files
        of :data:`RUN_FILES` a killed run left in ``RUN_DIR`` (other files there are left alone).

        Raises:
            FolderBusyError: another process is writing ``RUN_DIR``.
        """
        with folder_lock(self.path, RUN_LOCK, what="a training run", enabled=self.dist.is_primary):
            if self.dist.is_primary:
                remove_stale_temps(self.path, RUN_FILES)
            yield

    def open(self, cfg: Any, step: int) -> None:
        """Start (or continue) writing at step ``step`` (rank 0 alone): open the sink of ``cfg.train.log``, which
        replaces the steps from ``step`` on, create ``RUN_DIR``, write ``config.yaml`` and drop the log records of
        steps >= ``step`` (:meth:`truncate_log`). :meth:`close` closes the sink.

        Raises:
            ConfigError: ``train.log=tensorboard`` without the tensorboard package (names the install command).
        """
        if not self.dist.is_primary:
            return
        self.close()
        self.sink = open_sink(cfg.train.log, self.path, step)
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.path / "config.yaml")
        self.truncate_log(step)

    def close(self) -> None:
        """Close the sink (its events are on disk)."""
        if self.sink is not None:
            self.sink.close()
            self.sink = None

    # -- the log -------------------------------------------------------------------------------------------
    def truncate_log(self, step: int) -> None:
        """Drop records of steps >= ``step``: they are (re-)run now, after a resume or by a fresh start at step 0
        over the log of an attempt that died before its first checkpoint. Each step is logged once."""
        if not self.dist.is_primary or not self.log_path.exists():
            return
        kept = [ln for ln in self.log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < step]
        atomic_write_text(self.log_path, "".join(ln + "\n" for ln in kept))

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` and send it to the sink (rank 0), whole or not at all
        (DiskFullError on a full disk)."""
        if not self.dist.is_primary:
            return
        append_line(self.log_path, json.dumps(record))
        if self.sink is not None:
            self.sink.write(record)

    def log_images(self, step: int, draw: Callable[[], list[tuple[str, np.ndarray]]]) -> None:
        """Send the sink the ``(tag, (H, W, 3) uint8)`` pictures ``draw()`` makes of the validation after step
        ``step``, when it keeps pictures (drawing them costs forward passes a jsonl-only run does not pay)."""
        if self.sink is not None and self.sink.wants_images and self.dist.is_primary:
            self.sink.add_images(step, draw())

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

    # -- the checkpoint ------------------------------------------------------------------------------------
    def save_checkpoint(self, state_dict: Callable[[], dict[str, Any]]) -> Path:
        """Write ``state_dict()`` to ``last.pt`` atomically (rank 0 alone calls it), then wait for every process.

        Raises:
            DiskFullError: it did not fit; the previous ``last.pt`` is kept.
        """
        if self.dist.is_primary:
            save_checkpoint(self.checkpoint_path, state_dict())
        barrier()  # no process runs ahead of a checkpoint it may have to resume from
        return self.checkpoint_path
