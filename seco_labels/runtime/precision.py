"""Mixed precision (``train.amp``): the autocast dtype of a device, its grad scaler, and the fp32 islands.

Under autocast the encoder, decoder and projection head run in bf16 (or fp16); what amplifies rounding or
overflows in half precision runs in fp32 on every device (docs/divergences.md, "precision on a GPU"):

- the classifier / CAM heads (``models/seco.py``): the multi-scale CAMs are min-max normalised in the CAM's
  dtype, and bf16's 8-bit mantissa there moved the ROI thresholds of several percent of the pixels;
- the losses, PAR and the CRF energy (:func:`in_fp32`): small epsilons (``1e-8``, ``1e-12``) that underflow in
  fp16, temperatures that scale logits by 12.5, exact-1.0 tests of the published LIL/LIG, and the CRF energy's
  Gaussian kernel matmul.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, ContextManager, TypeVar

import torch

from ..errors import ConfigError

__all__ = ["AMP_MODES", "resolve_amp", "grad_scaler", "autocast_context", "autocast_off", "in_fp32"]

#: the values of ``train.amp`` / ``ExportOptions.amp``
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: devices whose autocast we use: CUDA (``auto`` = bf16 or fp16) and CPU (only when asked for, ``auto`` = fp32)
_AMP_DEVICES = ("cuda", "cpu")
_HALF = (torch.float16, torch.bfloat16)

F = TypeVar("F", bound=Callable[..., Any])


def _cpu_autocast_supports(dtype: torch.dtype) -> bool:
    """Whether this torch's CPU autocast runs matmuls in ``dtype`` (older releases only had bf16 and disable
    autocast with a warning for any other dtype)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast("cpu", dtype=dtype):
            return (torch.ones(1, 1) @ torch.ones(1, 1)).dtype == dtype


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp=mode`` on ``device``, or None for fp32.

    ``auto``: bf16 on CUDA (fp16 where the GPU has no bf16), fp32 elsewhere, where half precision is rarely
    faster. ``bf16``/``fp16`` are honoured on CUDA and on CPU too (CPU bf16 is how CI runs the mixed-precision
    path; CPU fp16 is slow and there to test the grad scaler). ``off``: fp32.

    Raises:
        ConfigError: an unknown mode, bf16/fp16 on another device type (mps, xpu), or a dtype this torch's CPU
            autocast does not support.
    """
    if mode not in AMP_MODES:
        raise ConfigError(f"amp={mode!r}: choose {', '.join(AMP_MODES)}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    if device.type not in _AMP_DEVICES:
        raise ConfigError(f"amp={mode} is supported on cuda and cpu, not {device.type}; use amp=off or auto")
    if device.type == "cpu" and not _cpu_autocast_supports(dtype):
        raise ConfigError(f"amp={mode}: this torch {torch.__version__} has no CPU autocast in {dtype}; use bf16 or off")
    return dtype


def grad_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler of a run: enabled for fp16 only (bf16 has fp32's exponent range), built for ``device``'s
    type so that it neither warns nor unscales on the wrong device."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None) -> ContextManager[Any]:
    """The autocast region of a run: ``torch.autocast`` of ``device``'s type in ``amp_dtype``
    (:func:`resolve_amp`), or a context that does nothing for fp32 (None)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def autocast_off(device: torch.device | str) -> torch.autocast:
    """A context where autocast (of ``device``'s type) is off, inside an autocast region or not."""
    return torch.autocast(torch.device(device).type, enabled=False)


def _upcast(value: Any) -> Any:
    """fp16/bf16 tensors -> fp32; everything else (fp32, fp64, integers, non-tensors) as it is."""
    return value.float() if isinstance(value, torch.Tensor) and value.dtype in _HALF else value


def in_fp32(fn: F) -> F:
    """Decorate ``fn`` to run with autocast off and its fp16/bf16 tensor arguments upcast to fp32.

    For code whose numbers need fp32 whoever calls it: a caller inside an autocast region, or one that hands
    it half-precision tensors, gets the fp32 result (fp64 arguments stay fp64). The device is the first tensor
    argument's. Gradients flow through the upcast as usual.
    """
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if first is None:
            return fn(*args, **kwargs)
        with autocast_off(first.device):
            return fn(*map(_upcast, args), **{k: _upcast(v) for k, v in kwargs.items()})

    return wrapped  # type: ignore[return-value]
