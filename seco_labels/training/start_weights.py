"""The pretrained weights a training run starts from (``--backbone-weights``, ``--encoder-weights``):
:class:`StartWeights` loads, records and announces them when a fresh run starts, and checks that a resume asks for
the ones its checkpoint started from, without reading them again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from ..config_io import get_key, recorded_value, set_key
from ..errors import ConfigError
from ..io import sha256_file
from ..runtime.pretrained import RANDOM, Weights, describe_recorded

__all__ = ["StartWeights"]


class StartWeights:
    """The starting weights of one run, by the config keys that name them.

    A fresh run (:meth:`start`) resolves, checks, loads and records them; a resume (:meth:`check_resumed`) only
    compares the requested ones with its checkpoint's. The two config keys (:attr:`keys`) are set once by a fresh
    run and never changed by a resume, not even with ``--allow-changes``.

    Args:
        name_key, sha_key: the dotted config keys of the weights' name and their sha256 (a pin, when set by the user).
        option: the command-line option that sets ``name_key`` (for the messages).
        target_key: the config key of what the weights load into (``model.backbone``, ``model.encoder``).
        resolve: ``name_key``'s weights resolved to a file (or random init), with the checks of their kind.
        load: loads a local file of weights into the freshly built model, strictly.
        weights: the weights already resolved by the command; None resolves them when a fresh run starts.
        announce: say on stderr what the run starts from (not quiet, rank 0).
    """

    def __init__(self, *, name_key: str, sha_key: str, option: str, target_key: str, resolve: Callable[[], Weights],
                 load: Callable[[Weights], None], weights: Weights | None = None, announce: bool = True) -> None:
        self.name_key, self.sha_key = name_key, sha_key
        self.option = option
        self.target_key = target_key
        self.resolve = resolve
        self.load = load
        self.announce = announce
        #: the resolved starting weights (given by the command, or resolved by :meth:`start`); None until then
        self.weights = weights
        #: the starting weights are in the model (:meth:`start`) or checked against the checkpoint's
        #: (:meth:`check_resumed`)
        self.loaded = False

    @property
    def keys(self) -> tuple[str, str]:
        """The config keys a resume must not change: the name and sha256 of the weights."""
        return self.name_key, self.sha_key

    def _say(self, line: str) -> None:
        if self.announce:
            print(line, file=sys.stderr, flush=True)

    def _subject(self, cfg: Any) -> str:
        """``backbone vit_base_patch16_224`` / ``encoder resnet50``: what the starting weights are loaded into."""
        return f"{self.target_key.rsplit('.', 1)[-1]} {get_key(cfg, self.target_key)}"

    def start(self, cfg: Any) -> Weights:
        """A fresh run (no checkpoint): resolve the starting weights (:attr:`weights` when the command resolved them
        already), check a pinned hash (``sha_key``), load them, record their name and sha256 in ``cfg`` (so in
        config.yaml, every checkpoint and export) and say on stderr what the run starts from. Once; later calls
        return the same.

        Raises:
            ConfigError: unknown weights, or not the pinned file.
            WeightsUnavailableError: a name neither cached nor downloadable now.
        """
        if self.loaded and self.weights is not None:
            return self.weights
        weights = self.weights or self.resolve()
        pin = str(get_key(cfg, self.sha_key) or "").strip().lower()
        if pin and not weights.sha256.startswith(pin):
            found = f"resolves to {weights.path} with sha256 {weights.sha256}" if weights.path else "is random init"
            raise ConfigError(f"{self.option} {weights.spec} {found}, not the pinned {self.sha_key}={pin}; pass "
                              f"the pinned weights, or clear the pin (--set {self.sha_key}='')")
        if weights.path is not None:
            self.load(weights)
        set_key(cfg, self.name_key, weights.spec)
        set_key(cfg, self.sha_key, weights.sha256)
        self.weights, self.loaded = weights, True
        self._say(f"{self._subject(cfg)}: {weights.describe()}")
        return weights

    def check_resumed(self, cfg: Any, ckpt_config: dict[str, Any], source: str | Path) -> None:
        """On resume: refuse a checkpoint trained from other starting weights than the requested ones (naming both),
        whatever ``allow_changes`` says, since the resumed model continues from the checkpoint's start; then hold the
        checkpoint's in ``cfg``. The weights are not read again: names are compared with the recorded name and a
        pinned hash with the recorded hash; resolved weights and an existing local file by their sha256. None (a
        config from before weights by name) is random init; a hash the checkpoint did not record is not compared.

        Raises:
            ConfigError: other weights than the checkpoint's.
        """
        old = recorded_value(ckpt_config, self.name_key) or RANDOM
        old_sha = recorded_value(ckpt_config, self.sha_key) or ""
        new = get_key(cfg, self.name_key) or RANDOM
        pin = str(get_key(cfg, self.sha_key) or "").strip().lower()
        new_sha = self.weights.sha256 if self.weights is not None else ""
        if not new_sha and old_sha and new != RANDOM and Path(new).expanduser().is_file():
            new_sha = sha256_file(Path(new).expanduser())  # a file holds the same weights if it has the same bytes
        if new_sha and old_sha:
            same = new_sha == old_sha
        else:
            same = new == old and not (pin and old_sha and not old_sha.startswith(pin))
        if not same:
            raise ConfigError(
                f"checkpoint {source} was trained from {describe_recorded(old, old_sha)}, not the requested "
                f"{describe_recorded(new, new_sha or pin)}; a resume continues the model trained from the checkpoint's "
                f"weights, so other weights are refused even with --allow-changes: pass {self.option} {old} to "
                f"continue this run, or another --out to train a new run from {new}"
            )
        set_key(cfg, self.name_key, old)
        set_key(cfg, self.sha_key, old_sha)
        self.loaded = True
        self._say(f"{self._subject(cfg)}: {describe_recorded(old, old_sha)}, as checkpoint {source} started from "
                  "(not read again: the checkpoint holds the trained model)")
