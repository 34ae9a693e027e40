"""SeCo's loss terms as pure functions (docs/design.md §2-3).

Every function is device-agnostic and vectorised over rows; docstrings give the shapes. Defaults reproduce the
published SeCo code (github.com/zwyang6/SeCo, ``model/losses.py``), quirks included and documented where they
happen; where the code departs from the paper, the paper's variant is an option (``lil_loss(variant="supcon")``).

Terms: multi-label classification (:func:`cls_loss`), ToCo's token contrast (:func:`label_to_affinity`,
:func:`ptc_loss`), the bg/fg-balanced segmentation CE (:func:`seg_loss`), local-to-local and local-to-global
contrast (:func:`lil_loss`, :func:`lig_loss`), and the per-term schedule (:func:`weight_at`). The dense CRF-energy
regulariser is in :mod:`seco_labels.method.energy`.

Precision: every loss runs in fp32 (fp64 inputs stay fp64) with autocast off, whoever calls it
(:func:`seco_labels.runtime.precision.in_fp32`): their epsilons underflow in fp16 and their temperatures amplify bf16's
rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..runtime.distributed import global_sum, world_size
from ..runtime.precision import in_fp32

__all__ = [
    "cls_loss",
    "label_to_affinity",
    "ptc_loss",
    "seg_loss",
    "lil_loss",
    "lig_loss",
    "weight_at",
]

UNCERTAIN = -1  #: crop tag of an uncertain crop (docs/design.md §3 step 3); 0 is background, k >= 1 a class


def check_dims(name: str, t: torch.Tensor, dims: int, shape: str) -> None:
    if t.dim() != dims:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(t.shape)}")


# --------------------------------------------------------------------------------------------------------------
# Classification and token contrast
# --------------------------------------------------------------------------------------------------------------


@in_fp32
def cls_loss(logits: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss of the image classifier (docs/design.md §2 "Classifiers").

    Shape:
        - logits: (B, C) foreground class logits, C = K - 1.
        - tags: (B, C) float multi-hot image-level labels.
        - output: scalar, mean over images and classes.
    """
    check_dims("logits", logits, 2, "(B, C)")
    if tags.shape != logits.shape:
        raise ValueError(f"tags shape {tuple(tags.shape)} must equal logits shape {tuple(logits.shape)}")
    # mean_c -[y log s(x) + (1 - y) log s(-x)]  (docs/design.md §2; F.multilabel_soft_margin_loss)
    return F.multilabel_soft_margin_loss(logits, tags.to(logits.dtype))


def label_to_affinity(label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pairwise affinity labels of a token-grid pseudo label (ToCo's ``label_to_aff_mask``).

    ``aff[b, i, j]`` is 1 when pixels i and j share a label, 0 when they differ, and ``ignore_index`` when either
    is ignored and on the diagonal (a token is never its own pair).

    Shape:
        - label: (B, h, w) long, values 0..K-1 or ``ignore_index``.
        - output: (B, h*w, h*w) long.
    """
    check_dims("label", label, 3, "(B, h, w)")
    flat = label.flatten(1)  # (B, h, w) -> (B, hw)
    aff = (flat[:, :, None] == flat[:, None, :]).long()  # (B, hw, hw): 1 same label, 0 different
    ignored = flat == ignore_index  # (B, hw)
    aff = aff.masked_fill(ignored[:, :, None] | ignored[:, None, :], ignore_index)
    aff.diagonal(dim1=1, dim2=2).fill_(ignore_index)
    return aff


@in_fp32
def ptc_loss(tokens: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """ToCo's masked patch-token contrast (docs/design.md §3 "PTC"; published ``get_masked_ptc_loss``).

    With ``cos`` the absolute cosine similarity of every token pair of an image, and the positive/negative pair
    counts taken over the whole batch:
    ``0.5 * (1 - sum(pos * cos) / (npos + 1)) + 0.5 * sum(neg * cos) / (nneg + 1)``.
    Pairs whose affinity is neither 0 nor 1 (ignored) do not count. Under torchrun the counts are the global
    batch's (:func:`~seco_labels.runtime.distributed.global_sum`), as for every batch-wide ratio below.

    Shape:
        - tokens: (B, D, h, w) patch tokens.
        - affinity: (B, h*w, h*w), 1 positive pair, 0 negative pair, anything else ignored
          (:func:`label_to_affinity`).
        - output: scalar.
    """
    check_dims("tokens", tokens, 4, "(B, D, h, w)")
    b, _, h, w = tokens.shape
    if affinity.shape != (b, h * w, h * w):
        raise ValueError(
            f"affinity shape {tuple(affinity.shape)} must be (B, h*w, h*w) = {(b, h * w, h * w)} for tokens "
            f"of shape {tuple(tokens.shape)}"
        )
    x = F.normalize(tokens.flatten(2), p=2, dim=1, eps=1e-8)  # (B, D, hw), unit tokens
    cos = torch.matmul(x.transpose(1, 2), x).abs()  # (B, hw, hw) |cosine| of every token pair
    pos = (affinity == 1).to(cos.dtype)
    neg = (affinity == 0).to(cos.dtype)
    world = world_size()
    # ToCo / SeCo: pull positives to |cos| 1, push negatives to 0, each half normalised by its pair count (+1)
    pos_term = world * (pos * cos).sum() / (global_sum(pos.sum()) + 1)
    neg_term = world * (neg * cos).sum() / (global_sum(neg.sum()) + 1)
    return 0.5 * (1 - pos_term) + 0.5 * neg_term


# --------------------------------------------------------------------------------------------------------------
# Segmentation cross entropy
# --------------------------------------------------------------------------------------------------------------


@in_fp32
def seg_loss(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Cross entropy averaged separately over background and foreground pixels (published ``get_seg_loss``).

    ``0.5 * (sum_bg ce / (n_bg + 1e-6) + sum_fg ce / (n_fg + 1e-6))``: background (label 0) and foreground
    (labels 1..K-1) each weigh one half whatever their pixel counts; ignored pixels count in neither. The
    ``1e-6`` (as published) keeps an empty set at 0 instead of NaN; with every pixel ignored the result is
    exactly 0 and still carries a graph (zero gradient).

    Shape:
        - logits: (B, K, H, W) decoder logits.
        - label: (B, H, W) long, 0..K-1 or ``ignore_index``.
        - output: scalar.
    """
    check_dims("logits", logits, 4, "(B, K, H, W)")
    if label.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"label shape {tuple(label.shape)} must be (B, H, W) = "
            f"{(logits.shape[0], *logits.shape[2:])} for logits of shape {tuple(logits.shape)}"
        )
    label = label.long()
    ce = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="none")  # (B, H, W), 0 where ignored
    valid = label != ignore_index
    bg = (valid & (label == 0)).to(ce.dtype)
    fg = (valid & (label != 0)).to(ce.dtype)
    world = world_size()  # global-batch pixel counts under torchrun (see ptc_loss)
    bg_loss = world * (ce * bg).sum() / (global_sum(bg.sum()) + 1e-6)  # published get_seg_loss: bg mean, guarded
    fg_loss = world * (ce * fg).sum() / (global_sum(fg.sum()) + 1e-6)  # mean over fg pixels, guarded
    return 0.5 * (bg_loss + fg_loss)


# --------------------------------------------------------------------------------------------------------------
# Tag-guided contrast: LIL and LIG
# --------------------------------------------------------------------------------------------------------------


def _rectify(
    pos_logits: torch.Tensor, pos: torch.Tensor, tags: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-tag as background the rows whose positives look like noise (docs/design.md §3 step 6; published LIL).

    For each row, the mean is taken over ALL columns of ``pos_logits`` (positives' max-shifted logits, 0 for
    every non-positive column). Since the shifted logits are <= 0, every non-positive column counts as "at or
    above the mean"; a row is re-tagged 0 when ``#below / (#at_or_above + 1e-6) > ratio``, i.e. when more than
    ratio/(ratio+1) of all columns are positives with a logit below the mean. Its positives are then dropped.

    Shape: pos_logits (N, M), pos (N, M) bool, tags (N,) -> (pos_logits, pos, revised tags, rectified rows (N,)
    bool), all new tensors.
    """
    mean = pos_logits.mean(dim=1, keepdim=True)  # (N, 1) mean over all M columns, as published
    at_or_above = (pos_logits >= mean).sum(dim=1)
    below = (pos_logits < mean).sum(dim=1)
    # The published ratio is a Python float64 division of two counts; keep float64 where the device has it.
    dt = torch.float32 if pos_logits.device.type == "mps" else torch.float64
    flip = below.to(dt) / (at_or_above.to(dt) + 1e-6) > ratio  # (N,) docs/design.md §3 step 6: ratio > 10
    revised = torch.where(flip, torch.zeros_like(tags), tags)
    pos = pos & ~flip[:, None]
    pos_logits = torch.where(flip[:, None], torch.zeros_like(pos_logits), pos_logits)
    return pos_logits, pos, revised, flip


@in_fp32
def lil_loss(
    q: torch.Tensor,
    keys: torch.Tensor,
    q_tags: torch.Tensor,
    key_tags: torch.Tensor,
    tau: float,
    *,
    rectify: bool = True,
    rectify_ratio: float = 10.0,
    variant: Literal["code", "supcon"] = "code",
    return_rectified: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Local-to-local supervised contrast of student crops against teacher keys (LIL, docs/design.md §3 step 5).

    Tags: -1 uncertain, 0 background, k >= 1 class k. A pair (i, j) is positive when ``q_tags[i] ==
    key_tags[j]`` (background-background pairs are positives) and row i is not uncertain. Rows tagged -1
    contribute nothing; key columns tagged -1 never enter a denominator. With ``rectify`` a row whose positives
    look like noise is re-tagged 0 and loses its positives (see ``_rectify``); the revised tags are returned
    (a new tensor; the inputs are never modified) and are what LIG should use.

    ``variant="code"`` (default) reproduces the published ``LIL_Loss`` exactly. With ``l`` the logits minus
    each row's max (the max is taken over ALL columns, uncertain ones included, and detached):

    - ``D_i = sum_j exp(l_ij)`` over columns with key tag != -1, except that every entry whose exp is exactly
      1.0 is dropped (published ``exp_logits != 1``): this removes the row's max column(s) (logit 0 after the
      shift, even when it is a positive) and, incidentally, logits so close to 0 that exp rounds to 1.
    - ``log_prob_ij = l_ij * pos_ij - log(D_i + 1e-12)``: for NON-positive columns this is ``-log D_i``, not 0,
      so the row sum is ``sum_{j pos} l_ij - M * log D_i`` (M = all columns, uncertain ones included).
    - ``P`` = number of non-zero positive logits in the whole batch (a positive on the max column has logit 0
      and is not counted).
    - loss = ``-(1/N) * sum_i rowsum_i / P`` over rows with ``D_i > 0`` (uncertain rows have ``D_i = 0``)
      and ``rowsum_i < 0``; rows without positives (e.g. rectified ones) still add ``-M log D_i`` when that is
      negative. N counts every row, uncertain ones included. Multiplied by ``tau / base_tau`` = 1.
    - Because of the max column and the ``M log D`` term the value depends on the row max, which an uncertain
      column can set; only the denominators exclude uncertain columns.

    ``variant="supcon"`` is the paper's form (Khosla et al. 2020): for each row with at least one positive,
    ``-mean_{j pos} log softmax_j(l_i)`` with the softmax over the non-uncertain columns; averaged over those
    rows. Same masks and rectification.

    Returns 0 (with a graph, zero gradient), not NaN, when no row has a usable positive.

    Args:
        q: (N, D) student crop embeddings (L2-normalised by the projection head).
        keys: (M, D) teacher keys: this step's keys followed by the reservoir.
        q_tags: (N,) long crop tags.
        key_tags: (M,) long key tags.
        tau: temperature (0.08 in SeCo).
        rectify: re-tag noisy rows as background (docs/design.md §3 step 6).
        rectify_ratio: the below/above-mean count ratio that triggers rectification (10).
        variant: ``"code"`` (published normalisation) or ``"supcon"`` (paper).
        return_rectified: also return which rows rectification re-tagged, background rows included (their tag
            stays 0 but they lose their positives).

    Returns:
        ``(loss, revised_tags)``: a scalar and an (N,) long tensor; with ``return_rectified``, then the (N,) bool
        rectified rows.

    Raises:
        ValueError: on mismatched shapes, a non-positive ``tau`` or an unknown ``variant``.
    """
    check_dims("q", q, 2, "(N, D)")
    check_dims("keys", keys, 2, "(M, D)")
    if keys.shape[1] != q.shape[1]:
        raise ValueError(f"keys dim {keys.shape[1]} must equal q dim {q.shape[1]} (q {tuple(q.shape)})")
    if q_tags.shape != (q.shape[0],):
        raise ValueError(f"q_tags shape {tuple(q_tags.shape)} must be (N,) = ({q.shape[0]},)")
    if key_tags.shape != (keys.shape[0],):
        raise ValueError(f"key_tags shape {tuple(key_tags.shape)} must be (M,) = ({keys.shape[0]},)")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if variant not in ("code", "supcon"):
        raise ValueError(f"variant={variant!r}: choose 'code' (published) or 'supcon' (paper)")

    if keys.shape[0] == 0:
        raise ValueError("keys is empty (M = 0): LIL needs at least this step's teacher keys")

    n, m = q.shape[0], keys.shape[0]
    q_tags, key_tags = q_tags.long(), key_tags.long()
    row_ok = q_tags != UNCERTAIN  # (N,)
    col_ok = key_tags != UNCERTAIN  # (M,)

    logits = torch.matmul(q, keys.T) / tau  # (N, M) scaled similarities (docs/design.md §3 step 5)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # published: max over all columns, <= 0
    zero = torch.zeros_like(logits)
    logits = torch.where(row_ok[:, None], logits, zero)  # published zeroes uncertain rows before masking
    pos = (q_tags[:, None] == key_tags[None, :]) & row_ok[:, None]  # (N, M) same tag; bg-bg pairs included
    pos_logits = torch.where(pos, logits, zero)  # (N, M) positives' logits, 0 elsewhere
    revised, rectified = q_tags.clone(), torch.zeros_like(row_ok)
    if rectify:
        pos_logits, pos, revised, rectified = _rectify(pos_logits, pos, q_tags, rectify_ratio)
    extra = (rectified,) if return_rectified else ()
    den_logits = torch.where(col_ok[None, :], logits, zero)  # published zeroes uncertain columns

    if variant == "supcon":
        # Khosla et al. eq. 2: -1/|P(i)| sum_{p in P(i)} log(exp(l_ip) / sum_{a in A(i)} exp(l_ia))
        masked = den_logits.masked_fill(~col_ok[None, :], torch.finfo(logits.dtype).min)
        log_prob = logits - torch.logsumexp(masked, dim=1, keepdim=True)  # (N, M)
        n_pos = pos.sum(dim=1)  # (N,)
        has_pos = n_pos > 0
        row_loss = -torch.where(pos, log_prob, zero).sum(dim=1) / n_pos.clamp(min=1)  # (N,)
        row_loss = torch.where(has_pos, row_loss, torch.zeros_like(row_loss))
        return world_size() * row_loss.sum() / global_sum(has_pos.sum()).clamp(min=1), revised, *extra

    exp_l = torch.exp(den_logits)
    exp_l = torch.where(exp_l != 1.0, exp_l, zero)  # published: drop entries with exp == 1 (logit 0)
    denom = exp_l.sum(dim=1)  # (N,) 0 for uncertain rows (all their entries were zeroed)
    # published log_prob: the positive logit minus log D for EVERY column (non-positives hold -log D, not 0)
    row_sum = pos_logits.sum(dim=1) - m * torch.log(denom + 1e-12)  # (N,) = sum_j log_prob_ij
    # batch-wide counts (global batch under torchrun, see ptc_loss): non-zero positive logits P, rows N
    n_nonzero = global_sum((pos_logits != 0).sum())
    n_rows = global_sum(torch.tensor(n, device=q.device))
    take = (denom > 0) & (row_sum < 0) & (n_nonzero > 0)
    # published: loss = -(tau/base_tau) * (1/N) * sum_{taken rows} rowsum_i / P, with tau/base_tau = 1
    loss = torch.where(take, -row_sum, torch.zeros_like(row_sum)).sum() / n_nonzero.clamp(min=1) / n_rows.clamp(min=1)
    return world_size() * loss, revised, *extra


@in_fp32
def lig_loss(q: torch.Tensor, prototypes: torch.Tensor, tags: torch.Tensor, tau: float, *,
             check_tags: bool = True) -> torch.Tensor:
    """Local-to-global contrast of student crops against class prototypes (LIG, docs/design.md §3 step 4).

    Reproduces the published ``LIG_Loss``. With ``l = q @ prototypes.T / tau`` (raw logits: the published code
    computes a max shift and then discards it), a crop tagged k >= 1 has the single positive prototype k-1;
    tags 0 and -1 have none. The denominator of every row covers only the prototypes of classes present among
    this batch's class tags; as published, an entry whose exp is exactly 1.0 (logit exactly 0, e.g. a crop
    orthogonal to a present prototype) is dropped from it too, and a positive whose logit is exactly 0
    contributes nothing to the sum while still counting in the divisor.
    loss = ``-sum_{i,j pos} (l_ij - log D_i) / #positives`` (rows with ``D_i > 0``), times ``tau/base_tau`` = 1.
    Returns 0, not NaN, when no crop has a class tag.

    Shape:
        - q: (N, D) student crop embeddings.
        - prototypes: (C, D) class prototypes, C = K - 1 (prototype c is class c + 1).
        - tags: (N,) long, -1..C (use the tags revised by :func:`lil_loss`).
        - output: scalar.

    ``check_tags=False`` skips the tag range check, two host reads (syncs on a GPU): for tags that are in range by
    construction, such as :func:`lil_loss`'s revised tags in the training step.

    Raises:
        ValueError: on mismatched shapes, a non-positive ``tau`` or (``check_tags``) a tag outside -1..C.
    """
    check_dims("q", q, 2, "(N, D)")
    check_dims("prototypes", prototypes, 2, "(C, D)")
    if prototypes.shape[1] != q.shape[1]:
        raise ValueError(f"prototypes dim {prototypes.shape[1]} must equal q dim {q.shape[1]}")
    if tags.shape != (q.shape[0],):
        raise ValueError(f"tags shape {tuple(tags.shape)} must be (N,) = ({q.shape[0]},)")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    c = prototypes.shape[0]
    tags = tags.long()
    if check_tags and tags.numel() and (int(tags.min()) < UNCERTAIN or int(tags.max()) > c):
        raise ValueError(f"tags must lie in -1..{c} (C = {c} prototypes), got {tags.tolist()}")

    logits = torch.matmul(q, prototypes.T) / tau  # (N, C) (docs/design.md §3 step 4)
    classes = torch.arange(1, c + 1, device=tags.device)  # prototype column j is class j + 1
    pos = tags[:, None] == classes[None, :]  # (N, C) own-class prototype; tags 0 / -1 match none
    present = global_sum(pos.any(dim=0).long()) > 0  # (C,) classes tagged somewhere in the (global) batch
    zero = torch.zeros_like(logits)
    exp_l = torch.exp(torch.where(present[None, :], logits, zero))
    exp_l = torch.where(exp_l != 1.0, exp_l, zero)  # published: absent classes (set to 0) and exp == 1 dropped
    denom = exp_l.sum(dim=1, keepdim=True)  # (N, 1)
    pos_logits = torch.where(pos, logits, zero)
    log_prob = pos_logits - torch.log(denom + 1e-12)  # (N, C) published log-softmax over present classes
    log_prob = torch.where(pos_logits != 0, log_prob, zero)  # published: keep only non-zero positive entries
    row = torch.where(denom[:, 0] > 0, log_prob.sum(dim=1), zero[:, 0])  # (N,)
    # published: -(tau/base_tau) * sum / #positives, tau/base_tau = 1; 0 when there is no positive
    return world_size() * (-row).sum() / global_sum(pos.sum()).clamp(min=1)


def weight_at(step: int, weight: float, start: int) -> float:
    """A loss term's weight at ``step``: ``weight`` from ``start`` on, 0 before (docs/design.md §3 schedule)."""
    return float(weight) if step >= start else 0.0
