"""The SeCo objective: one training step's forward passes, ROI masks, crops, memory updates and losses
(docs/design.md §3).

``seco_step`` computes the whole objective for one batch; :class:`SecoObjective` wraps it as the module that
DistributedDataParallel wraps. The loop around it (optimiser, schedule, checkpoints) is
:class:`seco_labels.training.trainer.Trainer`.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import LossConfig, SecoConfig
from ..data import denormalize
from ..models import SeCoNet
from ..runtime.distributed import NormGroups, norm_groups, normalise_over
from .cams import box_mask, cam_to_label, cam_to_roi_mask, multi_scale_cams
from .decompose import decompose
from .energy import crf_energy_loss
from .losses import cls_loss, label_to_affinity, lig_loss, lil_loss, ptc_loss, seg_loss, weight_at
from .refine import PAR, refine_with_background

__all__ = ["SecoObjective", "StepOutput", "seco_step", "steady_step", "LOSS_TERMS", "COUNT_KEYS", "HOST_KEYS",
           "PhaseTimer"]

#: Every term of the objective, in the order they are logged.
LOSS_TERMS = ("cls", "aux", "ptc", "lig", "lil", "seg", "reg")
#: The batch's values the step reads on the host (the seeds of the local crops' CPU generators): the trainer leaves
#: them on the CPU
HOST_KEYS = ("crop_seed",)
#: What each step counts of its crops (:class:`StepOutput`), in the order they are logged.
COUNT_KEYS = ("crops_tagged", "local_crops_class", "local_crops_background", "local_crops_uncertain",
              "crops_rectified", "background_rectified", "lil_pairs", "lig_positives")

PhaseTimer = Callable[[str], ContextManager[Any]]


def steady_step(cfg: SecoConfig) -> int:
    """The first step of a run's steady state: every loss term on, and the ROI taken from the final CAM."""
    return max(max(getattr(cfg.loss, t).start for t in LOSS_TERMS), cfg.cam.roi_final_cam_from)


def no_timer(name: str) -> ContextManager[Any]:
    return contextlib.nullcontext()


def _token_box(box: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Map a pixel box [h0, h1, w0, w1] (B, 4) to the token grid, keeping every token that overlaps it.

    The published code applies the pixel box to the token-resolution label directly, which silently
    ignores whole images whose padding starts below row/column h; we scale it instead.
    """
    sh, sw = grid[0] / size[0], grid[1] / size[1]
    h0 = torch.floor(box[:, 0] * sh)
    h1 = torch.ceil(box[:, 1] * sh)
    w0 = torch.floor(box[:, 2] * sw)
    w1 = torch.ceil(box[:, 3] * sw)
    return torch.stack([h0, h1, w0, w1], dim=1).long()


def _group_mean(groups: NormGroups, loss_fn: Callable[..., torch.Tensor], *batched: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` of each loss-normalisation group, its batch-wide counts taken over the group, averaged over the
    groups (``loss.norm_group_size``, docs/distributed.md "Loss normalisation").

    Every tensor of ``batched`` is image-major along dim 0 (B images, or B x rows per image) and is cut into
    ``groups.chunks`` equal consecutive slices, one per group of this process.
    """
    with normalise_over(groups.scope):
        losses = [loss_fn(*parts) for parts in zip(*(t.chunk(groups.chunks) for t in batched))]
    return torch.stack(losses).mean()


def _contrast_terms(
    q: torch.Tensor,
    view_tags: torch.Tensor,
    step_keys: tuple[torch.Tensor, torch.Tensor],
    memory: tuple[torch.Tensor, torch.Tensor],
    prototypes: torch.Tensor,
    lc: LossConfig,
    groups: NormGroups,
    views: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LIL and LIG of each loss-normalisation group, averaged over the groups, every row's revised tag, which rows
    rectification re-tagged, and the number of same-tag (crop, key) pairs offered to LIL (:func:`_same_tag_pairs`,
    summed over the groups).

    A group's crops are keyed by the group's own step keys, then the reservoir, as each published GPU keys its
    crops by its own keys then the gathered reservoir (``LIL_Loss`` reads ``queue_feats_all[b:]``).

    Shape:
        - q: (B * V, D) this process's projected views, image-major (``views`` = V per image); view_tags: (B * V,).
        - step_keys: ((G_all * V, D) keys, (G_all * V,) tags) of every process's images, in global-batch order.
        - memory: ((R, D) keys, (R,) tags) of the reservoir after this step's push.
        - prototypes: (C, D).
        - output: LIL scalar, LIG scalar, revised tags (B * V,), rectified rows (B * V,) bool, pair count (0-dim).
    """
    lil, lig, revised, rectified, pairs = [], [], [], [], []
    with normalise_over(groups.scope):
        for j, (q_j, tags_j) in enumerate(zip(q.chunk(groups.chunks), view_tags.chunk(groups.chunks))):
            rows = slice((groups.first + j * groups.size) * views, (groups.first + (j + 1) * groups.size) * views)
            keys = torch.cat([step_keys[0][rows].float(), memory[0].float()])
            key_tags = torch.cat([step_keys[1][rows], memory[1]])
            loss, tags_r, rectified_j = lil_loss(q_j, keys, tags_j, key_tags, lc.lil_tau, rectify=lc.rectify,
                                                 rectify_ratio=lc.rectify_ratio, variant=lc.lil_variant,
                                                 return_rectified=True)
            lil.append(loss)
            # tags_r is lil_loss's, in range by construction: no range check, which would sync on a GPU
            lig.append(lig_loss(q_j, prototypes.float(), tags_r, lc.lig_tau, check_tags=False))
            revised.append(tags_r)
            rectified.append(rectified_j)
            pairs.append(_same_tag_pairs(tags_j, key_tags))
    return (torch.stack(lil).mean(), torch.stack(lig).mean(), torch.cat(revised), torch.cat(rectified),
            torch.stack(pairs).sum())


def _same_tag_pairs(q_tags: torch.Tensor, key_tags: torch.Tensor) -> torch.Tensor:
    """The (crop, key) pairs LIL is offered as positives: same tag, the crop's tag certain, before rectification
    (docs/design.md §3 step 5); a 0-dim tensor on the tags' device, so that counting syncs nothing.
    Shape: q_tags (N,), key_tags (M,) long, -1..C."""
    return ((q_tags[:, None] == key_tags[None, :]) & (q_tags >= 0)[:, None]).sum()


@dataclass
class StepOutput:
    """The loss to back-propagate, the value of every term computed this step (None = inactive), and counts of
    this process's crops (:data:`COUNT_KEYS`; None while the mechanism is off): what each of SeCo's mechanisms
    did this step (docs/design.md §3).

    - ``crops_tagged``: global views and local crops with a class or background tag;
    - ``local_crops_class``, ``local_crops_background``, ``local_crops_uncertain``: decomposition's tags of the
      local crops (step 3);
    - ``crops_rectified``: crops whose class tag LIL's rectification changed to background (step 6);
    - ``background_rectified``: background crops rectification re-tagged background: their tag stays, but they
      lose their LIL positives;
    - ``lil_pairs``: same-tag (crop, key) pairs offered to LIL as positives, before rectification (step 5);
    - ``lig_positives``: crops with a class tag after rectification, each paired with its class prototype
      (step 4)."""

    loss: torch.Tensor
    loss_value: float = float("nan")  #: ``loss`` read on the host, with the terms and counts
    terms: dict[str, float | None] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float | None] = field(default_factory=dict)


def seco_step(
    model: SeCoNet,
    batch: dict[str, Any],
    step: int,
    cfg: SecoConfig,
    par: PAR,
    *,
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
    timer: PhaseTimer = no_timer,
    times_zero: bool = False,
) -> StepOutput:
    """The whole SeCo objective for one batch (docs/design.md §3), with the memories updated as a side effect.

    ``batch`` holds ``image``/``global2``/``strong`` (B, 3, S, S), ``box`` (B, 4), ``tags`` (B, K-1),
    ``label_idx`` (B,) on the model's device, and ``crop_seed`` (B,), best on the CPU (:data:`HOST_KEYS`). Terms
    whose weight is 0 at ``step`` are not computed, unless ``times_zero``: then they are computed and added times 0,
    as the published loop does (slower; the reference that ``optim.unstarted_grads="zero"`` reproduces without those
    forward passes). Under torchrun B is this process's share of the global batch; the memories gather every
    process's keys. PTC, seg, LIL and LIG are normalised per group of ``loss.norm_group_size`` images
    (:func:`_group_mean`), and each group's crops are keyed by its own step keys then the reservoir.
    """
    lc, cc, dc = cfg.loss, cfg.cam, cfg.decompose
    x, tags, box = batch["image"], batch["tags"], batch["box"]
    size = (x.shape[-2], x.shape[-1])
    w = {name: weight_at(step, getattr(lc, name).weight, getattr(lc, name).start) for name in LOSS_TERMS}
    on = {name: times_zero or w[name] > 0 for name in LOSS_TERMS}  # the terms computed this step
    terms: dict[str, torch.Tensor] = {}
    counted: dict[str, torch.Tensor] = {}  # read in one go at the end: one host sync for every count

    with timer("student_forward"), autocast():
        # The second global view has x's size: one encoder batch, as the published code batches its globals.
        out = model(x, extra=batch["global2"])
    with timer("cam_inference"), autocast():
        # Scale 1.0 reuses the CAM of the training forward: same weights, same input, one pass saved.
        cams, cams_aux = multi_scale_cams(model.cams, x, cc.scales, base=(out.cam, out.cam_aux), flip=cc.flip)
    cams, cams_aux = cams.float(), cams_aux.float()

    with timer("crop_sampling"):
        roi_cam = cams if step >= cc.roi_final_cam_from else cams_aux
        roi = cam_to_roi_mask(
            roi_cam, tags, box=box, bkg_thre=cc.bkg_thre, high_thre=cc.high_thre, low_thre=cc.low_thre,
            ignore_index=cfg.data.ignore_index,
        )
        parts = decompose(
            [x, batch["strong"]], roi, num_crops=dc.num_local_crops, crop_size=dc.local_crop_size,
            bg_fraction=dc.bg_fraction, area_rule=dc.area_rule,
            generator=[torch.Generator().manual_seed(seed) for seed in batch["crop_seed"].tolist()],
            ignore_index=cfg.data.ignore_index,
        )
        crops_q, crops_k = parts.crops
        b, n = parts.crop_tags.shape
        view_tags = torch.cat([parts.global_tags[:, None].expand(b, 2), parts.crop_tags], dim=1).reshape(-1)

    with timer("student_forward"), autocast():
        # Global view 1 is the training image itself: its class token is out.cls_token (docs/design.md §3 step 2).
        g2 = out.extra_cls
        local_q = model.embed(crops_q).reshape(b, n, -1)
        feats = torch.cat([out.cls_token[:, None], g2[:, None], local_q], dim=1)  # (B, 2+n, D), image-major
        q = model.proj_head(feats.reshape(b * (n + 2), -1)).float()

    with timer("teacher_forward"), autocast():
        if step >= cfg.model.proto_start:
            model.prototypes.update(out.cls_token.detach(), batch["label_idx"])
        prototypes = model.prototypes.vectors.clone()
        model.update_teacher()
        local_k = model.teacher_embed(crops_k).reshape(b, n, -1)
        keys = torch.cat([feats[:, :2], local_k], dim=1).reshape(b * (n + 2), -1)
        k = model.teacher_project(keys).float()
        # Published order: this step's keys enter the reservoir before LIL reads it.
        step_keys = model.reservoir.push(k, view_tags)  # every process's keys and tags, in global-batch order
        memory = (model.reservoir.keys.clone(), model.reservoir.tags.clone())

    groups = norm_groups(lc.norm_group_size, b)

    with timer("losses"):
        terms["cls"] = cls_loss(out.logits.float(), tags)
        terms["aux"] = cls_loss(out.aux_logits.float(), tags)
        if on["ptc"]:
            grid = tuple(out.tokens.shape[-2:])
            small_aux = F.interpolate(cams_aux, size=grid, mode="bilinear", align_corners=False)
            _, aux_label = cam_to_label(
                small_aux, tags, box=_token_box(box, size, grid), bkg_thre=cc.bkg_thre, high_thre=cc.high_thre,
                low_thre=cc.low_thre, ignore_index=cfg.data.ignore_index, ignore_mid=True,
            )
            affinity = label_to_affinity(aux_label, cfg.data.ignore_index)
            terms["ptc"] = _group_mean(groups, ptc_loss, out.tokens.float(), affinity)
        if on["lil"] or on["lig"]:
            terms["lil"], terms["lig"], revised, rectified, lil_pairs = _contrast_terms(
                q, view_tags, step_keys, memory, prototypes, lc, groups, views=n + 2,
            )
            counted.update(crops_rectified=(revised != view_tags).sum(),
                           background_rectified=(rectified & (view_tags == 0)).sum(), lil_pairs=lil_pairs,
                           lig_positives=(revised > 0).sum())
        if on["seg"] or on["reg"]:
            seg_cam = cams if step >= cc.seg_final_cam_from else cams_aux
            valid_cam, _ = cam_to_label(
                seg_cam, tags, box=box, bkg_thre=cc.bkg_thre, high_thre=cc.high_thre, low_thre=cc.low_thre,
                ignore_index=cfg.data.ignore_index, ignore_mid=True,
            )
            image_255 = denormalize(x)
            pseudo = refine_with_background(
                par, image_255.clamp(0, 255).floor() / 255.0, valid_cam, tags, high_thre=cc.high_thre,
                low_thre=cc.low_thre, ignore_index=cfg.data.ignore_index, box=box, down_scale=cc.par_downscale,
            )
            seg = F.interpolate(out.seg.float(), size=size, mode="bilinear", align_corners=False)
            seg_fn = functools.partial(seg_loss, ignore_index=cfg.data.ignore_index)
            terms["seg"] = _group_mean(groups, seg_fn, seg, pseudo)
            if on["reg"]:  # a mean over images: the same for any grouping
                terms["reg"] = crf_energy_loss(
                    image_255, seg.softmax(1), box_mask(box, size).float(), pseudo, sigma_rgb=lc.energy_sigma_rgb,
                    sigma_xy=lc.energy_sigma_xy, scale=lc.energy_scale, weight=lc.energy_weight,
                    filter=lc.energy_filter, ignore_index=cfg.data.ignore_index,
                )
        loss = sum((w[name] * value for name, value in terms.items() if on[name]), x.new_zeros(()))

    local = parts.crop_tags
    counted.update(crops_tagged=(view_tags >= 0).sum(), local_crops_class=(local > 0).sum(),
                   local_crops_background=(local == 0).sum(), local_crops_uncertain=(local < 0).sum())
    # The loss, the active terms and the counts in one host read: on a GPU, one sync for the step's bookkeeping
    logged = [name for name in LOSS_TERMS if name in terms and w[name] > 0]
    values = torch.stack([loss.detach().double(), *(terms[name].detach().double() for name in logged),
                          *(c.double() for c in counted.values())]).tolist()
    counts: dict[str, float | None] = dict.fromkeys(COUNT_KEYS)
    counts.update(zip(counted, (int(v) for v in values[1 + len(logged):])))
    term_values: dict[str, float | None] = dict.fromkeys(LOSS_TERMS)
    term_values.update(zip(logged, values[1:]))
    return StepOutput(loss=loss, loss_value=values[0], terms=term_values, weights=w, counts=counts)


class SecoObjective(nn.Module):
    """The network, PAR and config as one module whose ``forward(batch, step)`` is a whole training step.

    DistributedDataParallel synchronises the gradients of what its wrapped module's forward reaches. A SeCo step
    runs the encoder several times (image, second global view, local crops) and reaches the projection head and
    decoder only once their losses start, so the whole step is that forward, and DDP wraps this module with
    ``find_unused_parameters=True``.
    """

    def __init__(self, model: SeCoNet, par: PAR, cfg: SecoConfig) -> None:
        super().__init__()
        self.model, self.par, self.cfg = model, par, cfg

    def forward(self, batch: dict[str, Any], step: int, *, autocast: Callable[[], ContextManager[Any]],
                timer: PhaseTimer = no_timer) -> StepOutput:
        return seco_step(self.model, batch, step, self.cfg, self.par, autocast=autocast, timer=timer)
