"""Multi-scale CAMs and CAM thresholds (docs/design.md §3 step 1, §4); the patch decomposition that reads their ROI
masks is :mod:`seco_labels.method.decompose`.

Defaults reproduce the published SeCo code (github.com/zwyang6/SeCo, ``utils/camutils.py``: ``multi_scale_cam2``,
``cam_to_label``, ``cam_to_roi_mask``), quirks included and documented where they happen. Everything is
device-agnostic.

Label conventions: class maps are (B, H, W) long with 0 = background, k >= 1 = foreground class k (CAM channel
k - 1), :data:`UNCERTAIN` (-1) for uncertain pixels in a ROI mask, and ``ignore_index`` (255) for ignored pixels
(outside the image box of a padded crop). Boxes are (B, 4) long ``[h0, h1, w0, w1]`` in pixels, end-exclusive.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = [
    "UNCERTAIN",
    "multi_scale_cams",
    "multi_scale_class_cams",
    "check_scales",
    "cam_to_label",
    "cam_to_roi_mask",
    "box_mask",
]

UNCERTAIN = -1  #: ROI value of an uncertain pixel and tag of an uncertain crop/view (docs/design.md §3 steps 1, 3)

CamFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------------------------
# Multi-scale CAMs
# --------------------------------------------------------------------------------------------------------------


def _upsample_max_flip(raw: torch.Tensor, size: tuple[int, int], b: int, flip: bool,
                       planes: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(B or 2B, C, h, w) raw CAMs -> (B, C, H, W): upsample, max with the un-flipped flipped half, ReLU. With
    ``planes = (image_of, channel)``, each (P,), only those P planes -> (P, H, W), bit-identical to picking them
    from the whole result.

    Every plane is upsampled, and only then picked: CPU bilinear resizing has a vectorised kernel (for the
    channels-last CAMs of a ViT, among others) and a per-element one with different rounding, chosen by the
    input's shape and layout, so resizing the picked planes alone would differ in the last bit. The flip, max and
    ReLU (and everything after them) are elementwise and run on the picked planes only.
    """
    up = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)  # (nB, C, H, W)

    def half(offset: int) -> torch.Tensor:  # the images (offset 0) or their flips (offset b)
        return up[offset: offset + b] if planes is None else up[planes[0] + offset, planes[1]]

    out = half(0)
    if flip:
        out = torch.max(out, half(b).flip(-1))  # docs/design.md §4: max of image and flipped CAM
    return F.relu(out)


def _scaled_sizes(images: torch.Tensor, scales: Sequence[float]) -> list[tuple[int, int]]:
    """The resized (h, w) of each scale for images (B, 3, H, W): ``(int(s*H), int(s*W))``; checks the arguments."""
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if len(scales) == 0:
        raise ValueError("scales is empty; pass at least one scale, e.g. (1.0,)")
    h, w = images.shape[-2:]
    sizes = [(int(s * h), int(s * w)) for s in scales]
    for s, size in zip(scales, sizes):
        if min(size) < 1:
            raise ValueError(f"scale {s} resizes {h}x{w} images to {size}; use a larger scale")
    return sizes


def _resized(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """images resized (bilinear, ``align_corners=False``) to ``size``; the same tensor at its own size."""
    if size == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def _sum_and_normalise(maps: list[torch.Tensor]) -> torch.Tensor:
    """The scales' maps (each (..., H, W)) summed, then min-max normalised per map as published: ``cam - min``,
    then ``/ (max + 1e-5)`` (docs/design.md §4)."""
    cam = torch.stack(maps).sum(0)
    cam = cam - cam.amin(dim=(-2, -1), keepdim=True)  # published: cam + maxpool(-cam)
    return cam / (cam.amax(dim=(-2, -1), keepdim=True) + 1e-5)  # published epsilon, per (image, class)


@torch.no_grad()
def multi_scale_cams(
    cam_fn: CamFn,
    images: torch.Tensor,
    scales: Sequence[float],
    *,
    flip: bool = True,
    base: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale (and flipped) CAMs, min-max normalised per image and class (docs/design.md §4;
    published ``multi_scale_cam2``).

    For each scale ``s`` the images are resized (bilinear, ``align_corners=False``) to ``(int(s*H), int(s*W))``;
    the image and its horizontal flip go through ``cam_fn`` in one call (batch 2B); both CAMs are upsampled to
    (H, W), the flipped one is flipped back, and their elementwise max is ReLU'd. The scales' maps are summed and
    each (image, class) map is min-max normalised exactly as published: ``cam - min``, then ``/ (max + 1e-5)``,
    so values lie in [0, 1) and a present (non-constant) class peaks at ``max / (max + 1e-5)``, about 1.

    Calls to ``cam_fn``: one per distinct resized size (scales that round to the same size share one call and
    its result). Every call holds 2B images with ``flip`` and B without. With ``base`` and a scale of size
    (H, W), that scale's call holds only the B flipped images with ``flip``, and there is no call for it at all
    without ``flip``. Different sizes cannot share a call (a ViT's CAM depends on the token grid).

    Args:
        cam_fn: ``x (n, 3, h, w) -> (cam, cam_aux)``, raw CAMs (n, C, h', w') at token resolution, e.g.
            :meth:`seco_labels.models.SeCoNet.cams`. Must be deterministic for ``base`` to be exact.
        images: (B, 3, H, W) normalised images.
        scales: resize factors, e.g. ``(1.0, 0.5, 0.75, 1.5)``. Used as given: unlike the published code, which
            always adds scale 1.0 (and skips every 1.0 in ``scales``), a list without 1.0 has no scale 1.0.
        flip: also use the horizontal flip at every scale (published: always).
        base: optional ``(cam, cam_aux)``, each (B, C, h', w'), the raw CAMs of ``images`` at scale 1.0 unflipped
            that the caller already has (e.g. from its training forward). Gives the same result as without it
            (bit-identical when ``cam_fn`` is deterministic per sample); ignored when no scale resizes to (H, W).

    Returns:
        ``(cam, cam_aux)``, each (B, C, H, W) in [0, 1), for every class (not only the image's tags).

    Raises:
        ValueError: ``scales`` is empty, a scale resizes to zero pixels, or ``base`` has the wrong batch size.
    """
    sizes = _scaled_sizes(images, scales)
    b, _, h, w = images.shape
    if base is not None and (len(base) != 2 or any(t.shape[0] != b for t in base)):
        raise ValueError(f"base must be (cam, cam_aux), each with batch size {b} like images")

    per_size: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    cam_list: list[torch.Tensor] = []
    aux_list: list[torch.Tensor] = []
    for size in sizes:
        if size not in per_size:
            x = _resized(images, size)
            if base is not None and size == (h, w):
                raw_cam, raw_aux = (t.detach() for t in base)  # (B, C, h', w') each
                if flip:
                    f_cam, f_aux = cam_fn(x.flip(-1))
                    raw_cam, raw_aux = torch.cat([raw_cam, f_cam]), torch.cat([raw_aux, f_aux])  # (2B, C, h', w')
            else:
                raw_cam, raw_aux = cam_fn(torch.cat([x, x.flip(-1)]) if flip else x)  # (2B or B, C, h', w')
            per_size[size] = (
                _upsample_max_flip(raw_cam, (h, w), b, flip),
                _upsample_max_flip(raw_aux, (h, w), b, flip),
            )
        cam_list.append(per_size[size][0])
        aux_list.append(per_size[size][1])

    return _sum_and_normalise(cam_list), _sum_and_normalise(aux_list)  # (B, C, H, W) each


@torch.no_grad()
def multi_scale_class_cams(
    cam_fn: CamFn,
    images: torch.Tensor,
    scales: Sequence[float],
    classes: Sequence[torch.Tensor],
    *,
    flip: bool = True,
    source: int = 0,
) -> list[torch.Tensor]:
    """:func:`multi_scale_cams` of only the channels ``classes[i]`` of image ``i``, from only one of ``cam_fn``'s
    two outputs: the exporter's CAMs (docs/design.md §4), bit-identical to ``multi_scale_cams(...)[source][i,
    classes[i]]`` with the same ``cam_fn`` calls (same batches, so the network's numerics do not change).

    Every step after the network works on each (image, channel) plane alone, so only the picked planes are
    computed: of the other output nothing, of the untagged classes only the bilinear upsampling (see
    :func:`_upsample_max_flip`); the flip, max, ReLU, the sum over scales and the min-max normalisation run
    on (sum of k_i) planes instead of 2 x B x C (x 2 with the flip) per scale. That work on every plane of both
    outputs made the 1-scale export's CAM phase slower than a per-image loop on CPU. A batch whose images have no
    class at all needs no ``cam_fn`` call.

    Args:
        cam_fn, images, scales, flip: as in :func:`multi_scale_cams`; images (B, 3, H, W).
        classes: B long tensors, image i's CAM channels (class - 1), each (k_i,), on ``images``' device.
        source: which output of ``cam_fn``: 0 the final classifier's CAM, 1 the auxiliary one.

    Returns:
        B tensors, image i's (k_i, H, W) normalised CAMs in [0, 1) in the dtype ``cam_fn`` computes in.

    Raises:
        ValueError: as :func:`multi_scale_cams`, or ``classes`` not one per image.
    """
    sizes = _scaled_sizes(images, scales)
    b, _, h, w = images.shape
    if len(classes) != b:
        raise ValueError(f"got {len(classes)} class lists for a batch of {b} images; pass one per image")
    counts = [len(c) for c in classes]
    if sum(counts) == 0:  # nothing to compute: no image of the batch has a class
        return [images.new_zeros(0, h, w) for _ in range(b)]
    image_of = torch.repeat_interleave(torch.arange(b, device=images.device),
                                       torch.tensor(counts, device=images.device),
                                       output_size=sum(counts))  # (P,) image of each plane; no device sync
    channel = torch.cat(list(classes)).long()  # (P,)

    per_size: dict[tuple[int, int], torch.Tensor] = {}
    maps: list[torch.Tensor] = []
    for size in sizes:
        if size not in per_size:
            x = _resized(images, size)
            raw = cam_fn(torch.cat([x, x.flip(-1)]) if flip else x)[source]  # (2B or B, C, h', w')
            per_size[size] = _upsample_max_flip(raw, (h, w), b, flip, (image_of, channel))  # (P, H, W)
        maps.append(per_size[size])

    return list(_sum_and_normalise(maps).split(counts))  # (P, H, W): the same ops as multi_scale_cams


# --------------------------------------------------------------------------------------------------------------
# Thresholds: labels and ROI masks
# --------------------------------------------------------------------------------------------------------------


def box_mask(box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 4) long ``[h0, h1, w0, w1]`` (end-exclusive pixels) -> (B, H, W) bool, True inside the box."""
    if box.dim() != 2 or box.shape[1] != 4:
        raise ValueError(f"box must be (B, 4) [h0, h1, w0, w1], got shape {tuple(box.shape)}")
    h, w = size
    ys = torch.arange(h, device=box.device)
    xs = torch.arange(w, device=box.device)
    rows = (ys >= box[:, 0:1]) & (ys < box[:, 1:2])  # (B, H)
    cols = (xs >= box[:, 2:3]) & (xs < box[:, 3:4])  # (B, W)
    return rows[:, :, None] & cols[:, None, :]


def _threshold(
    cam: torch.Tensor,
    tags: torch.Tensor,
    box: torch.Tensor | None,
    bkg_thre: float,
    high_thre: float,
    low_thre: float,
    mid_value: int,
    ignore_index: int,
    ignore_mid: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if cam.dim() != 4:
        raise ValueError(f"cam must be (B, C, H, W), got shape {tuple(cam.shape)}")
    if tags.shape != cam.shape[:2]:
        raise ValueError(f"tags shape {tuple(tags.shape)} must be (B, C) = {tuple(cam.shape[:2])} like cam")
    valid_cam = cam * tags[:, :, None, None].to(cam.dtype)  # (B, C, H, W), untagged classes zeroed
    score, label = valid_cam.max(dim=1)  # (B, H, W) top tagged score and its channel
    label = label + 1  # channel c is class c + 1
    # Published order of assignments, kept so that unusual threshold orders behave the same; masked_fill_, not
    # label[mask] = v, which on a GPU waits for the mask's nonzero count
    label.masked_fill_(score <= bkg_thre, 0)
    if ignore_mid:
        label.masked_fill_(score <= high_thre, mid_value)  # docs/design.md §4: between the thresholds -> uncertain
        label.masked_fill_(score <= low_thre, 0)
    if box is not None:
        label = label.masked_fill(~box_mask(box.to(label.device), label.shape[-2:]), ignore_index)
    return valid_cam, label


def cam_to_label(
    cam: torch.Tensor,
    tags: torch.Tensor,
    *,
    box: torch.Tensor | None = None,
    bkg_thre: float,
    high_thre: float,
    low_thre: float,
    ignore_index: int = 255,
    ignore_mid: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo label of normalised CAMs by thresholds (published ``cam_to_label``).

    ``valid_cam = cam * tags``; label = argmax channel + 1; top score ``<= bkg_thre`` -> 0. With ``ignore_mid``:
    top score ``<= high_thre`` -> ``ignore_index``, then ``<= low_thre`` -> 0 (so with the usual
    low < bkg < high, ``bkg_thre`` has no effect). Outside ``box`` -> ``ignore_index``.

    The published code skips ``ignore_mid`` (and returns only the label) when there is no box; here ``box=None``
    means only "no box masking".

    Shape:
        - cam: (B, C, H, W) normalised CAMs, C = K - 1 foreground classes.
        - tags: (B, C) multi-hot image-level labels (any dtype).
        - box: (B, 4) long ``[h0, h1, w0, w1]`` or None.
        - output: ``(valid_cam (B, C, H, W), label (B, H, W) long)``.
    """
    return _threshold(cam, tags, box, bkg_thre, high_thre, low_thre, ignore_index, ignore_index, ignore_mid)


def cam_to_roi_mask(
    cam: torch.Tensor,
    tags: torch.Tensor,
    *,
    box: torch.Tensor | None = None,
    bkg_thre: float,
    high_thre: float,
    low_thre: float,
    ignore_index: int = 255,
) -> torch.Tensor:
    """ROI mask for patch decomposition (docs/design.md §3 step 1; published ``cam_to_roi_mask``).

    Like :func:`cam_to_label` with ``ignore_mid``, but uncertain pixels (``low_thre < score <= high_thre``) get
    :data:`UNCERTAIN` (-1): 0 background, k confident class k, -1 uncertain, ``ignore_index`` outside ``box``.

    Shape:
        - cam: (B, C, H, W) normalised CAMs; tags: (B, C); box: (B, 4) long or None.
        - output: (B, H, W) long.
    """
    return _threshold(cam, tags, box, bkg_thre, high_thre, low_thre, UNCERTAIN, ignore_index, True)[1]


# --------------------------------------------------------------------------------------------------------------
# Scales the backbone can read
# --------------------------------------------------------------------------------------------------------------


def _smallest_size(scales: Sequence[float], patch: int) -> int:
    """The smallest size whose every ``int(s * size)`` (scales > 0) is at least one ``patch``."""
    size = math.ceil(patch / min(scales))
    while any(int(s * size) < patch for s in scales):  # float truncation can leave int(s * size) one short
        size += 1
    return size


def check_scales(scales: Sequence[float], size: int, patch: int, *, size_option: str = "--input-size",
                 scales_option: str = "--scales") -> None:
    """Every ``scale * size`` (pixels, truncated) must hold at least one ``patch`` of the ViT.

    Any other size is accepted, as the published code accepts it: its patch embedding is a stride-``patch``
    convolution that drops the last ``side % patch`` pixels (so does :class:`~seco_labels.models.ViTEncoder`),
    and the token-grid CAM is upsampled to the whole input (``multi_scale_cams``), e.g. crop 224 at scale 0.75:
    168 px, 10 x 10 tokens covering 160 px, CAM stretched over 224 px. A side below one patch gives no token.

    ``size_option``/``scales_option`` name the options that set them (``data.crop_size``, ``cam.scales`` in
    training), so the message says what to change.

    Raises:
        ConfigError: a scale that is not positive, or the smallest scale giving less than one patch (names the
            smallest size that works).
    """
    scales = list(dict.fromkeys(scales))  # each scale once in the message
    if not scales or min(scales) <= 0:
        raise ConfigError(f"{scales_option} {scales}: give one or more positive scales")
    s = min(scales)
    if int(s * size) < patch:
        raise ConfigError(
            f"{size_option} {size} at scale {s} gives {int(s * size)} px, less than one of the backbone's {patch} "
            f"px patches; set {size_option} to {_smallest_size(scales, patch)} or more, or other {scales_option}"
        )
