"""Encoder weights of ``seco fit-segmenter`` by name: smp's own names, timm tags for ``tu-`` encoders, a local file,
or ``random`` (docs/segmenters.md "Encoder weights").

- An smp encoder (``resnet18``, ``mit_b0``, ...) takes the names of smp's registry
  (``smp.encoders.encoders[encoder]["pretrained_settings"]``: ``imagenet``, ``ssl``, ``swsl``, ...); the files are
  those smp itself downloads (``model.safetensors`` and ``config.json`` of ``smp-hub/<encoder>.<name>`` at smp's
  pinned revision), found through :func:`seco_labels.runtime.pretrained.hub_file` in the Hugging Face cache.
- A ``tu-`` encoder takes a timm pretrained tag (``resnet18.a1_in1k``, or the bare tag ``a1_in1k``) or
  ``hf-hub:ORG/NAME`` (:func:`seco_labels.runtime.pretrained.resolve_weights`); ``imagenet`` is timm's default tag for the
  model, recorded as that explicit tag.
- A local file, or ``random`` (random init, said so at the start of the run).

:func:`encoder_weights_name` turns what the user wrote into the name a run records (no file is read: a resume
compares it with its checkpoint's without needing the weights); :func:`resolve_encoder_weights` finds the file and
its sha256.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from ..errors import ConfigError
from ..io import sha256_file
from ..runtime.pretrained import (
    RANDOM,
    Weights,
    WeightsUnavailableError,
    hub_file,
    looks_like_path,
    resolve_weights,
    weights_alternatives,
)

__all__ = ["DEFAULT_ENCODER_WEIGHTS", "OPTION", "smp_weight_names", "encoder_weights_name",
           "resolve_encoder_weights"]

#: the config default: ImageNet where smp (or timm, for ``tu-`` encoders) has it
DEFAULT_ENCODER_WEIGHTS = "imagenet"
OPTION = "--encoder-weights"
#: the file smp loads into the encoder, and the one it fetches beside it (preprocessing settings)
_SMP_WEIGHTS_FILE = "model.safetensors"
_SMP_CONFIG_FILE = "config.json"
_ALTERNATIVES = weights_alternatives(OPTION)


def _settings(encoder: str) -> dict:
    from segmentation_models_pytorch.encoders import encoders

    return encoders[encoder]["pretrained_settings"]


def smp_weight_names(encoder: str) -> list[str]:
    """The weight names smp's registry lists for an smp encoder (``imagenet``, ``ssl``, ...), registry order."""
    return list(_settings(encoder))


def timm_is_model(name: str) -> bool:
    import timm

    return bool(name) and timm.is_model(name)


def _timm_default_tag(encoder: str) -> str:
    """``ARCH.TAG``: timm's default pretrained tag of a ``tu-`` encoder's model (the tag in the encoder name, if any),
    when it has hub weights."""
    from timm.models import get_pretrained_cfg

    model = encoder[3:]
    try:
        cfg = get_pretrained_cfg(model)
    except RuntimeError:  # an unknown tag in the encoder name
        cfg = None
    if cfg is None or not cfg.hf_hub_id or not cfg.tag:
        raise ConfigError(
            f"encoder {encoder} has no ImageNet weights in timm (no pretrained tag with hub weights for {model}); "
            f"pass {OPTION} hf-hub:ORG/NAME, a local weights file, or {OPTION} {RANDOM} to train from random init"
        )
    return f"{cfg.architecture or model.split('.')[0]}.{cfg.tag}"


def encoder_weights_name(spec: str | os.PathLike | None, encoder: str) -> str:
    """What a run records in ``model.encoder_weights``: ``random`` (for None, "" or ``random``), an smp weight name,
    an explicit timm tag ``ARCH.TAG`` (``imagenet`` and bare tags of ``tu-`` encoders made explicit), ``hf-hub:...``,
    or the file path as given. Reads no file and asks no hub.

    Raises:
        ConfigError: a name smp does not list for the encoder (the message lists those it does), ``imagenet`` for an
            encoder that has no ImageNet weights (refused: pass one of its names or ``random``).
    """
    spec = "" if spec is None else str(spec).strip()
    if spec in ("", RANDOM):
        return RANDOM
    if encoder.startswith("tu-"):
        if spec == DEFAULT_ENCODER_WEIGHTS:
            return _timm_default_tag(encoder)
        from timm.models import get_pretrained_cfg

        arch = encoder[3:].split(".")[0]
        if "." not in spec and ":" not in spec and not looks_like_path(spec):
            try:
                cfg = get_pretrained_cfg(f"{arch}.{spec}")
            except RuntimeError:
                cfg = None
            if cfg is not None:
                return f"{arch}.{spec}"  # a bare tag of the encoder's model
            import timm

            tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
            shown = ", ".join(tags[:6]) + (f" ({len(tags)} in all)" if len(tags) > 6 else "") if tags else "none"
            raise ConfigError(
                f"{OPTION} {spec} is neither a weights file nor a pretrained tag of timm's {arch} (its tags: {shown}); "
                f"pass {DEFAULT_ENCODER_WEIGHTS} (timm's default tag), one of those tags, hf-hub:ORG/NAME, a local "
                f"weights file, or {RANDOM}"
            )
        other = spec.partition(".")[0]
        if not spec.startswith("hf-hub:") and not looks_like_path(spec) and other != arch and timm_is_model(other):
            raise ConfigError(
                f"{OPTION} {spec} names timm weights of {other}, but encoder {encoder} is timm's {arch}; name "
                f"weights of {arch} (e.g. {OPTION} {DEFAULT_ENCODER_WEIGHTS}), or --encoder tu-{other}"
            )
        return spec  # a timm tag, hf-hub:ORG/NAME or a file: resolve_weights checks it
    names = smp_weight_names(encoder)
    if spec in names:
        return spec
    listed = ", ".join(names) or "none"
    if spec == DEFAULT_ENCODER_WEIGHTS:
        raise ConfigError(
            f"encoder {encoder} has no ImageNet weights in smp (its weights: {listed}); pass {OPTION} "
            f"{names[0] if names else 'FILE'}{' (or another of them)' if len(names) > 1 else ''}, a local weights "
            f"file, or {OPTION} {RANDOM} to train from random init"
        )
    if looks_like_path(spec):
        return spec
    close = difflib.get_close_matches(spec, names, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ConfigError(
        f"{OPTION} {spec} is neither a weights file nor one of encoder {encoder}'s weights in smp ({listed}); "
        f"{hint}pass one of those, a local weights file, or {RANDOM}"
    )


def _smp_hub_weights(name: str, encoder: str) -> Weights:
    """smp's own weights ``name`` of ``encoder``: ``model.safetensors`` of its ``smp-hub`` repo at smp's pinned
    revision (and ``config.json`` beside it, as smp fetches it, when it can be had: loading does not read it)."""
    settings = _settings(encoder)[name]
    repo_id, revision = settings["repo_id"], settings.get("revision")
    what = f"{OPTION} {name} (encoder {encoder}, smp's {repo_id})"
    path = hub_file(repo_id, _SMP_WEIGHTS_FILE, revision=revision, what=what, alternatives=_ALTERNATIVES)
    try:
        hub_file(repo_id, _SMP_CONFIG_FILE, revision=revision, what=what)
    except WeightsUnavailableError:
        pass
    return Weights(name, path, sha256_file(path), repo_id)


def resolve_encoder_weights(spec: str | os.PathLike | None, encoder: str) -> Weights:
    """The weights ``spec`` names for ``encoder`` (see :func:`encoder_weights_name`), as a local file and its sha256;
    ``Weights.spec`` is the name to record. A name is looked up in the Hugging Face cache first and downloaded
    only when missing (never with ``HF_HUB_OFFLINE=1``).

    Raises:
        ConfigError: unknown name, missing file, timm weights of another model.
        WeightsUnavailableError: a name neither cached nor downloadable now (names the repo, the cache folder and
            the ``hf download`` command).
    """
    name = encoder_weights_name(spec, encoder)
    if name == RANDOM:
        weights = Weights(RANDOM)
    elif encoder.startswith("tu-"):
        weights = resolve_weights(name, option=OPTION)
        model = encoder[3:].split(".")[0]
        if weights.architecture and weights.architecture != model:
            raise ConfigError(
                f"{OPTION} {name} holds timm weights of {weights.architecture}, but encoder {encoder} is timm's "
                f"{model}; name weights of {model} (e.g. {OPTION} {DEFAULT_ENCODER_WEIGHTS}), or --encoder "
                f"tu-{weights.architecture}"
            )
    elif name in smp_weight_names(encoder):
        weights = _smp_hub_weights(name, encoder)
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            what = "is a folder" if path.exists() else "not found"
            raise ConfigError(f"encoder weights file {path} {what}; pass a weights file, one of encoder {encoder}'s "
                              f"weights in smp ({', '.join(smp_weight_names(encoder)) or 'none'}), or {RANDOM}")
        weights = Weights(name, path, sha256_file(path))
    return weights

