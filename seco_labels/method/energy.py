"""The dense CRF-energy regulariser (Tang et al., ECCV 2018) in pure torch, SeCo's ``reg`` term (docs/algorithm.md,
"CRF energy").

:func:`crf_energy_loss` filters the predicted class probabilities with a Gaussian over RGB + position
(:func:`energy_features`), by the published permutohedral lattice (``seco_labels.method.lattice``) or the exact
:func:`dense_gaussian_filter` (:data:`GAUSSIAN_FILTERS`, ``loss.energy_filter``). Like every loss, it runs in fp32
with autocast off (:func:`seco_labels.runtime.precision.in_fp32`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..runtime.precision import in_fp32
from .lattice import permutohedral_filter
from .losses import check_dims

__all__ = ["dense_gaussian_filter", "GAUSSIAN_FILTERS", "energy_features", "crf_energy_loss"]


@in_fp32
def dense_gaussian_filter(
    features: torch.Tensor, values: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """Exact dense Gaussian filtering: ``out[b, k, i] = sum_j exp(-|f_bi - f_bj|^2 / 2) * values[b, k, j]``.

    Every pair (i, j) of an item is included, i == j too. Pixels are processed in blocks of ``chunk_size``
    (default: 1024 on CPU, where smaller blocks exploit the kernel's symmetry better, 4096 on GPU, where
    fewer launches matter more), one item at a time, so memory is O(chunk_size * N), never N^2; squared distances come from the expansion
    ``|a|^2 + |b|^2 - 2 a.b`` as one matmul per chunk (features are centred per item first, which leaves the
    distances unchanged and limits cancellation). Differentiable, but intended to run under ``torch.no_grad``.

    Shape:
        - features: (B, F, N), already divided by their bandwidths (sigmas).
        - values: (B, K, N).
        - output: (B, K, N), in the promoted dtype of features and values.
    """
    check_dims("features", features, 3, "(B, F, N)")
    check_dims("values", values, 3, "(B, K, N)")
    if values.shape[0] != features.shape[0] or values.shape[2] != features.shape[2]:
        raise ValueError(
            f"values shape {tuple(values.shape)} must be (B, K, N) with B, N of features {tuple(features.shape)}"
        )
    if chunk_size is None:
        chunk_size = 4096 if features.is_cuda else 1024
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = torch.promote_types(features.dtype, values.dtype)
    f = features.to(dtype)
    f = f - f.mean(dim=2, keepdim=True)  # (B, F, N) centred; the kernel only sees differences
    half_sq = 0.5 * (f * f).sum(dim=1, keepdim=True)  # (B, 1, N) |f|^2 / 2
    ones = torch.ones_like(half_sq)
    # -|a - b|^2 / 2 = a.b - |a|^2/2 - |b|^2/2 = [a; -|a|^2/2; 1] . [b; 1; -|b|^2/2]
    query = torch.cat([f, -half_sq, ones], dim=1).transpose(1, 2).contiguous()  # (B, N, F+2)
    key = torch.cat([f, ones, -half_sq], dim=1)  # (B, F+2, N)
    v = values.to(dtype)
    n = f.shape[2]
    # Clamp the exponent to [log(tiny) + 1, 0]: d^2 >= 0, and kernel values that would underflow to subnormals
    # (which make exp ~8x slower on CPU) become ~3e-38 (float32) instead: the sums move by at most N * 3e-38.
    floor = math.log(torch.finfo(dtype).tiny) + 1.0
    needs_graph = torch.is_grad_enabled() and (features.requires_grad or values.requires_grad)
    if not needs_graph:
        return _symmetric_gaussian_filter(query, key, v, chunk_size, floor)
    items = []
    for b in range(f.shape[0]):
        parts = []
        for start in range(0, n, chunk_size):
            w = torch.matmul(query[b, start : start + chunk_size], key[b])  # (c, N) = -|f_i - f_j|^2 / 2
            w = w.clamp(min=floor, max=0.0).exp()  # (c, N) Gaussian kernel (Tang et al. 2018 eq. 7)
            parts.append(torch.matmul(v[b], w.T))  # (K, N) @ (N, c) -> (K, c)
        items.append(torch.cat(parts, dim=1))
    return torch.stack(items)


@torch.no_grad()
def _symmetric_gaussian_filter(
    query: torch.Tensor, key: torch.Tensor, values: torch.Tensor, chunk_size: int, floor: float
) -> torch.Tensor:
    """The no-graph path of :func:`dense_gaussian_filter`: the kernel is symmetric, so each off-diagonal block
    W[I, J] is computed once and applied both ways (W[J, I] = W[I, J]^T), halving the exps that dominate.

    query (B, N, F+2), key (B, F+2, N), values (B, K, N) -> (B, K, N).
    """
    n = query.shape[1]
    c = min(chunk_size, n)
    out = torch.zeros_like(values)
    # One reused block buffer: allocating (and first touching) a fresh one per block costs more than the
    # matmul on CPU.
    buf = values.new_empty(c, c)
    for b in range(query.shape[0]):
        for i0 in range(0, n, c):
            qi = query[b, i0 : i0 + c]  # (ci, F+2)
            for j0 in range(i0, n, c):
                kj = key[b, :, j0 : j0 + c]  # (F+2, cj)
                w = torch.matmul(qi, kj, out=buf[: qi.shape[0], : kj.shape[1]])  # -|f_i - f_j|^2 / 2
                w = w.clamp_(min=floor, max=0.0).exp_()  # (ci, cj) Gaussian kernel (Tang et al. 2018 eq. 7)
                out[b, :, i0 : i0 + c] += values[b, :, j0 : j0 + c] @ w.T
                if j0 != i0:
                    out[b, :, j0 : j0 + c] += values[b, :, i0 : i0 + c] @ w
    return out


def energy_features(image: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """The CRF energy's bilateral features ``(x, y, r, g, b)`` divided by their bandwidths (Tang et al. 2018
    eq. 7; rloss's feature order): x is the column, y the row, in pixels of ``image``.

    Shape: image (B, 3, H, W) float RGB 0..255 -> (B, 5, H * W) in the image's dtype.
    """
    check_dims("image", image, 4, "(B, 3, H, W)")
    b, _, h, w = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=image.device, dtype=image.dtype),
        torch.arange(w, device=image.device, dtype=image.dtype),
        indexing="ij",
    )
    pos = torch.stack([xs, ys]).reshape(1, 2, h * w).expand(b, 2, h * w) / sigma_xy  # (B, 2, N)
    return torch.cat([pos, image.reshape(b, 3, h * w) / sigma_rgb], dim=1)  # (B, 5, N)


#: Gaussian filters of the CRF energy, ``(features (B, F, N), values (B, K, N)) -> (B, K, N)``:
#: ``lattice`` is the published one (rloss's permutohedral lattice, unnormalised, about 0.6x the exact sum;
#: linear in pixels), ``exact`` the dense sum over every pixel pair (quadratic in pixels).
GAUSSIAN_FILTERS = {"lattice": permutohedral_filter, "exact": dense_gaussian_filter}


@in_fp32
def crf_energy_loss(
    image: torch.Tensor,
    probs: torch.Tensor,
    roi: torch.Tensor,
    label: torch.Tensor,
    *,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale: float = 0.5,
    weight: float = 1e-7,
    ignore_index: int = 255,
    filter: str = "lattice",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Dense CRF-energy regulariser of Tang et al. (ECCV 2018) as the published ``DenseEnergyLoss`` computes it.

    Image, ROI and label are downscaled by ``scale`` with nearest neighbours and the probabilities bilinearly
    (the published ``F.interpolate`` calls, ``recompute_scale_factor=True``); ``sigma_xy`` is scaled with them.
    With ``S = probs * roi``, ``W_ij = exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2))``
    over all pixel pairs of an image (i == j included), ``Gate = max(roi - max_k probs, 0)`` set to 1
    where the label is ``ignore_index`` (before clamping), and ``AS = Gate * (W S)`` per class:

        loss = -weight * sum(S * AS) / B

    Gradient: the published backward returns ``-2 * weight * AS * roi / B`` for the (scaled) probabilities. That
    is the exact gradient of ``-S^T W S`` only when the gate is constant and ``Gate W`` symmetric (true for
    Tang's ungated loss); the true gradient is ``-(Gate * (W S) + W (Gate * S))`` plus a term from the gate's
    dependence on ``max_k probs``. We reproduce the published gradient: the value is computed from a detached
    ``AS``, and a straight-through term ``-2 * weight / B * sum((p - p.detach()) * roi * AS)`` (exactly 0 in
    value) carries it. The gradient then flows through the bilinear downscale to ``probs`` as in the published
    code.

    ``filter`` names the Gaussian filter that computes ``W S`` (:data:`GAUSSIAN_FILTERS`): ``"lattice"``, the
    published permutohedral lattice, whose low bias is part of the published loss strength, or ``"exact"``,
    the dense sum (``chunk_size`` applies to it only; see :func:`dense_gaussian_filter`).

    Shape:
        - image: (B, 3, H, W) float RGB in 0..255 (not normalised).
        - probs: (B, K, H, W) softmax probabilities.
        - roi: (B, H, W) float {0, 1}, 1 on valid (non-padding) pixels.
        - label: (B, H, W) long pseudo label, ``ignore_index`` where uncertain.
        - output: scalar.
    """
    check_dims("image", image, 4, "(B, 3, H, W)")
    check_dims("probs", probs, 4, "(B, K, H, W)")
    b, k, h, w = probs.shape
    if image.shape != (b, 3, h, w):
        raise ValueError(f"image shape {tuple(image.shape)} must be (B, 3, H, W) = {(b, 3, h, w)}")
    if roi.shape != (b, h, w):
        raise ValueError(f"roi shape {tuple(roi.shape)} must be (B, H, W) = {(b, h, w)}")
    if label.shape != (b, h, w):
        raise ValueError(f"label shape {tuple(label.shape)} must be (B, H, W) = {(b, h, w)}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    if filter not in GAUSSIAN_FILTERS:
        raise ValueError(f"unknown CRF-energy filter {filter!r}; use one of {', '.join(GAUSSIAN_FILTERS)}")
    dtype = torch.promote_types(probs.dtype, torch.float32)

    # Published DenseEnergyLoss.forward: nearest for image / ROI / label, bilinear for the probabilities.
    size_kw = dict(scale_factor=scale, recompute_scale_factor=True)
    image_s = F.interpolate(image.to(dtype), mode="nearest", **size_kw)  # (B, 3, h', w')
    probs_s = F.interpolate(probs.to(dtype), mode="bilinear", align_corners=False, **size_kw)  # (B, K, h', w')
    roi_s = F.interpolate(roi.to(dtype)[:, None], mode="nearest", **size_kw)  # (B, 1, h', w')
    label_s = F.interpolate(label[:, None].to(dtype), mode="nearest", **size_kw)[:, 0].long()  # (B, h', w')
    hs, ws = probs_s.shape[-2:]

    with torch.no_grad():
        s = probs_s * roi_s  # (B, K, h', w') S = probs * ROI
        gate = roi_s[:, 0] - probs_s.max(dim=1).values  # published Gate = ROI - max_k probs
        gate = torch.where(label_s == ignore_index, torch.ones_like(gate), gate).clamp(min=0)  # (B, h', w')
        feats = energy_features(image_s, sigma_rgb, sigma_xy * scale)  # published: sigma_xy scaled with the image
        values = s.reshape(b, k, hs * ws)
        if filter == "exact":
            a_s = dense_gaussian_filter(feats, values, chunk_size)  # (B, K, N) W S
        else:
            a_s = GAUSSIAN_FILTERS[filter](feats, values).to(dtype)
        a_s = a_s.reshape(b, k, hs, ws) * gate[:, None]  # AS = Gate * (W S)
        value = -weight * (s * a_s).sum() / b  # Tang et al. 2018 / published: -sum(S * AS) / B

    # Straight-through: 0 in value, d/d probs_s = -2 * weight * AS * roi / B (the published backward).
    surrogate = -2.0 * weight / b * ((probs_s - probs_s.detach()) * roi_s * a_s).sum()
    return value + surrogate
