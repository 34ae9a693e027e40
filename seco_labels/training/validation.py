"""Validation of a SeCo network on the val split: single-scale segmentation mIoU and multi-scale CAM mIoU against
the GT masks (what :meth:`seco_labels.training.trainer.Trainer.validate` logs), and pictures of the same predictions for
TensorBoard (:func:`validation_images`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import SecoConfig
from ..evaluation.metrics import ConfusionMatrix
from ..method.cams import cam_to_label, multi_scale_cams
from ..models import SeCoNet
from ..runtime.distributed import all_gather_objects

__all__ = ["validation_scores", "validation_images"]


def _predict(model: SeCoNet, x: torch.Tensor, tags: torch.Tensor, size: tuple[int, int], cfg: SecoConfig,
             autocast: Callable[[], ContextManager[Any]]) -> dict[str, torch.Tensor]:
    """What validation scores, at mask resolution ``size``: the multi-scale CAMs ``cam``/``cam_aux`` (B, C, H, W)
    in [0, 1], their labels ``cam_label``/``cam_aux_label`` and the decoder's ``seg_label`` (B, H, W)."""
    with autocast():
        out = model(x)
        cams, cams_aux = multi_scale_cams(model.cams, x, cfg.cam.scales, base=(out.cam, out.cam_aux))
    pred = {}
    for name, cam in (("cam", cams), ("cam_aux", cams_aux)):
        cam = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=False)
        _, label = cam_to_label(
            cam, tags, box=None, bkg_thre=cfg.cam.bkg_thre, high_thre=cfg.cam.high_thre,
            low_thre=cfg.cam.low_thre, ignore_index=cfg.data.ignore_index, ignore_mid=False,
        )
        pred[name], pred[f"{name}_label"] = cam, label
    seg = F.interpolate(out.seg.float(), size=size, mode="bilinear", align_corners=False)
    pred["seg_label"] = seg.argmax(1)
    return pred


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
        gt = item["mask"]
        pred = _predict(model, item["image"].to(device), item["tags"].to(device), tuple(gt.shape[-2:]), cfg,
                        autocast)
        for name in mats:
            mats[name].update(gt, pred[f"{name}_label"].cpu())
    model.train(was_training)
    # under torchrun each process scored its shard of the images: sum the counts, then score
    return {
        f"{name}_miou": ConfusionMatrix.from_matrix(sum(all_gather_objects(m.mat)), cfg.data.ignore_index).miou()
        for name, m in mats.items()
    }


@torch.no_grad()
def validation_images(
    model: SeCoNet,
    dataset: Dataset,
    cfg: SecoConfig,
    device: torch.device,
    *,
    count: int,
    class_names: tuple[str, ...] | list[str],
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
) -> list[tuple[str, np.ndarray]]:
    """``(tag, (H, W, 3) uint8)`` strips of the first ``count`` items of ``dataset`` (an :class:`EvalDataset` with
    GT masks), one per image: the image, the CAM of each tagged class, the mask those CAMs give, the decoder's mask,
    the GT and the CAM mask's errors (:func:`seco_labels.evaluation.show.panels_for`), from the predictions
    :func:`validation_scores` scores. The same images every validation, so TensorBoard shows them change."""
    from ..evaluation.show import VOC_COLORS, ShowPanel, draw_strip, panels_for

    was_training = model.training
    model.eval()
    strips = []
    for i in range(min(count, len(dataset))):
        item = dataset[i]
        gt = item["mask"].numpy()
        tags = item["tags"][None].to(device)
        pred = _predict(model, item["image"][None].to(device), tags, gt.shape, cfg, autocast)
        image = dataset.reader.load_image(item["id"])  # the mask's size: readers check that they agree
        present = item["tags"].nonzero().flatten()
        panels = panels_for(image, pred["cam_label"][0].cpu().numpy(), class_names,
                            cams=pred["cam"][0, present].cpu().numpy(), keys=(present + 1).numpy(), gt=gt,
                            ignore_index=cfg.data.ignore_index)
        at = next(j for j, p in enumerate(panels) if p.label_map)  # the CAM mask
        panels[at].caption, panels[at].legend = "CAM mask", ()  # validation's CAM mask has no uncertain pixels
        seg = pred["seg_label"][0].cpu().numpy().astype(np.uint8)
        panels.insert(at + 1, ShowPanel("decoder mask", VOC_COLORS[seg], label_map=True))
        strips.append((f"val_images/{i}_{item['id']}", np.asarray(draw_strip(panels, title=item["id"]))))
    model.train(was_training)
    return strips
