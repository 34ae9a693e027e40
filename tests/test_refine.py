"""PAR and the background-threshold pseudo labels (seco_labels.method.refine; docs/design.md §4)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from seco_labels.method.refine import PAR, refine_with_background

X = 255


def reference_par(imgs, masks, dilations=(1, 2, 4, 8, 12, 24), num_iter=10, w_rgb=0.3, w_pos=0.01):
    """Straightforward PAR, written like the published model/PAR.py: one-hot 3x3 dilated convs per dilation."""
    kernel = torch.zeros(8, 1, 3, 3, dtype=imgs.dtype)
    for j, (r, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]):
        kernel[j, 0, r, c] = 1

    def neighbours(x):
        b, c, h, w = x.shape
        out = []
        for d in dilations:
            xp = F.pad(x, [d] * 4, mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
            out.append(F.conv2d(xp, kernel, dilation=d).view(b, c, 8, h, w))
        return torch.cat(out, dim=2)

    masks = F.interpolate(masks, size=imgs.shape[-2:], mode="bilinear", align_corners=True)
    b, _, h, w = imgs.shape
    nb = neighbours(imgs)
    unit = [math.sqrt(2), 1, math.sqrt(2), 1, 1, math.sqrt(2), 1, math.sqrt(2)]
    pos = torch.cat([torch.tensor(unit, dtype=torch.float32) * d for d in dilations]).to(imgs.dtype)
    pos = pos.view(1, 1, -1, 1, 1).repeat(b, 1, 1, h, w)
    aff = -((nb - imgs[:, :, None]).abs() / (nb.std(2, keepdim=True) + 1e-8) / w_rgb) ** 2
    pos_aff = -((pos / (pos.std(2, keepdim=True) + 1e-8) / w_rgb) ** 2)
    aff = aff.mean(1, keepdim=True).softmax(2) + w_pos * pos_aff.softmax(2)
    for _ in range(num_iter):
        masks = (neighbours(masks) * aff).sum(2)
    return masks


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------------------------------
# PAR
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gather", [False, True], ids=["per-neighbour", "gathered"])
@pytest.mark.parametrize("dilations,num_iter", [((1, 2, 4, 8, 12, 24), 3), ((1, 3), 2)])
def test_par_matches_reference(dilations, num_iter, gather) -> None:
    """Both forms of the propagation: the CPU's (one multiply-add per neighbour) and a GPU's (one gather)."""
    imgs = _rand(2, 3, 20, 27)  # smaller than the largest dilation: replicate padding clamps
    masks = _rand(2, 4, 10, 14, seed=1)  # resized to the image size inside
    par = PAR(dilations, num_iter)
    par.gather = gather
    assert par.gathers(imgs) is gather
    out = par(imgs, masks)
    assert out.shape == (2, 4, 20, 27) and out.dtype == torch.float64
    torch.testing.assert_close(out, reference_par(imgs, masks, dilations, num_iter), rtol=1e-12, atol=1e-12)


def test_par_forms_agree_in_fp32_and_the_cpu_takes_the_per_neighbour_one() -> None:
    imgs = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(5))
    masks = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(6)).softmax(1)
    par = PAR()
    assert not par.gathers(imgs)  # by device: a CPU tensor
    loop = par(imgs, masks)
    par.gather = True
    torch.testing.assert_close(par(imgs, masks), loop, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_par_on_a_gpu_gathers_and_equals_the_cpu_loop() -> None:
    imgs = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(5))
    masks = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(6)).softmax(1)
    par = PAR()
    cpu = par(imgs, masks)
    par = par.cuda()
    assert par.gathers(imgs.cuda())  # by device
    torch.testing.assert_close(par(imgs.cuda(), masks.cuda()).cpu(), cpu, rtol=1e-5, atol=1e-6)


def test_par_mass_per_pixel() -> None:
    imgs, masks = _rand(1, 3, 24, 24), _rand(1, 3, 24, 24, seed=2).softmax(1)
    out = PAR()(imgs, masks)
    # Weights sum to 1 + w_pos per pixel (published), so mass grows by 1.01 per step.
    torch.testing.assert_close(out.sum(1), torch.full((1, 24, 24), 1.01**10, dtype=torch.float64))
    out = PAR(w_pos=0.0)(imgs, masks)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 24, 24, dtype=torch.float64))
    assert out.min() >= masks.min() - 1e-12 and out.max() <= masks.max() + 1e-12  # convex combinations
    assert torch.equal(PAR(num_iter=0)(imgs, masks), masks)


def _halves() -> torch.Tensor:
    img = torch.full((1, 3, 32, 32), 0.2, dtype=torch.float64)
    img[..., 16:] = 0.8
    return img


def test_par_keeps_a_mask_edge_on_an_image_edge() -> None:
    masks = torch.zeros(1, 2, 32, 32, dtype=torch.float64)
    masks[:, 0, :, :16] = 1
    masks[:, 1, :, 16:] = 1
    out = PAR()(_halves(), masks)
    assert torch.equal(out.argmax(1), masks.argmax(1))
    assert (out[0, 0, :, 16:] / out[0].sum(0)[:, 16:]).max() < 0.02  # little leaks across (positional term)


def test_par_moves_a_misaligned_mask_edge_onto_the_image_edge() -> None:
    masks = torch.zeros(1, 2, 32, 32, dtype=torch.float64)
    masks[:, 0, :, :12] = 1  # 4 pixels left of the image edge
    masks[:, 1, :, 12:] = 1
    out = PAR()(_halves(), masks)
    expected = torch.zeros(1, 32, 32, dtype=torch.long)
    expected[..., 16:] = 1
    assert torch.equal(out.argmax(1), expected)


def test_par_spreads_a_blob_in_a_uniform_region_but_not_inside_edges() -> None:
    masks = torch.zeros(1, 2, 32, 32, dtype=torch.float64)
    masks[:, 0] = 1
    masks[:, 0, 14:18, 14:18] = 0
    masks[:, 1, 14:18, 14:18] = 1
    uniform = torch.full((1, 3, 32, 32), 0.5, dtype=torch.float64)
    out = PAR()(uniform, masks)
    assert out[0, 1].max() < 0.05  # diluted ...
    assert (out[0, 1] > 1e-4).sum() > 300  # ... over far more than its 16 pixels
    assert (out.argmax(1) == 1).sum() == 0
    outlined = uniform.clone()
    outlined[..., 14:18, 14:18] = 0.9  # the blob is a distinct object
    out = PAR()(outlined, masks)
    assert torch.equal(out.argmax(1), masks.argmax(1))


# --------------------------------------------------------------------------------------------------------------
# refine_with_background
# --------------------------------------------------------------------------------------------------------------


def reference_refine(par, images, cams, tags, high, low, ignore_index=X, box=None, down_scale=2):
    """Published refine_cams_with_bkg_v2, restated: one image and one threshold per PAR call."""
    b, _, h, w = images.shape
    small = (h // down_scale, w // down_scale)
    imgs = F.interpolate(images, size=small, mode="bilinear", align_corners=False)
    keys_all = torch.cat([torch.ones(b, 1), tags.float()], dim=1)
    out = torch.full((b, h, w), ignore_index, dtype=torch.long)
    for i in range(b):
        keys = keys_all[i].nonzero()[:, 0]
        labels = []
        for t in (high, low):
            with_bkg = torch.cat([torch.full((1, 1, h, w), t, dtype=cams.dtype), cams[i : i + 1]], dim=1)
            with_bkg = F.interpolate(with_bkg, size=small, mode="bilinear", align_corners=False)
            refined = par(imgs[i : i + 1], with_bkg[:, keys].softmax(1))
            refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
            labels.append(keys[refined.argmax(1)][0])
        lh, ll = labels
        label = lh.clone()
        label[lh == 0] = ignore_index
        label[(lh + ll) == 0] = 0
        if box is None:
            out[i] = label
        else:
            h0, h1, w0, w1 = box[i].tolist()
            out[i, h0:h1, w0:w1] = label[h0:h1, w0:w1]
    return out


def test_refine_batched_equals_separate_passes() -> None:
    b, c, h, w = 3, 6, 40, 52
    images = _rand(b, 3, h, w, seed=3).float()
    tags = torch.zeros(b, c)
    tags[0, [1, 4]] = 1  # two classes
    tags[1, [0, 2, 3, 5]] = 1  # four classes
    blobs = F.avg_pool2d(_rand(b, c, h // 4, w // 4, seed=4).float(), 3, 1, 1)
    cams = F.interpolate(blobs, size=(h, w), mode="bilinear", align_corners=False)
    cams = cams / cams.amax(dim=(-2, -1), keepdim=True) * tags[:, :, None, None]  # image 2: no tags
    par = PAR(num_iter=5)
    box = torch.tensor([[0, 40, 0, 52], [5, 30, 10, 52], [0, 20, 0, 20]])
    for bx in (None, box):
        got = refine_with_background(par, images, cams, tags, high_thre=0.7, low_thre=0.25, box=bx)
        want = reference_refine(par, images, cams, tags, 0.7, 0.25, box=bx)
        assert got.dtype == torch.long and torch.equal(got, want)
    assert set(got[0].unique().tolist()) <= {0, 2, 5, X} and (got[0] == 2).any()  # classes only from tags
    assert set(got[1].unique().tolist()) <= {0, 1, 3, 4, 6, X} and (got[1] == 3).any()
    assert torch.all(got[2, :20, :20] == 0) and torch.all(got[2, 20:] == X)  # no tags: all background in box
    assert torch.all(got[1, :5] == X) and torch.all(got[1, :, :10] == X)


def _load(root: Path, image_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    rgb = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
    gt = np.asarray(Image.open(root / "SegmentationClassAug" / f"{image_id}.png"))  # palette indices
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255, torch.from_numpy(gt.astype(np.int64))


def _iou(pred: torch.Tensor, gt: torch.Tensor, classes: list[int]) -> list[float]:
    valid = (gt != X) & (pred != X)
    return [float(((pred == k) & (gt == k) & valid).sum() / (((pred == k) | (gt == k)) & valid).sum()) for k in classes]


def test_refine_with_background_on_a_real_image(voc_root: Path) -> None:
    image, gt = _load(voc_root, "2011_000006")  # sofa (9), person (15), train (18)
    h, w = gt.shape
    present = [k for k in gt.unique().tolist() if k not in (0, X)]
    assert present == [9, 15, 18]
    tags = torch.zeros(1, 20)
    tags[0, [k - 1 for k in present]] = 1
    # Synthetic CAM: GT one-hot averaged to a ViT token grid (1/16) and upsampled, per-class max 1.
    onehot = torch.stack([(gt == k).float() for k in range(1, 21)])[None]  # (1, 20, H, W)
    tokens = F.adaptive_avg_pool2d(onehot, (h // 16, w // 16))
    cam = F.interpolate(tokens, size=(h, w), mode="bilinear", align_corners=False)
    cam = cam / (cam.amax(dim=(-2, -1), keepdim=True) + 1e-5)
    cam[0, 0] = 1.0  # an untagged class with a high CAM: must never appear

    label = refine_with_background(PAR(), image, cam, tags, high_thre=0.7, low_thre=0.25)[0]
    assert label.shape == (h, w) and label.dtype == torch.long
    assert set(label.unique().tolist()) <= {0, X, *present}
    ious = _iou(label, gt, [0, *present])
    assert np.mean(ious) > 0.8 and min(ious) > 0.6, ious
    # Ignored pixels are the band where the low threshold says foreground and the high one background: near
    # object boundaries (the synthetic CAM is blurred there), never deep inside the background.
    ignored = label == X
    assert 0 < ignored.float().mean() < 0.25
    fg = ((gt > 0) & (gt != X)).float()[None, None]
    near_fg = F.max_pool2d(fg, 2 * 16 + 1, stride=1, padding=16)[0, 0] > 0  # within 16 px of an object
    assert (ignored & ~near_fg).float().sum() / ignored.sum() < 0.02


def test_par_helpers_equal_the_torch_reductions_they_replace() -> None:
    """The two-pass neighbour std (fp32: within 1e-6 of torch.std, fp64: 1e-12) and the channel-loop argmax (equal,
    ties to the first channel, as torch.argmax)."""
    from seco_labels.method.refine import _first_argmax, _neighbour_std

    diff = torch.randn(2, 3, 48, 17, 23, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_neighbour_std(diff), diff.std(2, keepdim=True), rtol=1e-6, atol=0)
    d64 = diff.double() + 5.0  # an offset: what a one-pass sum of squares would lose digits to
    torch.testing.assert_close(_neighbour_std(d64), d64.std(2, keepdim=True), rtol=1e-12, atol=0)
    x = torch.randint(0, 3, (2, 5, 11, 13), generator=torch.Generator().manual_seed(4)).float()  # many ties
    x[:, 3] = float("-inf")  # a padded channel
    assert torch.equal(_first_argmax(x), x.argmax(1))
