"""Patch decomposition: local crops cut around a ROI mask's uncertain pixels, and their tags (docs/design.md §3
steps 1-3).

Defaults reproduce the published SeCo code (github.com/zwyang6/SeCo, ``utils/camutils.py``: ``assign_csc_tags``),
quirks included and documented where they happen; where the code departs from the paper, the paper's variant is an
option (``decompose(area_rule="fraction")``). Randomness comes only from ``torch.Generator`` arguments. ROI masks
and boxes follow the conventions of :mod:`seco_labels.method.cams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from .cams import UNCERTAIN

__all__ = ["Decomposition", "decompose"]


@dataclass
class Decomposition:
    """Local crops and tags of a batch (docs/design.md §3 steps 2-3); output of :func:`decompose`.

    Tags: 0 background, k >= 1 class k, :data:`UNCERTAIN` (-1) uncertain.
    """

    crops: list[torch.Tensor]  #: one per input view, each (B*n, 3, cs, cs), image-major (image 0's n crops first)
    crop_tags: torch.Tensor  #: (B, n) long
    global_tags: torch.Tensor  #: (B,) long, tag of the image's global views
    centers: torch.Tensor  #: (B, n, 2) long (row, col) pixel of each crop's centre; crop = centre - cs//2 + [0, cs)


def _sample_tops(
    uncertain: torch.Tensor, n: int, cs: int, generator: torch.Generator | None
) -> torch.Tensor:
    """(H, W) bool uncertain pixels of one image, on the CPU -> (n, 2) long top-left corners, on the CPU, whose
    centres (+cs//2) sit on uncertain pixels."""
    m = cs // 2
    h, w = uncertain.shape
    inner = uncertain[m : h - m, m : w - m]  # centres allowed here; index (i, j) <-> top-left corner (i, j)
    cand = inner.nonzero()  # (N, 2)
    if cand.shape[0] < n:  # too few uncertain pixels: uniform over the inner region (published fallback)
        hi, wi = inner.shape
        rng = torch.randperm(hi * wi, generator=generator) if hi * wi >= n else None
        if rng is None:  # region smaller than n: with replacement
            rng = torch.randint(hi * wi, (n,), generator=generator)
        flat = rng[:n]
        return torch.stack([flat // wi, flat % wi], dim=1)
    pick = torch.randperm(cand.shape[0], generator=generator)[:n]  # without replacement
    return cand[pick]


def _one_class(labels: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """The class of ``labels`` over ``dims`` where exactly one class k >= 1 occurs among them, else -1 (uncertain);
    0 counts as no class. (..., *dims) long -> (...) long."""
    hi = labels.amax(dim=dims)  # 0 if no class
    lo = torch.where(labels > 0, labels, torch.iinfo(torch.long).max).amin(dim=dims)
    return torch.where((hi > 0) & (lo == hi), hi, torch.full_like(hi, UNCERTAIN))


def decompose(
    views: Sequence[torch.Tensor],
    roi: torch.Tensor,
    *,
    num_crops: int = 10,
    crop_size: int = 64,
    bg_fraction: float = 0.2,
    area_rule: Literal["label_sum", "fraction"] = "label_sum",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ignore_index: int = 255,
) -> Decomposition:
    """Cut local crops around uncertain pixels and tag them (docs/design.md §3 steps 1-3; published
    ``assign_csc_tags``).

    Crop centres are sampled, without replacement, among the uncertain pixels (``roi == -1``) of the inner region
    ``[cs//2, H - cs//2) x [cs//2, W - cs//2)``; with fewer than ``num_crops`` of them, uniformly over the inner
    region (with replacement only if it has fewer than ``num_crops`` pixels). The same crops are cut from every
    view, so a weak (student) and a strong (teacher) view stay aligned.

    Tags. Let ``r`` be ``roi`` with ignored and uncertain pixels set to 0 (confident classes only).

    - Global tag: exactly one class in ``r`` -> that class; two or more -> -1; none -> -1. (The published code
      leaves such an image at its initial flag 1, i.e. "aeroplane"; not reproduced.)
    - Single-class image (class k): its uncertain pixels count as k for the crop tags.
    - Crop area ``<= bg_fraction`` -> 0, where the area is, with ``area_rule``:

      - ``"label_sum"`` (published code, the default): ``sum(r + [roi == -1]) / cs**2``, i.e. class *indices*
        are summed (before the single-class fill), so a crop that is 5% class 15 has "area" 0.75. A quirk of
        the published code, kept for fidelity: for any class > 4 almost every crop touching it is non-background.
      - ``"fraction"`` (paper): fraction of crop pixels that are confident foreground or uncertain.
    - Otherwise: exactly one class among the crop's (filled) confident pixels -> that class; else -1.

    Args:
        views: tensors (B, 3, H, W) (any channels) aligned with ``roi``; e.g. ``[weak_view, strong_view]``.
        roi: (B, H, W) long ROI mask from :func:`cam_to_roi_mask`.
        num_crops: crops per image (n).
        crop_size: crop side ``cs`` in pixels; needs ``H, W > 2 * (cs // 2)`` (the inner region is not empty).
        bg_fraction: phi (docs/design.md §3 step 3).
        area_rule: ``"label_sum"`` or ``"fraction"``, see above.
        generator: source of randomness, or one generator per image (then an image's crops do not depend on the
            other images of the batch, which keeps multi-process training equal to single-process training).
            The published code reseeds the global RNG with 0 for every image; we don't, so crop positions differ
            between steps.
        ignore_index: value of ignored ROI pixels.

    Returns:
        :class:`Decomposition`: ``crops`` (one (B*n, 3, cs, cs) per view), ``crop_tags`` (B, n),
        ``global_tags`` (B,), ``centers`` (B, n, 2).
    """
    if roi.dim() != 3:
        raise ValueError(f"roi must be (B, H, W), got shape {tuple(roi.shape)}")
    b, h, w = roi.shape
    for i, v in enumerate(views):
        if v.dim() != 4 or v.shape[0] != b or tuple(v.shape[-2:]) != (h, w):
            raise ValueError(f"views[{i}] has shape {tuple(v.shape)}; expected (B, 3, H, W) = ({b}, 3, {h}, {w})")
    if crop_size < 1 or min(h, w) - 2 * (crop_size // 2) < 1:
        raise ValueError(
            f"crop_size {crop_size} leaves no crop centre in {h}x{w} images; it needs H, W > 2 * (crop_size // 2)"
        )
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    if area_rule not in ("label_sum", "fraction"):
        raise ValueError(f"area_rule must be 'label_sum' or 'fraction', got {area_rule!r}")
    n, cs = num_crops, crop_size

    roi = roi.long()
    uncertain = roi == UNCERTAIN  # (B, H, W)
    r = roi.masked_fill(uncertain | (roi == ignore_index), 0)  # confident classes only

    # Global tags and the single-class fill (docs/design.md §3 step 3, "global view"): one class iff the largest
    # and the smallest non-zero class agree (as for the crop tags below; no per-image unique, no host sync)
    global_tags = _one_class(r, dims=(-2, -1))  # (B,)
    single = global_tags > 0  # (B,)
    filled = torch.where(uncertain & single[:, None, None], global_tags[:, None, None], r)  # (B, H, W)

    gens = list(generator) if isinstance(generator, Sequence) else [generator] * b
    if len(gens) != b:
        raise ValueError(f"got {len(gens)} generators for a batch of {b} images; pass one per image or a single one")
    # The draws use CPU generators and the count of each image's candidates: one copy of the uncertain pixels to
    # the host (the step's one sync for the decomposition on a GPU), then the corners go back.
    uncertain_host = uncertain.cpu()
    tops = torch.stack([_sample_tops(uncertain_host[i], n, cs, gens[i]) for i in range(b)])  # (B, n, 2)
    tops = tops.to(roi.device, non_blocking=True)
    offs = torch.arange(cs, device=roi.device)
    rows = (tops[..., 0, None] + offs)[:, :, :, None]  # (B, n, cs, 1)
    cols = (tops[..., 1, None] + offs)[:, :, None, :]  # (B, n, 1, cs)
    bidx = torch.arange(b, device=roi.device)[:, None, None, None]  # (B, 1, 1, 1)

    crops = []
    for v in views:
        patches = v.permute(0, 2, 3, 1)[bidx.to(v.device), rows.to(v.device), cols.to(v.device)]  # (B, n, cs, cs, 3)
        crops.append(patches.permute(0, 1, 4, 2, 3).reshape(b * n, v.shape[1], cs, cs))

    r_c = r[bidx, rows, cols]  # (B, n, cs, cs) confident classes, unfilled
    unc_c = uncertain[bidx, rows, cols]
    fill_c = filled[bidx, rows, cols]
    if area_rule == "label_sum":
        area = (r_c + unc_c.long()).sum(dim=(-2, -1)).float() / (cs * cs)  # published: summed class indices
    else:
        area = ((r_c > 0) | unc_c).float().mean(dim=(-2, -1))  # fraction of fg + uncertain pixels
    crop_tags = _one_class(fill_c, dims=(-2, -1))  # (B, n)
    crop_tags = torch.where(area <= bg_fraction, torch.zeros_like(crop_tags), crop_tags)  # docs/design.md §3 step 3

    return Decomposition(crops=crops, crop_tags=crop_tags, global_tags=global_tags, centers=tops + cs // 2)
