"""Build any segmentation_models_pytorch (smp) model by name, offline, and run it on images of any size.

- :func:`build_segmenter` checks the names against smp's own registries, builds with ``encoder_weights=None``
  and optionally loads encoder weights: a local file, or a name (smp's ``imagenet``..., a timm tag for ``tu-``
  encoders) found in the Hugging Face cache (:mod:`seco_labels.segmenters.weights`), then loaded strictly.
- :func:`size_multiple` finds the input-size multiple a model needs (32 for most encoders, 2 x patch for DPT's
  ViTs, less for a depth-reduced encoder) by trying it, so crops and eval padding are chosen to fit.
- :func:`predict_mask` pads an image to that multiple, predicts, and crops the prediction back.
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.images import downscale
from ..data.transforms import normalize
from ..errors import CheckpointError, ConfigError
from ..runtime.pretrained import Weights

__all__ = [
    "UnknownNameError",
    "architectures",
    "encoder_names",
    "check_names",
    "build_segmenter",
    "load_encoder_weights",
    "model_kwargs",
    "size_multiple",
    "round_up",
    "forward_logits",
    "predict_mask",
    "preflight",
]


class UnknownNameError(ConfigError, KeyError):
    """An architecture or encoder smp does not know; the message lists the valid names.

    A :class:`KeyError` like smp's own ``create_model`` miss, and a :class:`ConfigError` so the CLI exits 2.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def architectures() -> list[str]:
    """smp's architecture names, from its registry ``smp.MODEL_ARCHITECTURES_MAPPING`` (registry order)."""
    import segmentation_models_pytorch as smp

    return list(smp.MODEL_ARCHITECTURES_MAPPING)


def encoder_names() -> list[str]:
    """smp's own encoder names (``tu-<timm model>`` names are valid as well, see :func:`check_names`)."""
    from segmentation_models_pytorch.encoders import get_encoder_names

    return list(get_encoder_names())


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"did you mean {', '.join(close)}? " if close else ""


def check_names(arch: str, encoder: str) -> None:
    """Raise :class:`UnknownNameError` unless ``arch`` is an smp architecture and ``encoder`` an smp encoder or
    ``tu-<timm model>`` (an optional ``.tag`` after the timm name is allowed)."""
    archs = architectures()
    if arch.lower() not in archs:
        raise UnknownNameError(f"unknown architecture {arch!r}; {_suggest(arch.lower(), archs)}valid choices: "
                               f"{', '.join(archs)}")
    if encoder.startswith("tu-"):
        import timm

        base = encoder[3:].split(".")[0]
        if not base or not timm.is_model(base):
            raise UnknownNameError(
                f"unknown timm model {base!r} in encoder {encoder!r}; {_suggest(base, timm.list_models())}"
                "after 'tu-' give any name of timm.list_models(), e.g. tu-resnet50, tu-convnext_tiny"
            )
        return
    names = encoder_names()
    if encoder not in names:
        raise UnknownNameError(
            f"unknown encoder {encoder!r}; {_suggest(encoder, names)}valid choices: {', '.join(names)}, "
            "or tu-<any timm model> (e.g. tu-resnet50)"
        )


def _create(arch: str, encoder: str, classes: int, weights: Any, kwargs: dict[str, Any]) -> nn.Module:
    import segmentation_models_pytorch as smp

    try:
        with warnings.catch_warnings():
            # smp warns that tu- encoders take encoder_weights=True/None; ours is always one of those
            warnings.filterwarnings("ignore", message=".*encoder_weights.*", category=UserWarning)
            return smp.create_model(arch, encoder_name=encoder, encoder_weights=weights, classes=classes, **kwargs)
    except (ValueError, TypeError, KeyError, AssertionError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        extra = f" with {kwargs}" if kwargs else ""
        raise ConfigError(f"smp cannot build {arch} with encoder {encoder}{extra}: {msg}") from None


def model_kwargs(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``smp.create_model`` arguments :func:`build_segmenter` uses: ``kwargs`` plus ``dynamic_img_size=True`` for
    DPT unless given (what :func:`load_encoder_weights` needs to build a like encoder)."""
    kwargs = dict(kwargs)
    if arch.lower() == "dpt":
        kwargs.setdefault("dynamic_img_size", True)
    return kwargs


def build_segmenter(
    arch: str,
    *,
    encoder: str,
    classes: int,
    encoder_weights: str | Path | Weights | None = None,
    **kwargs: Any,
) -> nn.Module:
    """An smp model with random init, or with its encoder loaded strictly from ``encoder_weights``.

    ``encoder_weights``: None or ``"random"`` (random init); a :class:`~pathlib.Path` (a local file); resolved
    :class:`~seco_labels.runtime.pretrained.Weights`; or a str that :func:`seco_labels.segmenters.weights.
    resolve_encoder_weights` resolves: smp's own names for smp encoders (``imagenet``, ``ssl``, ...), a timm tag or
    ``hf-hub:`` for ``tu-`` encoders, or a file. Names come from the Hugging Face cache; a missing one downloads,
    except with ``HF_HUB_OFFLINE=1`` (then :class:`~seco_labels.runtime.pretrained.WeightsUnavailableError`).

    ``kwargs`` go to ``smp.create_model`` (``encoder_depth``, ``decoder_channels``, ...). DPT gets
    ``dynamic_img_size=True`` unless given, so its ViT accepts any size that is a multiple of the patch.

    Raises:
        UnknownNameError: unknown architecture or encoder (lists the valid names).
        ConfigError: smp refuses the combination (e.g. DPT with a CNN encoder), or the weights are unknown/missing.
        CheckpointError: the weights file does not fit the encoder (lists missing/unexpected keys).
    """
    check_names(arch, encoder)
    arch = arch.lower()
    kwargs = model_kwargs(arch, kwargs)
    if isinstance(encoder_weights, str):
        from .weights import resolve_encoder_weights

        encoder_weights = resolve_encoder_weights(encoder_weights, encoder)
    path = encoder_weights.path if isinstance(encoder_weights, Weights) else encoder_weights
    model = _create(arch, encoder, classes, None, kwargs)
    if path:
        load_encoder_weights(model, path, arch=arch, encoder=encoder, classes=classes, kwargs=kwargs)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types on a foreign or truncated file
        raise CheckpointError(f"encoder weights {path} are unreadable ({e}); give a .safetensors or a torch "
                              "state-dict file") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"encoder weights {path} hold no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _keys_message(missing: list[str], unexpected: list[str]) -> str:
    def show(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    return "; ".join(parts)


def load_encoder_weights(model: nn.Module, path: str | Path, *, arch: str, encoder: str, classes: int,
                         kwargs: dict[str, Any]) -> None:
    """Load a local weights file into ``model.encoder``, strictly.

    smp encoders take the file smp itself would download (``model.safetensors`` of ``smp-hub/<encoder>.<weights>``)
    or a torchvision-style state dict (the classifier keys are dropped by smp), loaded as smp loads its download
    (``encoder.load_state_dict``, strict; for ``in_channels`` other than 3 into a 3-channel copy of the encoder
    first, whose first convolution smp then adapts). ``tu-`` encoders take a timm checkpoint of the timm model,
    loaded by timm itself (``pretrained_cfg_overlay=dict(file=...)``), so the file's key names are timm's. The
    model's recorded config keeps ``encoder_weights=None``, so a saved model reloads without the file. Loading draws
    nothing from torch's global RNG.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"encoder weights file {path} not found; give a local file (nothing is downloaded)")
    if encoder.startswith("tu-"):
        try:
            with torch.random.fork_rng(devices=[]), _timm_load_report() as report:  # the run's RNG stays as it was
                donor = _create(arch, encoder, classes, True,
                                {**kwargs, "pretrained_cfg_overlay": dict(file=str(path))})
        except ConfigError as e:
            raise CheckpointError(f"encoder weights {path} do not fit {encoder}: {e}") from None
        missing = sorted(k for result, dropped in report for k in result.missing_keys if k not in dropped)
        if missing:
            raise CheckpointError(f"encoder weights {path} do not fit encoder {encoder} "
                                  f"({_keys_message(missing, [])}); give the weights of this encoder")
        state = donor.encoder.state_dict()
    else:
        state = _read_state_dict(path)
    try:
        in_channels = getattr(model.encoder, "_in_channels", 3)
        if not encoder.startswith("tu-") and in_channels != 3:
            state = _adapted_state(state, encoder, model.encoder, in_channels)
        model.encoder.load_state_dict(state)
    except RuntimeError:
        own = set(model.encoder.state_dict())
        msg = _keys_message(sorted(own - set(state)), sorted(set(state) - own)) or "tensor shapes differ"
        raise CheckpointError(f"encoder weights {path} do not fit encoder {encoder} ({msg}); give the weights "
                              "of this encoder") from None


@contextlib.contextmanager
def _timm_load_report() -> Iterator[list[tuple[Any, set[str]]]]:
    """What timm's pretrained loading left out, as ``(load_state_dict result, classifier keys)`` per load.

    timm loads a ``features_only`` model's weights non-strictly (it drops the classifier, whose keys then count as
    missing), so a file lacking other keys would leave them at random init without a word; the result of its
    ``load_state_dict`` is recorded here to check them. Its warnings about the head layers the encoder does not use
    (unexpected keys) are silenced meanwhile.
    """
    import logging

    from timm.models import _builder

    report: list[tuple[Any, set[str]]] = []
    original = _builder.load_pretrained

    def load_pretrained(model: nn.Module, pretrained_cfg: dict | None = None, *args: Any, **kw: Any) -> None:
        heads = (pretrained_cfg or {}).get("classifier") or ()
        dropped = {f"{h}.{p}" for h in ((heads,) if isinstance(heads, str) else heads) for p in ("weight", "bias")}
        own = model.load_state_dict

        def recording(state_dict: Any, strict: bool = True, **kwargs: Any) -> Any:
            result = own(state_dict, strict=strict, **kwargs)
            report.append((result, dropped))
            return result

        model.load_state_dict = recording  # type: ignore[method-assign]
        try:
            original(model, pretrained_cfg, *args, **kw)
        finally:
            del model.load_state_dict

    logger = logging.getLogger(_builder.__name__)
    level = logger.level
    _builder.load_pretrained = load_pretrained
    logger.setLevel(logging.ERROR)
    try:
        yield report
    finally:
        _builder.load_pretrained = original
        logger.setLevel(level)


def _adapted_state(state: dict[str, torch.Tensor], encoder: str, target: nn.Module,
                   in_channels: int) -> dict[str, torch.Tensor]:
    """``state`` (3-channel weights of an smp encoder) for an encoder with ``in_channels``, as smp's ``get_encoder``
    does it: load into a 3-channel encoder, strictly, then ``set_in_channels(in_channels, pretrained=True)``."""
    from segmentation_models_pytorch.encoders import get_encoder

    with torch.random.fork_rng(devices=[]):
        donor = get_encoder(encoder, in_channels=3, depth=getattr(target, "_depth", 5), weights=None)
    donor.load_state_dict(dict(state))
    donor.set_in_channels(in_channels, pretrained=True)
    return donor.state_dict()


def forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits; drops the classification output of models built with ``aux_params``."""
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def size_multiple(model: nn.Module) -> int:
    """The smallest multiple of ``model.encoder.output_stride`` (x1, x2, x4) on which a forward pass works.

    smp checks divisibility by the encoder's output stride, but some decoders need more (DPT halves the ViT grid,
    so a 16 px patch needs multiples of 32). Each candidate c is tried on a (4c, 5c) input in eval mode: 5c is
    not a multiple of 2c, so a model that needs 2c fails there. The model's mode is restored.

    Raises:
        ConfigError: no candidate works (the last error is quoted).
    """
    base = int(getattr(model.encoder, "output_stride", 32) or 32)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    error = ""
    try:
        for c in (base, 2 * base, 4 * base):
            x = torch.zeros(1, 3, 4 * c, 5 * c, device=param.device, dtype=param.dtype)
            try:
                y = forward_logits(model, x)
            except (RuntimeError, ValueError) as e:
                error = str(e).splitlines()[0]
                continue
            if tuple(y.shape[-2:]) == tuple(x.shape[-2:]):
                return c
            error = f"output {tuple(y.shape[-2:])} for input {tuple(x.shape[-2:])}"
    finally:
        model.train(was_training)
    raise ConfigError(f"found no input size this model accepts (tried multiples of {base}, {2 * base}, {4 * base}): "
                      f"{error}")


def round_up(size: int, multiple: int) -> int:
    return -(-int(size) // multiple) * multiple


@torch.no_grad()
def preflight(model: nn.Module, *, batch_size: int, crop_size: int, device: torch.device, what: str) -> None:
    """One training-mode forward pass on a zero batch, so that a crop too small for the model (PAN needs 128 px)
    or a batch of 1 with a BatchNorm after global pooling fails now, with advice, not at step 0 deep inside.
    Batch-norm statistics are restored afterwards."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        forward_logits(model, torch.zeros(batch_size, 3, crop_size, crop_size, device=device))
    except (RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0]
        hint = ("use --batch-size 2 or more (a BatchNorm sees a single value)" if "more than 1 value" in first
                else "use a larger --crop-size")
        raise ConfigError(f"{what} cannot train on {crop_size}x{crop_size} crops in batches of {batch_size}: "
                          f"{first}; {hint}") from None
    finally:
        model.train(was_training)
        for name, b in model.named_buffers():
            b.copy_(saved[name])


@torch.no_grad()
def predict_mask(model: nn.Module, image: np.ndarray, *, multiple: int, device: torch.device | str = "cpu",
                 autocast: Any = None, max_side: int = 0) -> np.ndarray:
    """(H, W) uint8 argmax of the model on an (H, W, 3) uint8 RGB image, at the image's size.

    The image is first bounded to a long side of ``max_side`` (``data.max_side``: the size the model was trained at;
    0 = its own size), normalised and zero-padded (the ImageNet mean) at the bottom and right to a multiple of
    ``multiple``; the logits are cropped back, and upsampled bilinearly to (H, W) when the image was bounded. The
    model must be in eval mode.
    """
    h, w = image.shape[:2]
    seen = downscale(image, max_side)
    sh, sw = seen.shape[:2]
    x = normalize(seen)[None].to(device)  # (1, 3, sh, sw)
    x = F.pad(x, (0, round_up(sw, multiple) - sw, 0, round_up(sh, multiple) - sh))
    if autocast is not None:
        with autocast():
            logits = forward_logits(model, x)
    else:
        logits = forward_logits(model, x)
    logits = logits[:, :, :sh, :sw].float()
    if (sh, sw) != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits[0].argmax(0).to(torch.uint8).cpu().numpy()
