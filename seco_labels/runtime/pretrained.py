"""Pretrained weights by name: a local file, a timm pretrained tag, an ``hf-hub:ORG/NAME`` repo, or ``random``.

Names resolve through ``huggingface_hub`` into its standard cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``), as timm and smp resolve theirs, so weights fetched once by any of them are found
again. A file already in the cache is used as it is, without asking the hub (a run is then as reproducible offline
as online; ``hf download`` refreshes it). ``HF_HUB_OFFLINE=1`` never touches the network. Where the hub cannot be
reached, :class:`WeightsUnavailableError` says so in one line, in seconds rather than after huggingface_hub's retry
loop (about 25 s per file), naming the repo, the cache folder, the ``hf download`` command that fetches it on a
machine with a network, and the alternatives.

The resolved :class:`Weights` carries the file and its sha256, which runs record (config, checkpoint, export
provenance: docs/reproduce.md "Pretrained weights").
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ConfigError, SecoError
from ..io import sha256_file

__all__ = ["RANDOM", "Weights", "WeightsUnavailableError", "hub_cache_dir", "hub_file", "resolve_weights",
           "describe_recorded", "looks_like_path", "weights_alternatives", "PAPER_BACKBONE_WEIGHTS"]

#: the value that asks for random initialisation, said in so many words
RANDOM = "random"
#: the weights the published SeCo code loads (``jx_vit_base_p16_224-80ecf9dd.pth``, the original Google ViT-B/16
#: trained on ImageNet-21k and fine-tuned on ImageNet-1k) under timm's name; a bare ``vit_base_patch16_224`` is
#: timm's AugReg2 weights, another pre-training
PAPER_BACKBONE_WEIGHTS = "vit_base_patch16_224.orig_in21k_ft_in1k"
#: file names of a timm or generic weights repo, preferred first
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: suffixes that make a name a file path even when no such file exists (so the error says "not found")
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")
#: seconds to wait for the hub's host before calling it unreachable
_CONNECT_TIMEOUT = 3.0
_HF_PREFIX = "hf-hub:"


class WeightsUnavailableError(SecoError):
    """Named weights are neither in the Hugging Face cache nor downloadable now (offline, no network, unknown repo);
    the message names the repo, the cache folder and how to fetch them. Not a usage error (the CLI exits 1): the
    same command works once the cache holds them."""


@dataclass(frozen=True)
class Weights:
    """Resolved pretrained weights.

    Attributes:
        spec: what the user wrote: a file path, a timm tag, ``hf-hub:ORG/NAME[@REV]``, or ``random``.
        path: the local file to load (in the hub cache for a name); None for random init.
        sha256: hex digest of ``path``; "" for random init.
        repo_id: the Hugging Face repo a name resolved to; None for a file or random.
        architecture: the timm architecture the weights were made for, when the source says (a timm tag, the
            ``architecture`` of an hf-hub repo's config.json); None otherwise.
    """

    spec: str
    path: Path | None = None
    sha256: str = ""
    repo_id: str | None = None
    architecture: str | None = None

    @property
    def is_random(self) -> bool:
        return self.path is None

    def describe(self) -> str:
        """One line for the start of a run: ``NAME (REPO, sha256 1a2b3c4d5e6f)`` or ``random init``."""
        if self.is_random:
            return "random init (no pretrained weights)"
        where = f"{self.repo_id}, " if self.repo_id else ""
        shown = self.spec if self.repo_id else str(self.path)
        return f"{shown} ({where}sha256 {self.sha256[:12]})"


def weights_alternatives(option: str) -> str:
    """The end of :class:`WeightsUnavailableError`'s message: what else ``option`` takes."""
    return f"or pass {option} FILE (a local state dict), or {option} {RANDOM} to train from random init"


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a file (a path separator, ``~`` or ``.`` first, a weights suffix, or an existing
    path) rather than a name, so that a missing one is reported as a missing file."""
    return (os.sep in spec or spec.startswith(("~", ".")) or spec.endswith(_FILE_SUFFIXES)
            or Path(spec).expanduser().exists())


def describe_recorded(name: str | None, sha256: str = "") -> str:
    """Recorded weights (a config's name and sha256) in words: ``imagenet (sha256 1a2b3c4d5e6f)``, ``random init``."""
    if not name or name == RANDOM:
        return "random init"
    return f"{name} (sha256 {sha256[:12]})" if sha256 else name


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder as huggingface_hub resolves it, read now (not at import), so that a changed
    ``HF_HUB_CACHE`` / ``HF_HOME`` (tests, notebooks) takes effect."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _unreachable_reason() -> str | None:
    """Why the hub's host cannot be reached now (a short phrase), or None when a TCP connection opens (or a proxy is
    configured, which a direct probe cannot judge). huggingface_hub would retry a dead network for ~25 s per file."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT).close()
    except OSError as e:
        return f"{host} cannot be reached ({type(e).__name__}: {e})"
    return None


def hub_file(repo_id: str, filenames: str | tuple[str, ...], *, revision: str | None = None,
             what: str = "weights", alternatives: str = "") -> Path:
    """The local path of the first of ``filenames`` that repo ``repo_id`` has at ``revision`` (default: main), from
    the hub cache when it is there (no network), else downloaded into it.

    Args:
        what: what the file is, for the message (``"backbone weights vit_base_patch16_224.orig_in21k_ft_in1k"``).
        alternatives: the rest of the message: what else the user can pass (``"or pass --backbone-weights FILE,
            or random"``).

    Raises:
        WeightsUnavailableError: not cached, and offline (``HF_HUB_OFFLINE``), unreachable, or the repo / file is
            unknown to the hub. One line naming the repo, the cache folder and the ``hf download`` command.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    names = (filenames,) if isinstance(filenames, str) else tuple(filenames)
    cache = hub_cache_dir()
    for name in names:
        cached = try_to_load_from_cache(repo_id, name, cache_dir=cache, revision=revision)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    reason = "HF_HUB_OFFLINE is set" if _offline() else _unreachable_reason()
    if reason is None:
        for name in names:
            try:
                return Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache))
            except EntryNotFoundError as e:
                if isinstance(e, LocalEntryNotFoundError):  # the connection broke after the probe
                    reason = "the download failed"
                    break
                continue  # the repo has no such file: try the next name
            except HfHubHTTPError as e:  # unknown repo, gated, server error
                reason = f"the hub answered {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                break
            except OSError as e:
                reason = f"the download failed ({type(e).__name__}: {e})"
                break
        else:
            reason = f"the repo has none of {', '.join(names)}"
    rev = f" --revision {revision}" if revision else ""
    raise WeightsUnavailableError(
        f"{what}: {repo_id} is not in the Hugging Face cache ({cache}) and cannot be downloaded now: {reason}. "
        f"On a machine with a network run `hf download {repo_id} {names[0]}{rev}` (it fills the cache there; copy "
        f"that folder here or point HF_HUB_CACHE at it){'; ' + alternatives if alternatives else ''}"
    )


def _hub_architecture(repo_id: str, revision: str | None) -> str | None:
    """The ``architecture`` of a timm-style repo's config.json, if the repo has one (cached or reachable)."""
    import json

    try:
        path = hub_file(repo_id, "config.json", revision=revision)
    except WeightsUnavailableError:
        return None
    try:
        arch = json.loads(path.read_text()).get("architecture")
    except (OSError, ValueError, AttributeError):
        return None
    return arch if isinstance(arch, str) else None


def _timm_tags(arch: str) -> list[str]:
    import timm

    return timm.list_pretrained(f"{arch}.*")


def resolve_weights(spec: str | None, *, option: str = "--backbone-weights") -> Weights:
    """What ``spec`` names, as a local file with its sha256 (:class:`Weights`).

    ``spec`` is one of: None, "" or ``random`` (random init); ``hf-hub:ORG/NAME`` or ``hf-hub:ORG/NAME@REVISION`` (a
    Hugging Face repo holding ``model.safetensors`` or ``pytorch_model.bin``, and optionally a timm config.json); the
    path of a local file; a timm pretrained tag ``ARCH.TAG`` (``vit_base_patch16_224.orig_in21k_ft_in1k``: the repo
    timm names for it). A bare architecture (``vit_base_patch16_224``) is refused: timm maps it to one of several
    pre-trainings (AugReg2 there, not the paper's), so the tag must be said.

    Raises:
        ConfigError: a path that is no file, an unknown name, a bare architecture (lists its tags).
        WeightsUnavailableError: a name not cached and not downloadable now (see :func:`hub_file`).
    """
    if spec is None or spec in ("", RANDOM):
        return Weights(RANDOM)
    alternatives = weights_alternatives(option)
    if spec.startswith(_HF_PREFIX):
        repo_id, _, revision = spec[len(_HF_PREFIX):].partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ConfigError(f"{option} {spec}: an hf-hub id is hf-hub:ORG/NAME (optionally @REVISION)")
        path = hub_file(repo_id, _HUB_WEIGHT_FILES, revision=revision or None, what=f"{option} {spec}",
                        alternatives=alternatives)
        return Weights(spec, path, sha256_file(path), repo_id, _hub_architecture(repo_id, revision or None))
    local = Path(spec).expanduser()
    if local.is_file():
        return Weights(spec, local, sha256_file(local))
    if local.exists():
        raise ConfigError(f"{option} {spec} is a folder; pass a weights file (.pth, .safetensors) inside it")
    if looks_like_path(spec):
        raise ConfigError(f"{option} {spec}: no such file; pass an existing weights file, a timm pretrained tag "
                          f"such as {PAPER_BACKBONE_WEIGHTS}, hf-hub:ORG/NAME, or {RANDOM}")
    from timm.models import get_pretrained_cfg, is_model

    arch, _, tag = spec.partition(".")
    try:
        cfg = get_pretrained_cfg(spec) if tag else None
    except RuntimeError:  # timm: a known architecture with an unknown tag
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        tags = _timm_tags(arch) if is_model(arch) else []
        if tags and not tag:
            hint = f"name the pre-training: {', '.join(tags[:6])}" + (f" ({len(tags)} in all)" if len(tags) > 6 else "")
            raise ConfigError(f"{option} {spec} is an architecture, not weights: timm maps it to one of several "
                              f"pre-trainings; {hint}")
        known = f"; {arch}'s tags: {', '.join(tags[:6])}" if tags else ""
        raise ConfigError(f"{option} {spec} is neither a file nor a timm pretrained tag with hub weights{known}; "
                          f"pass a file, a tag such as {PAPER_BACKBONE_WEIGHTS}, hf-hub:ORG/NAME, or {RANDOM}")
    repo_id = cfg.hf_hub_id
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_WEIGHT_FILES
    path = hub_file(repo_id, files, what=f"{option} {spec}", alternatives=alternatives)
    return Weights(spec, path, sha256_file(path), repo_id, arch)
