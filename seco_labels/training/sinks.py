"""Where a training run's log records go besides ``RUN_DIR/metrics.jsonl`` (``train.log``, ``--log``).

``metrics.jsonl`` is always written: resume, ``seco compare`` and the finished-run summaries read it. ``train.log``
chooses an extra sink: ``jsonl`` (none) or ``tensorboard`` (event files in ``RUN_DIR/tensorboard/``, needs the
``[tensorboard]`` extra). :class:`seco_labels.training.run_folder.RunFolder` sends every record it logs to the sink
(rank 0 only) and, after each validation, a few pictures of validation images (:meth:`LogSink.add_images`).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["LogSink", "TensorBoardSink", "SINKS", "LOG_KINDS", "TENSORBOARD_INSTALL", "TENSORBOARD_DIR",
           "VALIDATION_IMAGES", "require_log", "open_sink", "scalar_fields", "image_count"]

#: the command that installs what ``--log tensorboard`` needs
TENSORBOARD_INSTALL = 'pip install -e ".[tensorboard]" (in your clone of seco_labels)'
#: the folder of ``RUN_DIR`` that holds the TensorBoard event files
TENSORBOARD_DIR = "tensorboard"
#: validation images drawn for the sink after each validation (at most ``train.val_max_images`` when that is set)
VALIDATION_IMAGES = 3


class LogSink:
    """A destination for the run's log records (one per run, opened by :func:`open_sink`)."""

    def write(self, record: dict[str, Any]) -> None:
        """One record as :meth:`RunFolder.log` appends it to ``metrics.jsonl``."""

    def add_images(self, step: int, images: Sequence[tuple[str, np.ndarray]]) -> None:
        """``(tag, (H, W, 3) uint8 RGB)`` pictures of the validation after step ``step``."""

    @property
    def wants_images(self) -> bool:
        """Whether :meth:`add_images` keeps anything: the trainers skip drawing the pictures otherwise."""
        return False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def scalar_fields(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a log record under their TensorBoard tags: ``val/<field>`` for a validation record
    (it has a ``split``), ``train/<field>`` for the others; ``step``, booleans, None, NaN and non-numbers (the
    memory digests of torchrun) are left out."""
    section = "val" if "split" in record else "train"
    out = {}
    for key, value in record.items():
        if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{section}/{key}"] = float(value)
    return out


def _summary_writer() -> Any:
    """torch's ``SummaryWriter`` class, or :class:`ConfigError` with the install command when tensorboard is not
    importable. ``tensorboard`` itself is imported first: torch's module may already be loaded and would hide a
    missing package until the first write."""
    try:
        importlib.import_module("tensorboard")
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            f"--log tensorboard (train.log=tensorboard) needs the tensorboard package, which cannot be imported "
            f"({e}); install it with: {TENSORBOARD_INSTALL} (or log to metrics.jsonl alone with --log jsonl)"
        ) from None
    return SummaryWriter


class TensorBoardSink(LogSink):
    """Event files in ``log_dir``, opened on the first write (a run with nothing to train adds no file).

    ``purge_step`` is the step the run starts (or resumes) at: steps from there on are trained again, so the
    writer marks them as replaced (``SummaryWriter(purge_step=...)``) and TensorBoard hides what an earlier,
    crashed attempt wrote for them, as :meth:`RunFolder.truncate_log` drops them from ``metrics.jsonl``.
    """

    def __init__(self, log_dir: str | Path, purge_step: int = 0) -> None:
        self.log_dir = Path(log_dir)
        self.purge_step = purge_step
        self._cls = _summary_writer()
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            self._writer = self._cls(log_dir=str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    @property
    def wants_images(self) -> bool:
        return True

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in scalar_fields(record).items():
            self.writer.add_scalar(tag, value, step)

    def add_images(self, step: int, images: Sequence[tuple[str, np.ndarray]]) -> None:
        for tag, pixels in images:
            self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.flush()  # validations are rare: keep what they drew even if the run is killed before the next

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


#: ``train.log`` -> the sink it adds beside ``metrics.jsonl`` (None: nothing)
SINKS: dict[str, Callable[[Path, int], LogSink] | None] = {
    "jsonl": None,
    "tensorboard": lambda run_dir, purge_step: TensorBoardSink(run_dir / TENSORBOARD_DIR, purge_step),
}
LOG_KINDS: tuple[str, ...] = tuple(SINKS)


def require_log(kind: str) -> None:
    """Raise :class:`ConfigError` for an unknown ``train.log`` value, or for ``tensorboard`` without the package
    (naming :data:`TENSORBOARD_INSTALL`): checked before a run builds its data and model."""
    if kind not in SINKS:
        raise ConfigError(f"train.log={kind!r}: choose {' or '.join(LOG_KINDS)}")
    if kind == "tensorboard":
        _summary_writer()


def open_sink(kind: str, run_dir: str | Path, purge_step: int) -> LogSink | None:
    """The sink of ``train.log`` = ``kind`` for ``run_dir`` (None for ``jsonl``), replacing steps from
    ``purge_step`` on (:class:`TensorBoardSink`)."""
    require_log(kind)
    factory = SINKS[kind]
    return None if factory is None else factory(Path(run_dir), purge_step)


def image_count(val_max_images: int) -> int:
    """How many validation images to draw: :data:`VALIDATION_IMAGES`, fewer when validation scores fewer."""
    return min(VALIDATION_IMAGES, val_max_images) if val_max_images else VALIDATION_IMAGES
