"""Stage 1: multi-label classification pretraining of the ViT SeCo will use, on a generated dataset.

This is its own small loop, not :class:`seco_labels.training.trainer.Trainer`: the trainer optimises SeCo's
objective (a :class:`SeCoNet` with its EMA teacher, crops, prototypes and the contrastive and segmentation
losses) configured by a ``SecoConfig``, and checkpoints the whole network. Stage 1 trains the bare
:class:`ViTEncoder` with a 1x1 CAM head on image tags alone, on k x k mosaics, learning the position embedding from
2D sin-cos (which SeCo keeps frozen), and saves only the ViT's state dict for ``seco train --backbone-weights``.
None of that is a setting of the trainer, and the benchmark must not add one to the package for its own use.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seco_labels.io import atomic_path

from .dataset import load_split, mirrors
from .scores import roc_auc


def tile(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B * k * k, C, H, W) -> (B, C, k * H, k * W): each k * k consecutive images as one mosaic, row by row."""
    n, c, h, w = x.shape
    return x.view(n // (k * k), k, k, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n // (k * k), c, k * h, k * w)


def untile(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`tile`: (B, C, k * h, k * w) -> (B * k * k, C, h, w)."""
    b, c, h, w = x.shape
    x = x.view(b, c, k, h // k, k, w // k).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * k * k, c, h // k, w // k)


def pretrain(data: Path, out: Path, *, backbone: str, backbone_kwargs: dict, steps: int, batch_size: int, lr: float,
             seed: int, device: str = "cpu", pool: str = "max", mosaic: int = 1, position: str = "sincos",
             log_every: int = 50) -> dict:
    """Stage 1: multi-label classification of the train split by the ViT SeCo will use (``backbone``,
    ``backbone_kwargs``), with a CAM-style head (a 1x1 projection of every patch token, max-pooled), so the
    features learn where the classes are. Saves the ViT's state dict to ``out`` (``seco train --backbone-weights``)
    and returns the losses, the tag F1 on (up to 500 images of) train and on val, the ROC-AUC of the head's CAMs
    against their classes' pixels on (up to 300) train images, and the seconds per step.

    ``mosaic=k`` trains on k x k mosaics of train images, each tile classified by the max of the head's logits
    over its own tokens (docs/benchmarks.md, "Stage 1"). Image tags only, as before, but a token that carries
    the whole mosaic's classes is wrong on the other tiles, so the tokens stay local; a plain classifier learns
    tokens that all hold the image's tags, and its CAMs do not localise."""
    from seco_labels.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from seco_labels.models.backbone import ViTEncoder

    dev = torch.device(device)
    mean, std = (torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mirror = mirrors(data)
    _, images, tags, masks = load_split(data, "train")
    _, val_images, val_tags, _ = load_split(data, "val")
    images, tags, val_images, val_tags = (t.to(dev) for t in (images, tags, val_images, val_tags))
    if mosaic > 1 and pool == "cls":
        raise ValueError("mosaic > 1 classifies each tile by its own patch tokens; use pool='max' or 'mean'")
    encoder = ViTEncoder(backbone, aux_layer=-1, **backbone_kwargs).to(dev)  # the aux tokens are not used here
    if position == "sincos":
        # SeCo freezes the position embedding it is given (docs/design.md §2): ImageNet weights bring a learnt one,
        # but a random one is ~0.02 against patch embeddings of ~0.6, so without this the ViT sees a bag of
        # patches and cannot attend locally. Stage 1 learns it from 2D sin-cos, as pretraining would.
        from timm.layers import build_sincos2d_pos_embed

        pos = encoder.vit.pos_embed
        with torch.no_grad():
            pos[0, 1:] = build_sincos2d_pos_embed(list(encoder.grid_size), pos.shape[-1]).to(pos)
            pos[0, :1] = 0
        pos.requires_grad_(True)
    elif position != "frozen":
        raise ValueError(f"position is 'sincos' or 'frozen', got {position!r}")
    head = torch.nn.Conv2d(encoder.embed_dim, tags.shape[1], 1).to(dev)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)

    def logits(x: torch.Tensor, tiles: int = 1) -> torch.Tensor:  # (B, K-1), or (B * tiles**2, K-1) per tile
        features = encoder(x)
        if pool == "cls":  # the class token, as ImageNet ViTs are trained; the patch tokens are not supervised
            return head(features.cls_token[:, :, None, None]).flatten(1)
        cam = untile(head(features.tokens), tiles)  # (B * tiles**2, K-1, h / tiles, w / tiles)
        return cam.amax(dim=(2, 3)) if pool == "max" else cam.mean(dim=(2, 3))  # strongest patch, or all patches

    def prepare(batch: torch.Tensor, train: bool) -> torch.Tensor:
        x = batch.float() / 255
        if train:  # flips and a random shift: cheap, and the pasted objects move anyway
            flip = (torch.rand(x.shape[0], generator=gen) < (0.5 if mirror else 0.0)).to(dev)
            x[flip] = x[flip].flip(-1)
            dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=gen))
            x = torch.roll(x, (dy, dx), dims=(2, 3))
        return (x - mean) / std

    losses, t0 = [], time.perf_counter()
    encoder.train()
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size * mosaic * mosaic,), generator=gen).to(dev)
        x = prepare(images[idx], True)
        loss = F.binary_cross_entropy_with_logits(logits(tile(x, mosaic), mosaic), tags[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"pretrain step {step}/{steps}: loss {np.mean(losses[-log_every:]):.4f}", file=sys.stderr)
    seconds = (time.perf_counter() - t0) / max(1, steps)
    encoder.eval()

    def tag_f1(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            predicted = torch.cat([torch.sigmoid(logits(prepare(x[i:i + 64], False))) > 0.5
                                   for i in range(0, len(x), 64)]).float()
        return round(2 * float((predicted * y).sum()) / max(1.0, float(predicted.sum() + y.sum())), 4)

    def cam_auc(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> float:
        aucs = []
        with torch.no_grad():
            cams = torch.cat([head(encoder(prepare(x[i:i + 64], False)).tokens) for i in range(0, len(x), 64)])
            cams = F.interpolate(cams, size=m.shape[-2:], mode="bilinear", align_corners=False).cpu().numpy()
        for cam, t, gt in zip(cams, y.cpu().numpy(), m.numpy()):
            labelled = gt != 255
            for k in np.nonzero(t)[0]:
                own = gt == k + 1
                if own.any() and (labelled & ~own).any():
                    aucs.append(roc_auc(cam[k][own], cam[k][labelled & ~own]))
        return round(float(np.mean(aucs)), 4) if aucs else float("nan")

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({k: v.cpu() for k, v in encoder.vit.state_dict().items()}, tmp)
    return {"steps": steps, "first_loss": round(float(np.mean(losses[:10])), 4),
            "last_loss": round(float(np.mean(losses[-10:])), 4), "train_tag_f1": tag_f1(images[:500], tags[:500]),
            "val_tag_f1": tag_f1(val_images, val_tags),
            "head_cam_roc_auc": cam_auc(images[:300], tags[:300], masks[:300]),
            "mosaic": mosaic, "pool": pool, "position": position, "seconds_per_step": round(seconds, 4),
            "weights": str(out)}
