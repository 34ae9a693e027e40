"""Pixel-adaptive refinement (PAR) and background thresholds for pseudo masks (docs/design.md §4).

Defaults reproduce the published SeCo/ToCo code (``model/PAR.py``; ``refine_cams_with_bkg_v2`` in
``utils/camutils.py``). Everything is device-agnostic and batched: one PAR call per batch covers every image and
both background thresholds. Labels: 0 background, k >= 1 class k, ``ignore_index`` (255) ignored.

The optional dense CRF (:func:`dense_crf`, :func:`crf_refine_mask`; docs/design.md §4) runs on the CPU in NumPy through
``pydensecrf2`` (``pip install -e ".[crf]"``), imported only when called, so the package works without it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CrfUnavailableError
from ..runtime.precision import in_fp32
from .cams import box_mask

__all__ = ["PAR", "refine_with_background", "dense_crf", "crf_refine_mask", "require_crf"]

#: 8-neighbour unit offsets (dy, dx), in the published kernel order (row-major, centre skipped).
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _neighbour_std(diff: torch.Tensor) -> torch.Tensor:
    """Unbiased std over dim 2 of (B, C, N, h, w) -> (B, C, 1, h, w), by two passes (mean, then squared deviations).

    ``torch.std`` over a middle dimension runs a strided Welford reduction, 5x slower on a CPU (0.22 vs 0.04 s for
    the 48 neighbours of two 320x240 images, one thread) and the largest part of PAR's time; the two-pass result
    differs from it by at most ~3e-7 relative in fp32 (exact in fp64 to ~1e-15).
    """
    n = diff.shape[2]
    mean = diff.mean(dim=2)  # (B, C, h, w)
    squares, dev = torch.zeros_like(mean), torch.empty_like(mean)
    for j in range(n):  # per neighbour: (B, C, h, w) buffers, no (B, C, N, h, w) temporary
        torch.sub(diff[:, :, j], mean, out=dev)
        squares.addcmul_(dev, dev)
    return squares.div_(n - 1).sqrt_().unsqueeze(2)


def _first_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(dim=1)`` of (B, K, H, W) -> (B, H, W) long, the first maximum on ties, as torch's: a loop over the
    few channels of a pseudo label is 3-4x faster on a CPU than the strided reduction over dim 1."""
    best, index = x[:, 0].clone(), x.new_zeros(x[:, 0].shape, dtype=torch.long)
    for k in range(1, x.shape[1]):
        better = x[:, k] > best
        torch.where(better, x[:, k], best, out=best)
        index.masked_fill_(better, k)
    return index


class PAR(nn.Module):
    """Pixel-adaptive refinement (ToCo/SeCo; docs/design.md §4): propagate masks along local RGB + position affinities.

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
        self._positional: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self._index: dict[tuple[int, int, torch.device], torch.Tensor] = {}  # neighbours' gather index by size
        #: the form of the propagation: True, all N neighbours in one gather per step (a few operations: a GPU's
        #: form); False, one in-place multiply-add per neighbour (no N-fold temporaries: 2-10x faster on a CPU);
        #: None, by device (:meth:`gathers`). Equal to float rounding (~4e-6 relative in fp32).
        self.gather: bool | None = None

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}, w_rgb={self.w_rgb}, w_pos={self.w_pos}"

    def neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """The N dilated 8-neighbours of every pixel of x (B, C, h, w), replicate-padded at the borders:
        (B, C, N, h * w), ``out[..., j, y * w + x] == x[..., clamp(y + dy_j), clamp(x + dx_j)]``.

        One pad by the largest dilation serves every dilation (replicate padding is index clamping), and one gather
        takes all N neighbours: a few operations for any N, instead of one per neighbour.
        """
        h, w = x.shape[-2:]
        p = max(self.dilations)
        return F.pad(x, [p] * 4, mode="replicate").flatten(2)[:, :, self._gather_index(h, w, x.device)]

    def _gather_index(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(N, h * w) positions in the flattened (h + 2p, w + 2p) padded plane of each pixel's N neighbours."""
        key = (h, w, device)
        if key not in self._index:
            p = max(self.dilations)
            dy, dx = torch.tensor(self.offsets, device=device).T[:, :, None, None]  # (N, 1, 1) each
            rows = torch.arange(h, device=device)[:, None] + p + dy  # (N, h, 1)
            cols = torch.arange(w, device=device)[None, :] + p + dx  # (N, 1, w)
            self._index[key] = (rows * (w + 2 * p) + cols).flatten(1)
        return self._index[key]

    def shifted(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The N dilated 8-neighbour maps of x, replicate-padded at the borders: N views (B, C, h, w), no copies
        (the per-neighbour form of :meth:`neighbours`)."""
        h, w = x.shape[-2:]
        p = max(self.dilations)
        xp = F.pad(x, [p] * 4, mode="replicate")
        return [xp[..., p + dy : p + dy + h, p + dx : p + dx + w] for dy, dx in self.offsets]

    def gathers(self, x: torch.Tensor) -> bool:
        """Whether PAR runs on ``x`` in the gathered form (:attr:`gather`; by default everywhere but on a CPU)."""
        return self.gather if self.gather is not None else x.device.type != "cpu"

    def affinity(self, images: torch.Tensor) -> torch.Tensor:
        """Propagation weights (B, 1, N, h, w) of images (B, 3, h, w); each pixel's weights sum to 1 + w_pos."""
        b, c, h, w = images.shape
        if self.gathers(images):
            diff = self.neighbours(images).sub_(images.flatten(2)[:, :, None]).view(b, c, -1, h, w)
            std = diff.std(dim=2, keepdim=True)
        else:  # one preallocated buffer updated in place: no stack copy, no full-size temporaries
            nbs = self.shifted(images)
            diff = images.new_empty(b, c, len(nbs), h, w)  # (B, 3, N, h, w) I_j - I
            for j, nb in enumerate(nbs):
                torch.sub(nb, images, out=diff[:, :, j])
            std = _neighbour_std(diff)  # (B, 3, 1, h, w), unbiased
        # std over neighbours is shift-invariant: std_j(I_j - I) = std_j(I_j) (published: std of the neighbours)
        rgb = diff.abs_().div_(std + 1e-8).div_(self.w_rgb).pow_(2).neg_()  # docs/design.md §4 RGB affinity
        rgb = rgb.mean(dim=1, keepdim=True).softmax(dim=2)  # (B, 1, N, h, w)
        return rgb.add_(self.w_pos * self.positional(images)[:, None, None])

    def positional(self, like: torch.Tensor) -> torch.Tensor:
        """The positional affinity (N,) in ``like``'s dtype and device (docs/design.md §4): the same for every
        pixel and image, so computed once for each dtype and device."""
        key = (like.dtype, like.device)
        if key not in self._positional:
            dist = self.distance.to(like.device, like.dtype)
            self._positional[key] = (-((dist / (dist.std() + 1e-8) / self.w_rgb) ** 2)).softmax(dim=0)
        return self._positional[key]

    @in_fp32
    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Refine ``masks`` along ``images``.

        Shape:
            - images: (B, 3, h, w) float, any consistent scale (affinities are normalised by the local std).
            - masks: (B, C, h', w'), resized bilinearly (``align_corners=True``, as published) to (h, w).
            - output: (B, C, h, w) in the images' dtype, fp32 for fp16/bf16 images (computed in fp32 with
              autocast off: ``std + 1e-8`` is 0 in fp16 and a flat region would give NaN).
        """
        if images.dim() != 4 or masks.dim() != 4 or images.shape[0] != masks.shape[0]:
            raise ValueError(
                f"images (B, 3, h, w) and masks (B, C, h', w') must share B; got {tuple(images.shape)} and "
                f"{tuple(masks.shape)}"
            )
        masks = F.interpolate(masks.to(images.dtype), size=images.shape[-2:], mode="bilinear", align_corners=True)
        if self.num_iter == 0:
            return masks
        aff = self.affinity(images)  # (B, 1, N, h, w)
        b, c, h, w = masks.shape
        if self.gathers(masks):  # docs/design.md §4: masks = sum_j a[j] * masks_j, all N neighbours in one gather
            weights = aff.flatten(3)  # (B, 1, N, hw)
            for _ in range(self.num_iter):
                masks = (self.neighbours(masks) * weights).sum(dim=2).view(b, c, h, w)
            return masks
        # the same sum accumulated in place, one neighbour at a time; the padded input and the output buffers are
        # reused by every iteration: O(B C h w) memory instead of N times that, and no allocation per step
        weights = aff.movedim(2, 0).contiguous().unbind(0)  # N x (B, 1, h, w), each contiguous
        p = max(self.dilations)
        padded = F.pad(masks, [p] * 4, mode="replicate")
        views = [padded[..., p + dy : p + dy + h, p + dx : p + dx + w] for dy, dx in self.offsets]
        out = torch.empty_like(masks)
        for step in range(self.num_iter):
            out.zero_()
            for nb, a in zip(views, weights):
                out.addcmul_(nb, a)
            if step + 1 < self.num_iter:
                padded.copy_(F.pad(out, [p] * 4, mode="replicate"))
        return out


@in_fp32
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
    """PAR-refined pseudo label with high/low background thresholds (docs/design.md §4; ``refine_cams_with_bkg_v2``).

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
    kmax = int(counts.max())  # the one host read here: PAR's channels
    valid = torch.arange(kmax, device=cams.device) < counts[:, None]  # (B, kmax)
    # each image's kept channels in ascending order (a stable sort puts the present ones first), padded with 0
    # (masked out below)
    keys = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices[:, :kmax].masked_fill(~valid, 0)
    # Only the tagged channels are resized (interpolation is channel-independent, so picking first is exact):
    # [bkg_high, bkg_low, class keys[1:]...]; padded slots repeat channel 0 and are masked out below.
    fg = cams[torch.arange(b, device=cams.device)[:, None], (keys[:, 1:] - 1).clamp(min=0)]  # (B, kmax-1, H, W)
    bkg = torch.tensor([high_thre, low_thre], dtype=cams.dtype, device=cams.device)
    with_bkg = torch.cat([bkg[None, :, None, None].expand(b, 2, h, w), fg], dim=1)  # (B, 1+kmax, H, W)
    with_bkg = F.interpolate(with_bkg, size=small, mode="bilinear", align_corners=False)  # (B, 1+kmax, h, w)
    probs = []
    for t in (0, 1):  # high, low
        sel = torch.cat([with_bkg[:, t : t + 1], with_bkg[:, 2:]], dim=1)  # (B, kmax, h, w) in keys order
        probs.append(sel.masked_fill(~valid[:, :, None, None], float("-inf")).softmax(dim=1))  # padded -> 0
    refined = par(small_images, torch.cat(probs, dim=1))  # (B, 2*kmax, h, w)
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)  # (B, 2*kmax, H, W)

    pad = ~valid[:, :, None, None]
    label_h, label_l = (
        keys.gather(1, _first_argmax(part.masked_fill(pad, float("-inf"))).flatten(1)).view(b, h, w)
        for part in refined.split(kmax, dim=1)
    )
    label = label_h.masked_fill(label_h == 0, ignore_index)  # fg under low, bg under high -> ignore
    label = label.masked_fill((label_h == 0) & (label_l == 0), 0)  # bg under both thresholds
    if box is not None:
        label = label.masked_fill(~box_mask(box.to(label.device), (h, w)), ignore_index)
    return label


def require_crf():
    """``(pydensecrf.densecrf, pydensecrf.utils)``, imported on first use so the CRF stays an optional extra."""
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as dcrf_utils
    except ImportError as err:
        raise CrfUnavailableError(
            "dense-CRF refinement needs the optional package pydensecrf2, which is not installed; "
            'install it with: pip install -e ".[crf]" in your clone of seco_labels (it builds from source and '
            "needs a C++ compiler)"
        ) from err
    return dcrf, dcrf_utils


def _check_image(image: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    """``image`` as a C-contiguous (H, W, 3) uint8 array, the only layout pydensecrf's bilateral kernel reads."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != tuple(hw):
        raise ValueError(
            f"image must be (H, W, 3) uint8 RGB with (H, W) = {tuple(hw)}; got {image.shape} {image.dtype}"
        )
    return np.ascontiguousarray(image)


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    *,
    iters: int = 10,
    pos_xy_std: float = 1.0,
    pos_w: float = 1.0,
    bi_xy_std: float = 121.0,
    bi_rgb_std: float = 5.0,
    bi_w: float = 4.0,
) -> np.ndarray:
    """Refine class probabilities with a fully connected CRF (Krähenbühl & Koltun 2011; mean-field inference).

    Unary ``-log(max(probs, 1e-5))``; pairwise Potts terms: a Gaussian kernel over position (std ``pos_xy_std``
    pixels, weight ``pos_w``) and a bilateral kernel over position and colour (std ``bi_xy_std`` pixels and
    ``bi_rgb_std`` intensity levels of 0..255, weight ``bi_w``). Runs on the CPU: about 0.5 s for a 500x375 image
    with 3 classes, 2-3 s for 640x480 with 21 classes (2-core machine); pass only the classes that can occur.

    Shape:
        - image: (H, W, 3) uint8 RGB, 0..255.
        - probs: (C, H, W) float class probabilities summing to 1 over C (C >= 1).
        - output: (C, H, W) float32 refined probabilities; each pixel sums to 1 over C.

    Raises:
        CrfUnavailableError: pydensecrf2 is not installed (``pip install -e ".[crf]"``).
        ValueError: shapes or dtypes do not match the above, or ``iters < 0``.
    """
    # Defaults: published SeCo/ToCo segmentation post-processing (tools/infer_seg_voc.py DenseCRF(iter_max=10,
    # pos_xy_std=1, pos_w=1, bi_xy_std=121, bi_rgb_std=5, bi_w=4), zwyang6/SeCo 202357f; utils/dcrf.py).
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"probs must be (C, H, W) class probabilities; got shape {probs.shape}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    c, h, w = probs.shape
    image = _check_image(image, (h, w))
    dcrf, dcrf_utils = require_crf()
    unary = np.ascontiguousarray(dcrf_utils.unary_from_softmax(probs.astype(np.float32)))  # (C, H*W)
    return _mean_field(dcrf, unary, image, iters, pos_xy_std, pos_w, bi_xy_std, bi_rgb_std, bi_w)


def _mean_field(dcrf, unary: np.ndarray, image: np.ndarray, iters: int, pos_xy_std: float, pos_w: float,
                bi_xy_std: float, bi_rgb_std: float, bi_w: float) -> np.ndarray:
    """Mean-field inference of a dense CRF: unary (C, H*W) energies, Gaussian + bilateral Potts kernels on the
    (H, W, 3) uint8 image; returns (C, H, W) float32 probabilities."""
    c = unary.shape[0]
    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, c)  # pydensecrf takes (width, height, labels)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=image, compat=bi_w)
    q = d.inference(int(iters))  # (C, H*W) Eigen matrix, softmax-normalised per pixel
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def crf_refine_mask(
    image: np.ndarray,
    mask: np.ndarray,
    num_classes: int,
    *,
    ignore_index: int = 255,
    gt_prob: float = 0.7,
    iters: int = 10,
    pos_xy_std: float = 3.0,
    pos_w: float = 3.0,
    bi_xy_std: float = 50.0,
    bi_rgb_std: float = 5.0,
    bi_w: float = 10.0,
) -> np.ndarray:
    """Refine a hard pseudo mask with a dense CRF whose unary comes from the labels (``crf_inference_label``).

    Only the classes present in ``mask`` (ignoring ``ignore_index``) take part: a labelled pixel has probability
    ``gt_prob`` for its label and ``(1 - gt_prob) / (n - 1)`` for each of the other ``n - 1`` present classes, so
    the CRF can move labels between present classes but never invents an absent one. Pixels at ``ignore_index``
    get a uniform unary (no evidence) and stay ``ignore_index`` in the output: the CRF is not trusted to fill regions
    the pseudo label deliberately left undecided. With fewer than two present classes there is nothing to choose
    between and a copy of ``mask`` is returned. Kernel parameters as in :func:`dense_crf` (pixels, 0..255 levels).

    Shape:
        - image: (H, W, 3) uint8 RGB, 0..255.
        - mask: (H, W) integer labels in 0..num_classes-1 or ``ignore_index``.
        - output: (H, W) uint8, same label space.

    Raises:
        CrfUnavailableError: pydensecrf2 is not installed (``pip install -e ".[crf]"``).
        ValueError: shapes do not match, a label is outside 0..num_classes-1 and not ``ignore_index``, or
            ``gt_prob`` is not in (0, 1).
    """
    # Defaults: published label CRF, utils/dcrf.py crf_inference_label (t=10, gt_prob=0.7, Gaussian sxy=3 compat=3,
    # bilateral sxy=50 srgb=5 compat=10), zwyang6/SeCo 202357f.
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) labels; got shape {mask.shape}")
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    image = _check_image(image, mask.shape)
    labelled = mask != ignore_index
    present = np.unique(mask[labelled])  # sorted class ids
    if present.size and (present.min() < 0 or present.max() >= num_classes):
        bad = present[(present < 0) | (present >= num_classes)]
        raise ValueError(f"mask has labels {bad.tolist()} outside 0..{num_classes - 1} (ignore_index={ignore_index})")
    dcrf, dcrf_utils = require_crf()
    out = mask.astype(np.uint8)  # a copy
    n = present.size
    if n < 2:
        return out
    h, w = mask.shape
    # Compact labels for pydensecrf's zero_unsure mode: 0 = ignore (uniform unary), i + 1 = i-th present class.
    compact = np.zeros((h, w), dtype=np.int64)
    compact[labelled] = np.searchsorted(present, mask[labelled]) + 1
    unary = np.ascontiguousarray(dcrf_utils.unary_from_labels(compact, n, gt_prob=gt_prob, zero_unsure=True))
    q = _mean_field(dcrf, unary, image, iters, pos_xy_std, pos_w, bi_xy_std, bi_rgb_std, bi_w)  # (n, H, W)
    out[labelled] = present[q.argmax(axis=0)[labelled]]  # ignore pixels keep ignore_index
    return out
