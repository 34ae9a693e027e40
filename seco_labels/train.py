"""SeCo training: one step of the objective, the loop, validation, checkpoints and resume (docs/design.md §3, §6).

Reads top-down like torchvision's reference scripts: ``seco_step`` (the objective) -> ``validation_scores`` ->
:class:`Trainer` (its step, validation and checkpoint). What the trainer shares with ``seco fit-segmenter`` and
the inference commands is in :mod:`seco_labels.runtime` (device, batches, the batch sampler) and
:mod:`seco_labels.run_state` (the training loop and the run folder: log, checkpoints, resume, lock, signals,
progress).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .cams import box_mask, cam_to_label, cam_to_roi_mask, check_scales, multi_scale_cams
from .checkpoint import check_compatible, latest_checkpoint, require_kind
from .config import LossConfig, SecoConfig
from .config_io import config_to_dict
from .data import EvalDataset, TrainDataset, TrainViews, build_reader, check_class_count, denormalize
from .decompose import decompose
from .distributed import (
    DistributedError, NormGroups, all_gather_objects, all_reduce_mean, init_distributed, norm_groups, normalise_over,
)
from .errors import ConfigError
from .energy import crf_energy_loss
from .losses import cls_loss, label_to_affinity, lig_loss, lil_loss, ptc_loss, seg_loss, weight_at
from .metrics import ConfusionMatrix
from .models import SeCoNet, build_seco
from .precision import grad_scaler, resolve_amp
from .refine import PAR, refine_with_background
from .run_state import RunState, holding_run_lock
from .runtime import StepBatchSampler, batch_to_device, resolve_device
from .schedule import lr_multiplier

__all__ = [
    "Trainer", "SecoObjective", "memory_digest", "seco_step", "validation_scores", "LOSS_TERMS", "compile_encoders",
    "compile_errors", "zero_missing_grads",
]

#: Every term of the objective, in the order they are logged.
LOSS_TERMS = ("cls", "aux", "ptc", "lig", "lil", "seg", "reg")

PhaseTimer = Callable[[str], ContextManager[Any]]


def _no_timer(name: str) -> ContextManager[Any]:
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LIL and LIG of each loss-normalisation group, averaged over the groups, and every row's revised tag.

    A group's crops are keyed by the group's own step keys, then the reservoir, as each published GPU keys its
    crops by its own keys then the gathered reservoir (``LIL_Loss`` reads ``queue_feats_all[b:]``).

    Shape:
        - q: (B * V, D) this process's projected views, image-major (``views`` = V per image); view_tags: (B * V,).
        - step_keys: ((G_all * V, D) keys, (G_all * V,) tags) of every process's images, in global-batch order.
        - memory: ((R, D) keys, (R,) tags) of the reservoir after this step's push.
        - prototypes: (C, D).
        - output: LIL scalar, LIG scalar, revised tags (B * V,).
    """
    lil, lig, revised = [], [], []
    with normalise_over(groups.scope):
        for j, (q_j, tags_j) in enumerate(zip(q.chunk(groups.chunks), view_tags.chunk(groups.chunks))):
            rows = slice((groups.first + j * groups.size) * views, (groups.first + (j + 1) * groups.size) * views)
            keys = torch.cat([step_keys[0][rows].float(), memory[0].float()])
            key_tags = torch.cat([step_keys[1][rows], memory[1]])
            loss, tags_r = lil_loss(q_j, keys, tags_j, key_tags, lc.lil_tau, rectify=lc.rectify,
                                    rectify_ratio=lc.rectify_ratio, variant=lc.lil_variant)
            lil.append(loss)
            lig.append(lig_loss(q_j, prototypes.float(), tags_r, lc.lig_tau))
            revised.append(tags_r)
    return torch.stack(lil).mean(), torch.stack(lig).mean(), torch.cat(revised)


@dataclass
class StepOutput:
    """The loss to back-propagate, the value of every term computed this step (None = inactive), and counts of
    this process's crops: ``crops_tagged`` (class or background tag), ``crops_rectified`` (re-tagged background
    by LIL's rectification; None while LIL/LIG are off)."""

    loss: torch.Tensor
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
    timer: PhaseTimer = _no_timer,
    times_zero: bool = False,
) -> StepOutput:
    """The whole SeCo objective for one batch (docs/design.md §3), with the memories updated as a side effect.

    ``batch`` holds ``image``/``global2``/``strong`` (B, 3, S, S), ``box`` (B, 4), ``tags`` (B, K-1),
    ``label_idx`` (B,), ``crop_seed`` (B,), all on the model's device. Terms whose weight is 0 at ``step`` are
    not computed, unless ``times_zero``: then they are computed and added times 0, as the published loop does
    (slower; the reference that ``optim.unstarted_grads="zero"`` reproduces without those forward passes). Under
    torchrun B is this process's share of the global batch; the memories gather every process's keys. PTC, seg,
    LIL and LIG are normalised per group of ``loss.norm_group_size`` images (:func:`_group_mean`), and each
    group's crops are keyed by its own step keys then the reservoir.
    """
    lc, cc, dc = cfg.loss, cfg.cam, cfg.decompose
    x, tags, box = batch["image"], batch["tags"], batch["box"]
    size = (x.shape[-2], x.shape[-1])
    w = {name: weight_at(step, getattr(lc, name).weight, getattr(lc, name).start) for name in LOSS_TERMS}
    on = {name: times_zero or w[name] > 0 for name in LOSS_TERMS}  # the terms computed this step
    terms: dict[str, torch.Tensor] = {}
    counts: dict[str, float | None] = {"crops_tagged": None, "crops_rectified": None}

    with timer("student_forward"), autocast():
        # The second global view has x's size: one encoder batch, as the published code batches its globals.
        out = model(x, extra=batch["global2"])
    with timer("cam_inference"), autocast():
        # Scale 1.0 reuses the CAM of the training forward: same weights, same input, one pass saved.
        cams, cams_aux = multi_scale_cams(model.cams, x, cc.scales, base=(out.cam, out.cam_aux))
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
            generator=[torch.Generator().manual_seed(int(seed)) for seed in batch["crop_seed"]],
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
            terms["lil"], terms["lig"], revised = _contrast_terms(
                q, view_tags, step_keys, memory, prototypes, lc, groups, views=n + 2,
            )
            counts["crops_rectified"] = float((revised != view_tags).sum())
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

    counts["crops_tagged"] = float((view_tags >= 0).sum())
    return StepOutput(
        loss=loss,
        terms={name: (float(terms[name].detach()) if name in terms and w[name] > 0 else None) for name in LOSS_TERMS},
        weights=w,
        counts=counts,
    )


@torch.no_grad()
def validation_scores(
    model: SeCoNet,
    loader: DataLoader,
    cfg: SecoConfig,
    device: torch.device,
    *,
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
    max_images: int = 0,
    quiet: bool = True,
) -> dict[str, float]:
    """Single-scale segmentation mIoU and multi-scale CAM mIoU (final and aux) against the GT masks.

    Images are resized to ``crop_size`` like the published validation; scores are at mask resolution.
    """
    was_training = model.training
    model.eval()
    k = cfg.data.num_classes
    mats = {name: ConfusionMatrix(k, cfg.data.ignore_index) for name in ("cam", "cam_aux", "seg")}
    total = min(len(loader), max_images) if max_images else len(loader)
    for i, item in enumerate(tqdm(loader, total=total, desc="val", disable=quiet, leave=False)):
        if max_images and i >= max_images:
            break
        x = item["image"].to(device)
        tags = item["tags"].to(device)
        gt = item["mask"]
        with autocast():
            out = model(x)
            cams, cams_aux = multi_scale_cams(model.cams, x, cfg.cam.scales, base=(out.cam, out.cam_aux))
        size = tuple(gt.shape[-2:])
        for name, cam in (("cam", cams), ("cam_aux", cams_aux)):
            cam = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=False)
            _, label = cam_to_label(
                cam, tags, box=None, bkg_thre=cfg.cam.bkg_thre, high_thre=cfg.cam.high_thre,
                low_thre=cfg.cam.low_thre, ignore_index=cfg.data.ignore_index, ignore_mid=False,
            )
            mats[name].update(gt, label.cpu())
        seg = F.interpolate(out.seg.float(), size=size, mode="bilinear", align_corners=False)
        mats["seg"].update(gt, seg.argmax(1).cpu())
    model.train(was_training)
    # under torchrun each process scored its shard of the images: sum the counts, then score
    return {
        f"{name}_miou": ConfusionMatrix.from_matrix(sum(all_gather_objects(m.mat)), cfg.data.ignore_index).miou()
        for name, m in mats.items()
    }


def zero_missing_grads(optimizer: torch.optim.Optimizer) -> int:
    """Give every parameter of ``optimizer`` that no loss term reached this step a zero gradient; returns how many.

    The published loop adds every term from step 0, as ``0 * term`` before it starts (scripts/train_voc.py
    lines 219-224), so the projection head and decoder get zero gradients, not none: AdamW then decays their weights
    and advances their moments and step counts, and a term's first updates are larger than on fresh moments
    (docs/divergences.md). Every parameter we optimise is one that graph reaches; the published groups' never-used
    ones (the ViT's ImageNet head, the frozen positional embedding, ``DINOHead.last_layer``) are not ours.
    """
    filled = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
                filled += 1
    return filled


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
                timer: PhaseTimer = _no_timer) -> StepOutput:
        return seco_step(self.model, batch, step, self.cfg, self.par, autocast=autocast, timer=timer)


def compile_encoders(model: SeCoNet) -> None:
    """``train.compile``: ``torch.compile`` the student's and the local teacher's ViT encoders, in place.

    ``nn.Module.compile`` compiles the module's call, not a wrapper module: parameter and buffer names stay those of
    the eager model (no ``_orig_mod.`` prefix), so state dicts, checkpoints and the teacher's EMA are unchanged.
    Shapes are dynamic from the start: one encoder sees the batch, its flip at every CAM scale, the local crops and
    the validation images, more shapes than the recompile limit allows static graphs for. Compilation happens in the
    first steps (and the first validation): minutes on a CPU.

    Raises:
        ConfigError: torch.compile does not support this Python or platform.
    """
    import torch._dynamo  # here, not at the top: a heavy import that only train.compile needs

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(f"train.compile=true: torch.compile does not support Python {sys.version.split()[0]} "
                          f"with torch {torch.__version__} here; set train.compile=false")
    for encoder in (model.encoder, model.teacher["encoder"]):
        encoder.compile(dynamic=True)


@contextlib.contextmanager
def compile_errors(enabled: bool) -> Iterator[None]:
    """Under ``train.compile``, turn a failure of torch.compile itself (dynamo, inductor, the C++ compiler it runs on
    a CPU) into a :class:`ConfigError` that says to train without it; the original error is chained."""
    if not enabled:
        yield
        return
    import torch._dynamo.exc

    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ConfigError(f"train.compile=true: torch.compile failed on this machine ({type(e).__name__}: {first}); "
                          "set train.compile=false to train without it") from e


def memory_digest(model: SeCoNet) -> str:
    """SHA-1 of the reservoir (keys, tags, pointer) and prototypes: equal across processes when they agree."""
    h = hashlib.sha1()
    for t in (model.reservoir.keys, model.reservoir.tags, model.reservoir.ptr, model.prototypes.vectors):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Trainer(RunState):
    """Owns a run folder: builds data, model and optimiser from a resolved config, trains, checkpoints,
    validates, and resumes from ``RUN_DIR/last.pt``.

    Under ``torchrun`` (docs/distributed.md) every process builds the same trainer: ``data.batch_size`` is the
    global batch, split evenly over the processes; gradients are averaged by DistributedDataParallel; the
    memories gather every process's keys; validation is sharded and its counts summed. Rank 0 alone writes the
    run folder and shows the progress bar.

    Files written in ``run_dir``: ``config.yaml`` (resolved config), ``last.pt`` (every ``ckpt_every`` steps
    and at the end), ``metrics.jsonl`` (one JSON record per step and per validation; under torchrun also the
    processes' memory digests at each checkpoint).
    """

    def __init__(self, cfg: SecoConfig, run_dir: str | Path, *, quiet: bool = False) -> None:
        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        self.dist = init_distributed(resolve_device(cfg.train.device))
        self.quiet = quiet or not self.dist.is_primary
        self.device = self.dist.device
        self.amp_dtype = resolve_amp(cfg.train.amp, self.device)
        d = cfg.data
        if not d.root:
            raise ConfigError("no dataset: pass --data-root DIR (or data.root in the config file)")
        self.reader = build_reader(d.layout, d.root, d.train_split, num_classes=d.num_classes,
                                   class_names=d.class_names or None, ignore_index=d.ignore_index)
        if not d.class_names:
            check_class_count(self.reader)
        views = TrainViews(d.crop_size, d.rescale_range, d.global_crop_scale, d.strong_flip_p)
        self.dataset = TrainDataset(self.reader, views, seed=cfg.train.seed)
        self._sampler(0)  # a batch that cannot be split over the processes fails here, before the model is built
        # so do loss groups that straddle processes unevenly; the first call also creates their process groups
        norm_groups(cfg.loss.norm_group_size, d.batch_size // self.dist.world_size)
        torch.manual_seed(cfg.train.seed)
        self.model = build_seco(cfg.model, d.num_classes).to(self.device)
        self._check_sizes(self.model.encoder.patch_size)
        if cfg.train.compile:
            compile_encoders(self.model)
        self.par = PAR(cfg.cam.par_dilations, cfg.cam.par_iters).to(self.device)
        objective = SecoObjective(self.model, self.par, self.cfg)
        self.objective: nn.Module = objective if not self.dist.distributed else DistributedDataParallel(
            objective, device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=True, forward_sync_buffers=False,  # the memories are kept equal by gathering
        )
        groups = self.model.param_groups()
        o = cfg.optim
        lr_mult = {"backbone": 1.0, "backbone_norm": 1.0, "heads": o.head_lr_mult, "decoder": o.head_lr_mult}
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": o.lr * lr_mult[name], "name": name} for name, ps in groups.items()],
            lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=1e-8,
        )
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scaler = grad_scaler(self.device, self.amp_dtype)
        self.step = 0
        self._val_loader: DataLoader | None = None

    def _check_sizes(self, patch: int) -> None:
        """Crops, their CAM scales and the local crops must hold at least one ``patch`` x ``patch`` token: check
        before step 0."""
        d, k = self.cfg.data, self.cfg.decompose
        check_scales((1.0, *self.cfg.cam.scales), d.crop_size, patch, size_option="data.crop_size",
                     scales_option="cam.scales")
        if k.local_crop_size < patch:  # any larger size works, as published: the remainder is dropped
            raise ConfigError(
                f"decompose.local_crop_size={k.local_crop_size} is smaller than one of the backbone's {patch} px "
                f"patches; set it to {patch} or more"
            )

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"kind": "seco", **self._common_state()}

    def load_state_dict(self, ckpt: dict[str, Any], source: str | Path) -> None:
        require_kind(ckpt, "seco", source)
        check_compatible(ckpt.get("config", {}), config_to_dict(self.cfg), source)
        self._load_common_state(ckpt, source)
        self.step = int(ckpt["step"])

    # -- loop ----------------------------------------------------------------------------------------------
    def _sampler(self, start_step: int) -> StepBatchSampler:
        return StepBatchSampler(len(self.dataset), self.cfg.data.batch_size, self.cfg.train.seed,
                                start_step=start_step, rank=self.dist.rank, world_size=self.dist.world_size)

    def _train_loader(self) -> DataLoader:
        d = self.cfg.data
        return DataLoader(
            self.dataset, batch_sampler=self._sampler(self.step), num_workers=d.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=d.num_workers > 0,
        )

    def val_loader(self) -> DataLoader | None:
        """This process's share of the validation images (the first ``train.val_max_images`` when set)."""
        d = self.cfg.data
        if self._val_loader is None and d.val_split:
            reader = build_reader(
                d.layout, d.root, d.val_split, num_classes=d.num_classes, class_names=d.class_names or None,
                ignore_index=d.ignore_index, require_masks=True,
            )
            dataset = EvalDataset(reader, size=d.crop_size)
            n = min(len(dataset), self.cfg.train.val_max_images or len(dataset))
            shard = Subset(dataset, range(self.dist.rank, n, self.dist.world_size))
            self._val_loader = DataLoader(shard, batch_size=1, num_workers=d.num_workers)
        return self._val_loader

    def train_step(self, batch: dict[str, Any], timer: PhaseTimer = _no_timer) -> StepOutput:
        """One optimiser step at ``self.step`` (lr set from the schedule first).

        The returned terms and loss are this process's; :meth:`fit` logs their mean over processes.
        """
        mult = lr_multiplier(self.step, self.cfg.optim, self.cfg.train.iters)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * mult
        batch = batch_to_device(batch, self.device)
        with compile_errors(self.cfg.train.compile):  # the compiled encoder's forward and backward
            out = self.objective(batch, self.step, autocast=self._autocast, timer=timer)
            self._check_loss(float(out.loss.detach()), out.terms)
            with timer("backward"):
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(out.loss).backward()
                if self.cfg.optim.unstarted_grads == "zero":
                    zero_missing_grads(self.optimizer)
        with timer("optimizer_step"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return out

    def _over_processes(self, out: StepOutput) -> dict[str, float | None]:
        """The step's log fields (``loss``, ``loss_<term>``, crop counts) with the loss and terms averaged and the
        counts summed over processes (one small all-reduce): what one process would log for the global batch."""
        fields = {"loss": float(out.loss.detach()), **{f"loss_{k}": v for k, v in out.terms.items()}, **out.counts}
        active = [k for k, v in fields.items() if v is not None]
        values = torch.tensor([fields[k] for k in active], dtype=torch.float64, device=self.device)
        fields.update(zip(active, all_reduce_mean(values).cpu().tolist()))
        for k in out.counts:
            if fields[k] is not None:  # counts add up over processes; the mean times N is a whole number again
                fields[k] = int(round(fields[k] * self.dist.world_size))
        return fields

    def check_memories(self) -> list[str]:
        """Every process's :func:`memory_digest`, in rank order.

        Raises:
            DistributedError: the processes' reservoirs or prototypes differ (they must stay identical).
        """
        digests = all_gather_objects(memory_digest(self.model))
        if len(set(digests)) > 1:
            raise DistributedError(
                f"step {self.step}: the processes' key reservoirs / prototypes diverged (digests {digests}); "
                "this is a bug, please report it with the run's config.yaml"
            )
        return digests

    def validate(self) -> dict[str, float]:
        loader = self.val_loader()
        if loader is None:
            return {}
        with compile_errors(self.cfg.train.compile):
            return validation_scores(
                self.model, loader, self.cfg, self.device, autocast=self._autocast,
                quiet=self.quiet or not sys.stderr.isatty(),
            )

    def checkpoint(self) -> Path:
        """:meth:`save`; under torchrun first checks and logs that every process holds the same memories."""
        if self.dist.distributed:
            self._log({"step": self.step - 1, "memory_digests": self.check_memories()})
        return self.save()

    @holding_run_lock
    def fit(self) -> dict[str, Any]:
        """Train from ``self.step`` to ``train.iters``; returns the last step's terms and validation scores.

        A run that had already reached ``train.iters`` trains nothing (``already_finished``) and returns the last
        step and validation records of ``metrics.jsonl``. Records of steps >= ``self.step`` are dropped from the log
        first (they are re-run), so each step is logged once.

        Runs holding ``RUN_DIR/.lock`` (:meth:`run_lock`).

        Raises:
            TrainingInterrupted: SIGINT/SIGTERM arrived; the step under way was finished and checkpointed first.
            FolderBusyError: another process is writing ``RUN_DIR``.
            DiskFullError: a checkpoint or log write did not fit; the previous ``last.pt`` is kept.
        """
        self._open_run()
        if self.step >= self.cfg.train.iters:
            self.already_finished = True
            if latest_checkpoint(self.run_dir) is None:  # resumed a finished run from another folder's checkpoint
                self.save()
            return self.last_logged()
        return self.run_loop(lambda batch: self._over_processes(self.train_step(batch)), self._validation_entry,
                             desc="train")

    def _validation_entry(self) -> tuple[dict[str, float], str] | None:
        """:meth:`validate` as :meth:`run_loop` logs and shows it (None: no val split)."""
        scores = self.validate()
        return (scores, ", ".join(f"{k} {v:.4f}" for k, v in scores.items())) if scores else None
