"""Training checkpoints: plain types only, written atomically, loaded with ``weights_only=True``.

Layout of the saved dict (format 1)::

    {"format": 1, "version": str, "kind": "seco" | "segmenter" (which trainer wrote it; absent in early seco
     checkpoints), "step": int (next step to run), "config": dict (resolved SecoConfig or SegmenterConfig),
     "model": state_dict (student + EMA teacher + reservoir + prototypes),
     "optimizer": state_dict, "scaler": state_dict | None, "rng": {"torch": ByteTensor,
     "cuda": [ByteTensor] | None}, "metrics": dict}

The same file whether one process or N (torchrun, rank 0 writes it) trained; any process count resumes it.
Older checkpoints also hold ``rng["crops"]``, now unused: local crops are seeded per image.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from .. import __version__
from ..errors import CheckpointError, ConfigError
from ..io import append_line, atomic_path, sha256_file

if TYPE_CHECKING:
    from ..config import SecoConfig
    from ..models import SeCoNet

__all__ = [
    "save_checkpoint", "load_checkpoint", "check_compatible", "latest_checkpoint", "CHECKPOINT_FORMAT",
    "ConfigChange", "diff_configs", "check_changes", "record_changes", "CHANGES_FILE", "checkpoint_kind",
    "require_kind", "load_seco", "seco_provenance",
]

CHECKPOINT_FORMAT = 1

# The model is only the same network if these config keys agree.
SECO_ARCH_KEYS = (
    ("model", "backbone"),
    ("model", "backbone_kwargs"),
    ("model", "aux_layer"),
    ("model", "proj_hidden"),
    ("model", "aspp_rates"),
    ("model", "reservoir_size"),
    ("data", "num_classes"),
)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version) to ``path`` via a temp file and ``os.replace``.

    Raises:
        DiskFullError: the disk (or quota, or file size limit) filled up; ``path`` keeps the previous checkpoint and
            the temp file is removed.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": __version__, **state}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # a file object, not the path: torch's own writer reports a failed write as "unexpected pos" without the
        # errno, while Python's file keeps the OSError (ENOSPC) in the exception chain for atomic_path to name
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing, truncated or foreign file (names the path and what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass RUN_DIR/last.pt of a finished or running train")
    # torch's own errors are paragraphs about weights_only or miniz internals; classify the file first so the
    # message says what the file is. save_checkpoint writes torch's zip format, which starts with a zip header.
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror})") from None
    not_ours = (f"{path} is not a seco checkpoint; pass the RUN_DIR/last.pt written by seco train "
                "(a bare backbone state dict goes to --backbone-weights instead)")
    corrupt = (f"checkpoint {path} is corrupt or truncated (an interrupted copy?); copy it again or use another "
               "checkpoint")
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (an interrupted copy?); copy it again or use another "
                              "checkpoint")
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CheckpointError(corrupt)  # the zip header is there but the directory at the end is not
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
        raise CheckpointError(not_ours)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # readable, but it holds objects other than tensors and plain containers: someone else's file
        raise CheckpointError(not_ours) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile):
        raise CheckpointError(corrupt) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise CheckpointError(not_ours)
    return ckpt


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """``"seco"`` (``seco train``) or ``"segmenter"`` (``seco fit-segmenter``): the trainer that wrote ``ckpt``.
    Early seco checkpoints carry no kind; the segmenter's always did."""
    return str(ckpt.get("kind") or "seco")


def require_kind(ckpt: dict[str, Any], kind: str, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` when ``ckpt`` (loaded from ``path``) was not written by the ``kind`` trainer,
    saying what the file is and which file to pass instead."""
    actual = checkpoint_kind(ckpt)
    if actual == kind:
        return
    cfg = ckpt.get("config") or {}
    model = cfg.get("model") or {}
    what = {
        "seco": f"a seco train checkpoint (backbone {model.get('backbone', '?')}, step {ckpt.get('step', '?')})",
        "segmenter": (f"a seco fit-segmenter checkpoint ({model.get('arch', '?')}/{model.get('encoder', '?')}, "
                      f"step {ckpt.get('step', '?')})"),
    }.get(actual, f"a checkpoint of kind {actual!r}")
    wanted = {
        "seco": "the RUN_DIR/last.pt written by seco train (a segmenter predicts with seco predict --model SEG_DIR)",
        "segmenter": "the SEG_DIR/last.pt of a seco fit-segmenter run, or another --out for a new run",
    }[kind]
    raise CheckpointError(f"{path} is {what}; pass {wanted}")


def load_seco(path: str | os.PathLike, device: torch.device) -> tuple[SeCoNet, SecoConfig]:
    """The trained SeCo network of a ``seco train`` checkpoint, built from the checkpoint's own config with its
    weights loaded strictly, on ``device`` in eval mode; and that config.

    Raises:
        CheckpointError: ``path`` is missing, damaged, not ours, a segmenter's checkpoint, or its weights do not fit
            its own config (names the file).
    """
    from ..config import config_from_dict  # here: config and models import far more than this module needs
    from ..models import build_seco

    ckpt = load_checkpoint(path, map_location="cpu")
    require_kind(ckpt, "seco", path)  # a segmenter's config would fail as "unknown config key 'data.labels'"
    cfg = config_from_dict(ckpt["config"])
    model = build_seco(cfg.model, cfg.data.num_classes)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its own config: {e}") from None
    return model.to(device).eval(), cfg


def seco_provenance(cfg: SecoConfig, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What an artifact records of the SeCo model it came from (docs/artifact-format.md): its backbone, the
    pretrained weights its training started from (name or ``random``, sha256) and the checkpoint's sha256."""
    m = cfg.model
    return {"backbone": m.backbone, "backbone_weights": m.backbone_weights or "random",
            "backbone_weights_sha256": m.backbone_weights_sha256, "checkpoint_sha256": sha256_file(Path(checkpoint))}


def check_compatible(ckpt_config: dict[str, Any], config: dict[str, Any], source: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` listing every architecture key on which the two configs differ."""
    diffs = []
    for section, key in SECO_ARCH_KEYS:
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


#: one line per resume that changed the config, in the run folder (see :func:`record_changes`)
CHANGES_FILE = "config_changes.jsonl"


@dataclass(frozen=True)
class ConfigChange:
    """One config value that differs between a checkpoint and the resumed run: dotted ``key``, ``old``, ``new``."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} {self.old!r} -> {self.new!r}"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith("kwargs"):  # sections and loss terms; *kwargs are values
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: keys added since the first checkpoints, with the value that does what versions without the key did: an older
#: config that lacks one is compared as holding that value
LEGACY_VALUES: dict[str, Any] = {
    "loss.norm_group_size": 0, "optim.unstarted_grads": "none", "loss.energy_filter": "exact",
    "data.max_side": 0,
}


def diff_configs(old: dict[str, Any], new: dict[str, Any]) -> list[ConfigChange]:
    """Every dotted key (``loss.lig.weight``; ``*kwargs`` mappings such as ``model.backbone_kwargs`` compare whole)
    whose value differs between two configs as :func:`seco_labels.config_io.config_to_dict` writes them, sorted by key.
    A key missing on one side (a config of an older version) counts as its :data:`LEGACY_VALUES` value or None
    there, and as no change when the other side holds an empty value (a key added since, at its default:
    ``data.class_names = []``)."""
    a, b = _flatten(old), _flatten(new)
    a = {**{k: v for k, v in LEGACY_VALUES.items() if k in b}, **a}
    b = {**{k: v for k, v in LEGACY_VALUES.items() if k in a}, **b}

    def same(k: str) -> bool:
        if (k not in a and b[k] in ([], {}, "")) or (k not in b and a[k] in ([], {}, "")):
            return True
        return a.get(k) == b.get(k)

    return [ConfigChange(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if not same(k)]


def check_changes(
    ckpt_config: dict[str, Any],
    config: dict[str, Any],
    source: str | os.PathLike,
    *,
    step: int,
    silent: Iterable[str],
    allowed: Iterable[str],
    skip: Iterable[str] = (),
    allow_changes: bool = False,
) -> list[ConfigChange]:
    """The config changes of a resume that must be recorded; raises when one is not allowed.

    A key in ``silent`` (device, worker count, log cadence: where and how verbosely it runs, not what it computes)
    may change without trace; a key in ``allowed`` (``train.iters`` and what only validation or checkpoint cadence
    reads) may change and is returned to be recorded; ``skip`` keys are checked elsewhere (the architecture). Any
    other change alters the trained model or the data order and is refused unless ``allow_changes``. ``train.iters``
    below ``step`` (the checkpoint's) is refused always: those steps are already trained.

    Raises:
        ConfigError: names each refused key with its checkpoint and requested values, and what to do.
    """
    silent, allowed, skip = set(silent), set(allowed), set(skip)
    changes = [c for c in diff_configs(ckpt_config, config) if c.key not in silent and c.key not in skip]
    iters = next((c for c in changes if c.key == "train.iters"), None)
    if iters is not None and isinstance(iters.new, int) and iters.new < step:
        raise ConfigError(
            f"checkpoint {source} has already trained {step} steps, more than the requested train.iters={iters.new}; "
            f"ask for {iters.old} iterations (or more) to continue it, or another --out to train a new run"
        )
    refused = [c for c in changes if c.key not in allowed]
    if refused and not allow_changes:
        listed = "; ".join(f"{c.key}: checkpoint {c.old!r}, requested {c.new!r}" for c in refused)
        raise ConfigError(
            f"resuming {source} with settings that change the run ({listed}); pass the checkpoint's values, "
            f"another --out for a new run, or --allow-changes to continue with the new values (recorded in "
            f"{CHANGES_FILE})"
        )
    return changes


def record_changes(run_dir: str | os.PathLike, changes: list[ConfigChange], *, step: int,
                   source: str | os.PathLike, allowed_by: str) -> Path:
    """Append one JSON line to ``RUN_DIR/config_changes.jsonl``: UTC ``time``, the ``step`` the run resumes at,
    the ``checkpoint`` resumed, ``changes`` ({key: {"old", "new"}}) and ``allowed_by`` (why they were accepted).

    Appending (not rewriting) keeps the history of every resume; ``RUN_DIR/config.yaml`` holds the current values.
    """
    path = Path(run_dir) / CHANGES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "step": step,
        "checkpoint": str(source),
        "changes": {c.key: {"old": c.old, "new": c.new} for c in changes},
        "allowed_by": allowed_by,
    }
    append_line(path, json.dumps(entry))
    return path
