"""Pixel-adaptive refinement (PAR) and background thresholds for pseudo masks (DESIGN.md §4).

Defaults reproduce the published SeCo/ToCo code (``model/PAR.py``; ``refine_cams_with_bkg_v2`` in
``utils/camutils.py``). Everything is device-agnostic and batched: one PAR call per batch covers every image and
both background thresholds. Labels: 0 background, k >= 1 class k, ``ignore_index`` (255) ignored.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cams import box_mask

__all__ = ["PAR", "refine_with_background"]

#: 8-neighbour unit offsets (dy, dx), in the published kernel order (row-major, centre skipped).
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


class PAR(nn.Module):
    """Pixel-adaptive refinement (ToCo/SeCo; DESIGN.md §4): propagate masks along local RGB + position affinities.

    Each pixel has ``N = 8 * len(dilations)`` neighbours, the 8-neighbourhood scaled by each dilation ``d``
    (replicate padding at the borders). Affinity to neighbour ``j`` (published ``PAR.forward``)::

        a_rgb[j] = softmax_j( mean_rgb( -(|I_j - I| / (std_j(I_j) + 1e-8) / w_rgb)^2 ) )
        a_pos[j] = softmax_j( -(p_j / (std_j(p_j) + 1e-8) / w_rgb)^2 ),  p_j = d (sqrt(2) d for diagonals)
        a[j] = a_rgb[j] + w_pos * a_pos[j]

    (``std`` is the unbiased std over the N neighbours; the positional term also uses ``w_rgb``, as published.)
    Then ``num_iter`` times ``masks = sum_j a[j] * masks_j``. The weights of a pixel sum to ``1 + w_pos``, not 1
    (published), so each step scales a pixel's total mass by ``1 + w_pos``: after the default 10 steps, masks that
    summed to 1 sum to ``1.01 ** 10``, about 1.105. An argmax over classes is unaffected.

    Args:
        dilations: neighbour distances in pixels.
        num_iter: propagation steps.
        w_rgb: temperature of both affinities (published ``w1``).
        w_pos: weight of the positional affinity (published ``w2``).
    """

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 10,
        w_rgb: float = 0.3,
        w_pos: float = 0.01,
    ) -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be positive integers, got {tuple(dilations)}")
        if num_iter < 0:
            raise ValueError(f"num_iter must be >= 0, got {num_iter}")
        self.num_iter = int(num_iter)
        self.w_rgb = float(w_rgb)
        self.w_pos = float(w_pos)
        self.offsets = [(dy * d, dx * d) for d in self.dilations for dy, dx in NEIGHBOURS]  # N pixel offsets
        # Published: float32 [sqrt2, 1, sqrt2, 1, 1, sqrt2, 1, sqrt2] * d for each dilation.
        unit = torch.tensor([math.sqrt(2) if dy and dx else 1.0 for dy, dx in NEIGHBOURS], dtype=torch.float32)
        self.register_buffer("distance", torch.cat([unit * d for d in self.dilations]), persistent=False)  # (N,)

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}, w_rgb={self.w_rgb}, w_pos={self.w_pos}"

    def shifted(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The N dilated 8-neighbour maps of x, replicate-padded at the borders: N views (B, C, h, w), no copies.

        ``shifted(x)[j][..., y, x] == x[..., clamp(y + dy_j), clamp(x + dx_j)]``; one pad by the largest dilation
        serves every dilation, because replicate padding is index clamping.
        """
        h, w = x.shape[-2:]
        p = max(self.dilations)
        xp = F.pad(x, [p] * 4, mode="replicate")
        return [xp[..., p + dy : p + dy + h, p + dx : p + dx + w] for dy, dx in self.offsets]

    def affinity(self, images: torch.Tensor) -> torch.Tensor:
        """Propagation weights (B, 1, N, h, w) of images (B, 3, h, w); each pixel's weights sum to 1 + w_pos."""
        diff = torch.stack([nb - images for nb in self.shifted(images)], dim=2)  # (B, 3, N, h, w) I_j - I
        # std over neighbours is shift-invariant: std_j(I_j - I) = std_j(I_j) (published: std of the neighbours)
        std = diff.std(dim=2, keepdim=True)  # (B, 3, 1, h, w), unbiased
        rgb = -((diff.abs() / (std + 1e-8) / self.w_rgb) ** 2)  # DESIGN §4 RGB affinity
        rgb = rgb.mean(dim=1, keepdim=True).softmax(dim=2)  # (B, 1, N, h, w)
        dist = self.distance.to(images.dtype)  # (N,) pixels
        pos = (-((dist / (dist.std() + 1e-8) / self.w_rgb) ** 2)).softmax(dim=0)  # DESIGN §4 positional affinity
        return rgb + self.w_pos * pos[:, None, None]

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Refine ``masks`` along ``images``.

        Shape:
            - images: (B, 3, h, w) float, any consistent scale (affinities are normalised by the local std).
            - masks: (B, C, h', w'), resized bilinearly (``align_corners=True``, as published) to (h, w).
            - output: (B, C, h, w) in the images' dtype.
        """
        if images.dim() != 4 or masks.dim() != 4 or images.shape[0] != masks.shape[0]:
            raise ValueError(
                f"images (B, 3, h, w) and masks (B, C, h', w') must share B; got {tuple(images.shape)} and "
                f"{tuple(masks.shape)}"
            )
        masks = F.interpolate(masks.to(images.dtype), size=images.shape[-2:], mode="bilinear", align_corners=True)
        aff = self.affinity(images)  # (B, 1, N, h, w)
        weights = aff.movedim(2, 0).contiguous().unbind(0)  # N x (B, 1, h, w), each contiguous
        for _ in range(self.num_iter):
            # masks = sum_j a[j] * masks_j, accumulated in place: O(B C h w) memory instead of N times that
            out = torch.zeros_like(masks)
            for nb, a in zip(self.shifted(masks), weights):
                out.addcmul_(nb, a)
            masks = out
        return masks


def refine_with_background(
    par: PAR,
    images: torch.Tensor,
    cams: torch.Tensor,
    tags: torch.Tensor,
    *,
    high_thre: float,
    low_thre: float,
    ignore_index: int = 255,
    box: torch.Tensor | None = None,
    down_scale: int = 2,
) -> torch.Tensor:
    """PAR-refined pseudo label with high/low background thresholds (DESIGN.md §4; ``refine_cams_with_bkg_v2``).

    For each threshold ``t`` in (high, low): a constant background channel ``t`` is put before the CAMs, the maps
    are resized (bilinear) to ``(H // down_scale, W // down_scale)``, only background and the image's tagged
    classes are kept and softmaxed, PAR refines them along the equally resized image, the result is upsampled
    (bilinear) to (H, W) and its argmax mapped back to class indices. Then:
    the high pass's class where it is foreground; ``ignore_index`` where it is background; 0 where both passes are
    background; ``ignore_index`` outside ``box``.

    All images and both thresholds share one PAR call: the classes of each image are zero-padded to the batch's
    largest tag count (PAR is linear and channel-independent, so padding changes nothing; padded channels are
    excluded from the argmax).

    Shape:
        - images: (B, 3, H, W) float in 0..1.
        - cams: (B, C, H, W) valid CAMs (already multiplied by tags), C = K - 1.
        - tags: (B, C) multi-hot.
        - box: (B, 4) long ``[h0, h1, w0, w1]`` or None (no box masking; the published code needs a box).
        - output: (B, H, W) long.
    """
    if cams.dim() != 4 or images.shape[0] != cams.shape[0] or images.shape[-2:] != cams.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and cams {tuple(cams.shape)} must be (B, *, H, W) alike")
    if tags.shape != cams.shape[:2]:
        raise ValueError(f"tags shape {tuple(tags.shape)} must be (B, C) = {tuple(cams.shape[:2])} like cams")
    b, _, h, w = images.shape
    small = (h // down_scale, w // down_scale)
    small_images = F.interpolate(images, size=small, mode="bilinear", align_corners=False)

    # Channel 0 = background, channel k = class k (cams channel k-1); keys[i] lists image i's kept channels.
    present = torch.cat([torch.ones_like(tags[:, :1], dtype=torch.bool), tags != 0], dim=1)  # (B, K)
    counts = present.sum(1)  # (B,) background + tagged classes
    kmax = int(counts.max())
    keys = torch.zeros(b, kmax, dtype=torch.long, device=cams.device)  # padded with 0 (masked out below)
    for i in range(b):
        keys[i, : counts[i]] = present[i].nonzero().flatten()

    # Both thresholds in one resize: [bkg_high, bkg_low, cams...] (interpolation is channel-independent).
    bkg = torch.tensor([high_thre, low_thre], dtype=cams.dtype, device=cams.device)
    with_bkg = torch.cat([bkg[None, :, None, None].expand(b, 2, h, w), cams], dim=1)  # (B, 2+C, H, W)
    with_bkg = F.interpolate(with_bkg, size=small, mode="bilinear", align_corners=False)  # (B, 2+C, h, w)
    valid = torch.arange(kmax, device=cams.device) < counts[:, None]  # (B, kmax)
    probs = []
    for t in (0, 1):  # high, low
        chans = torch.cat([with_bkg[:, t : t + 1], with_bkg[:, 2:]], dim=1)  # (B, K, h, w) channel k = class k
        sel = chans[torch.arange(b, device=cams.device)[:, None], keys]  # (B, kmax, h, w)
        sel = sel.masked_fill(~valid[:, :, None, None], float("-inf")).softmax(dim=1)  # padded -> exactly 0
        probs.append(sel)
    refined = par(small_images, torch.cat(probs, dim=1))  # (B, 2*kmax, h, w)
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)  # (B, 2*kmax, H, W)

    pad = ~valid[:, :, None, None]
    label_h, label_l = (
        keys.gather(1, part.masked_fill(pad, float("-inf")).argmax(dim=1).flatten(1)).view(b, h, w)
        for part in refined.split(kmax, dim=1)
    )
    label = label_h.masked_fill(label_h == 0, ignore_index)  # fg under low, bg under high -> ignore
    label = label.masked_fill((label_h == 0) & (label_l == 0), 0)  # bg under both thresholds
    if box is not None:
        label = label.masked_fill(~box_mask(box.to(label.device), (h, w)), ignore_index)
    return label
