"""Training checkpoints: plain types only, written atomically, loaded with ``weights_only=True``.

Layout of the saved dict (format 1)::

    {"format": 1, "version": str, "step": int (next step to run), "config": dict (resolved SecoConfig),
     "model": state_dict (student + EMA teacher + reservoir + prototypes),
     "optimizer": state_dict, "scaler": state_dict | None, "rng": {"torch": ByteTensor,
     "cuda": [ByteTensor] | None}, "metrics": dict}

The same file whether one process or N (torchrun, rank 0 writes it) trained; any process count resumes it.
Older checkpoints also hold ``rng["crops"]``, now unused: local crops are seeded per image.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import CheckpointError
from .io import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "check_compatible", "latest_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1

# The model is only the same network if these config keys agree.
_ARCH_KEYS = (
    ("model", "backbone"),
    ("model", "backbone_kwargs"),
    ("model", "aux_layer"),
    ("model", "proj_hidden"),
    ("model", "aspp_rates"),
    ("model", "reservoir_size"),
    ("data", "num_classes"),
)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version) to ``path`` via a temp file and ``os.replace``."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": __version__, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing, truncated or foreign file (names the path and what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass RUN_DIR/last.pt of a finished or running train")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({e}); use another checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise CheckpointError(
            f"{path} is not a seco_labels checkpoint (format {CHECKPOINT_FORMAT}); "
            "a bare backbone state dict goes to --backbone-weights instead"
        )
    return ckpt


def check_compatible(ckpt_config: dict[str, Any], config: dict[str, Any], source: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` listing every architecture key on which the two configs differ."""
    diffs = []
    for section, key in _ARCH_KEYS:
        a = ckpt_config.get(section, {}).get(key)
        b = config.get(section, {}).get(key)
        if a != b:
            diffs.append(f"{section}.{key}: checkpoint {a!r} vs requested {b!r}")
    if diffs:
        raise CheckpointError(
            f"checkpoint {source} was trained with another configuration ({'; '.join(diffs)}); "
            "use the matching preset/config or a checkpoint of this one"
        )


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``RUN_DIR/last.pt`` if it exists, else None."""
    p = Path(run_dir) / "last.pt"
    return p if p.is_file() else None
