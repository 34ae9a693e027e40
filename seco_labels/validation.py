"""Validation of a SeCo network on the val split: single-scale segmentation mIoU and multi-scale CAM mIoU against
the GT masks (what :meth:`seco_labels.train.Trainer.validate` logs).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .cams import cam_to_label, multi_scale_cams
from .config import SecoConfig
from .distributed import all_gather_objects
from .metrics import ConfusionMatrix
from .models import SeCoNet

__all__ = ["validation_scores"]


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
