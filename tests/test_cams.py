"""Multi-scale CAMs, CAM thresholds (seco_labels.method.cams) and patch decomposition (seco_labels.method.decompose;
docs/design.md §3-4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seco_labels.method.cams import UNCERTAIN, cam_to_label, cam_to_roi_mask, multi_scale_cams, multi_scale_class_cams
from seco_labels.method.decompose import decompose

SCALES = (1.0, 0.5, 0.75, 1.5)


class ConvCams:
    """Deterministic stand-in for a CAM network: fixed random convs, stride 4 ("tokens"); counts its calls."""

    def __init__(self, classes: int = 3, kernel: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(classes, 3, kernel, kernel, generator=g, dtype=torch.float64)
        self.w_aux = torch.randn(classes, 3, kernel, kernel, generator=g, dtype=torch.float64)
        self.pad = kernel // 2
        self.calls: list[int] = []  # batch size of each call

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(x.shape[0])
        cam = F.avg_pool2d(F.conv2d(x, self.w, padding=self.pad), 4)
        aux = F.avg_pool2d(F.conv2d(x, self.w_aux, padding=self.pad), 4)
        return cam, aux


def _images(b: int = 2, h: int = 32, w: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------------------------------
# multi_scale_cams
# --------------------------------------------------------------------------------------------------------------


def test_multi_scale_cams_shape_range_and_peak() -> None:
    fn = ConvCams()
    cam, aux = multi_scale_cams(fn, _images(), SCALES)
    for t in (cam, aux):
        assert t.shape == (2, 3, 32, 48)
        assert t.min() >= 0 and t.max() < 1
        assert torch.all(t.amin(dim=(-2, -1)) == 0)  # min-max normalised per (image, class)
        assert torch.all(t.amax(dim=(-2, -1)) > 0.999)  # every class present (random conv): peak ~1
    assert fn.calls == [4, 4, 4, 4]  # one call per scale, image + flip batched (2B)


def test_multi_scale_cams_matches_published_recipe() -> None:
    """Straightforward re-statement of the published multi_scale_cam2 (scale 1.0 first, then the others)."""
    fn, x = ConvCams(), _images()
    b, _, h, w = x.shape
    sums = []
    for idx in (0, 1):
        maps = []
        for s in SCALES:
            xs = x if s == 1.0 else F.interpolate(x, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
            c = fn(torch.cat([xs, xs.flip(-1)]))[idx]
            c = F.interpolate(c, size=(h, w), mode="bilinear", align_corners=False)
            maps.append(F.relu(torch.max(c[:b], c[b:].flip(-1))))
        c = torch.stack(maps).sum(0)
        c = c + F.adaptive_max_pool2d(-c, (1, 1))
        sums.append(c / (F.adaptive_max_pool2d(c, (1, 1)) + 1e-5))
    cam, aux = multi_scale_cams(fn, x, SCALES)
    torch.testing.assert_close(cam, sums[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(aux, sums[1], rtol=0, atol=1e-12)


def test_multi_scale_cams_flip_invariance() -> None:
    """A flip-equivariant cam_fn (1x1 conv, pooling windows that mirror onto each other) gives equivariant CAMs,
    and then the flip adds nothing: max(f(x), flip f(flip x)) = f(x)."""
    fn = ConvCams(kernel=1)
    x = _images(h=32, w=32)  # every scaled width (16, 24, 32, 48) is a multiple of the pooling stride 4
    cam, aux = multi_scale_cams(fn, x, SCALES)
    cam_f, aux_f = multi_scale_cams(fn, x.flip(-1), SCALES)
    torch.testing.assert_close(cam_f, cam.flip(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(aux_f, aux.flip(-1), rtol=0, atol=1e-12)
    cam_nf, aux_nf = multi_scale_cams(fn, x, SCALES, flip=False)
    torch.testing.assert_close(cam_nf, cam, rtol=0, atol=1e-12)
    torch.testing.assert_close(aux_nf, aux, rtol=0, atol=1e-12)


def test_multi_scale_cams_flip_makes_any_cam_fn_equivariant() -> None:
    fn, x = ConvCams(kernel=3), _images(h=32, w=32)  # a random 3x3 kernel is not mirror-symmetric
    c, _ = multi_scale_cams(fn, x, SCALES)
    c_f, _ = multi_scale_cams(fn, x.flip(-1), SCALES)
    torch.testing.assert_close(c_f, c.flip(-1), rtol=0, atol=1e-12)
    c, _ = multi_scale_cams(fn, x, SCALES, flip=False)
    c_f, _ = multi_scale_cams(fn, x.flip(-1), SCALES, flip=False)
    assert (c_f - c.flip(-1)).abs().max() > 1e-3


@pytest.mark.parametrize("flip", [True, False])
def test_multi_scale_cams_base_is_exact_and_saves_work(flip: bool) -> None:
    x = _images(b=3)
    plain = ConvCams()
    cam, aux = multi_scale_cams(plain, x, SCALES, flip=flip)
    reused = ConvCams()
    base = reused(x)  # the caller's own scale-1.0 forward
    reused.calls.clear()
    cam_b, aux_b = multi_scale_cams(reused, x, SCALES, flip=flip, base=base)
    assert torch.equal(cam, cam_b) and torch.equal(aux, aux_b)  # bit-identical
    assert sum(reused.calls) == sum(plain.calls) - 3  # B fewer images through cam_fn
    if flip:
        assert reused.calls == [3, 6, 6, 6]  # scale 1.0 runs only the flipped images
    else:
        assert plain.calls == [3, 3, 3, 3] and reused.calls == [3, 3, 3]  # one call fewer


def test_multi_scale_cams_shares_calls_between_equal_sizes_and_checks_args() -> None:
    fn = ConvCams()
    multi_scale_cams(fn, _images(), (0.5, 0.5, 1.0))
    assert fn.calls == [4, 4]
    with pytest.raises(ValueError, match="scales is empty"):
        multi_scale_cams(fn, _images(), ())
    with pytest.raises(ValueError, match="batch size"):
        multi_scale_cams(fn, _images(b=2), (1.0,), base=fn(_images(b=1)))


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("scales", [(1.0,), (1.0, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0), (0.5, 0.5, 1.0)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_multi_scale_class_cams_are_the_picked_planes_of_multi_scale_cams_bit_for_bit(flip, scales, layout) -> None:
    """The exporter's CAMs: only some channels of one output, yet every bit as multi_scale_cams gives them, in
    fp32 and whatever the raw CAMs' memory layout (a ViT's are channels-last; CPU resizing picks its kernel by
    layout and shape), with the same cam_fn calls; a batch without any class calls nothing."""
    fn = ConvCams(classes=5)
    fn.w, fn.w_aux = fn.w.float(), fn.w_aux.float()
    plain = fn.__call__

    def cam_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(t.contiguous(memory_format=layout) for t in plain(x))

    x = _images(b=3).float()
    full = multi_scale_cams(cam_fn, x, scales, flip=flip)
    calls, fn.calls = fn.calls, []
    classes = [torch.tensor([0, 3]), torch.tensor([], dtype=torch.long), torch.tensor([1, 2, 4])]
    for source in (0, 1):
        out = multi_scale_class_cams(cam_fn, x, scales, classes, flip=flip, source=source)
        assert [tuple(c.shape) for c in out] == [(2, 32, 48), (0, 32, 48), (3, 32, 48)]
        for i, c in enumerate(classes):
            assert torch.equal(out[i], full[source][i, c])
    assert fn.calls == calls * 2  # the same batches as multi_scale_cams, once per source here
    fn.calls = []
    none = multi_scale_class_cams(cam_fn, x, scales, [torch.tensor([], dtype=torch.long)] * 3, flip=flip)
    assert [tuple(c.shape) for c in none] == [(0, 32, 48)] * 3 and fn.calls == []
    with pytest.raises(ValueError, match="one per image"):
        multi_scale_class_cams(cam_fn, x, scales, classes[:2])


# --------------------------------------------------------------------------------------------------------------
# cam_to_label, cam_to_roi_mask
# --------------------------------------------------------------------------------------------------------------

# Class 1 and class 2 CAMs of one 3x3 image; thresholds bkg 0.5, high 0.7, low 0.25.
CAM = torch.tensor(
    [
        [[0.90, 0.10, 0.50], [0.30, 0.80, 0.00], [0.60, 0.20, 0.75]],
        [[0.20, 0.95, 0.10], [0.10, 0.40, 0.00], [0.65, 0.00, 0.20]],
    ]
)[None]  # (1, 2, 3, 3); top scores: [[.9 c1, .95 c2, .5 c1], [.3 c1, .8 c1, 0 tie->c1], [.65 c2, .2 c1, .75 c1]]
THR = dict(bkg_thre=0.5, high_thre=0.7, low_thre=0.25)
X = 255


def test_cam_to_label_table() -> None:
    both = torch.tensor([[1, 1]])
    _, label = cam_to_label(CAM, both, box=None, ignore_mid=False, **THR)
    assert label.tolist() == [[[1, 2, 0], [0, 1, 0], [2, 0, 1]]]  # <= bkg_thre -> 0
    valid, label = cam_to_label(CAM, both, box=None, **THR)
    assert torch.equal(valid, CAM)
    assert label.tolist() == [[[1, 2, X], [X, 1, 0], [X, 0, 1]]]  # (low, high] ignored, <= low -> 0
    box = torch.tensor([[0, 2, 1, 3]])  # rows 0-1, cols 1-2
    _, label = cam_to_label(CAM, both, box=box, **THR)
    assert label.tolist() == [[[X, 2, X], [X, 1, 0], [X, X, X]]]
    valid, label = cam_to_label(CAM, torch.tensor([[1.0, 0.0]]), box=None, **THR)  # class 2 not tagged
    assert torch.all(valid[0, 1] == 0) and torch.equal(valid[0, 0], CAM[0, 0])
    assert label.tolist() == [[[1, 0, X], [X, 1, 0], [X, 0, 1]]]
    _, label = cam_to_label(CAM, both, box=None, ignore_index=99, **THR)
    assert label.tolist() == [[[1, 2, 99], [99, 1, 0], [99, 0, 1]]]


def test_cam_to_roi_mask_table() -> None:
    both = torch.tensor([[1, 1]])
    roi = cam_to_roi_mask(CAM, both, box=None, **THR)
    assert roi.dtype == torch.long
    assert roi.tolist() == [[[1, 2, -1], [-1, 1, 0], [-1, 0, 1]]]
    roi = cam_to_roi_mask(CAM, both, box=torch.tensor([[0, 3, 0, 2]]), **THR)  # cols 0-1
    assert roi.tolist() == [[[1, 2, X], [-1, 1, X], [-1, 0, X]]]
    roi = cam_to_roi_mask(CAM.expand(2, -1, -1, -1), torch.tensor([[1, 1], [0, 1]]), box=None, **THR)
    assert roi[1].tolist() == [[0, 2, 0], [0, -1, 0], [-1, 0, 0]]  # image 2 keeps class 2 only


# --------------------------------------------------------------------------------------------------------------
# decompose
# --------------------------------------------------------------------------------------------------------------


def _view(b: int, h: int, w: int) -> torch.Tensor:
    """A view whose every value says where it came from: b * 1e6 + c * 1e5 + y * w + x."""
    y = torch.arange(h, dtype=torch.float64)[:, None] * w
    x = torch.arange(w, dtype=torch.float64)[None, :]
    c = torch.arange(3, dtype=torch.float64)[:, None, None] * 1e5
    return (torch.arange(b, dtype=torch.float64)[:, None, None, None] * 1e6 + c + y + x).expand(b, 3, h, w).clone()


def test_decompose_centres_on_uncertain_pixels() -> None:
    roi = torch.zeros(2, 40, 40, dtype=torch.long)
    roi[:, :, :6] = UNCERTAIN  # outside the inner region [8, 32): never a centre
    inner = [(9 + 2 * i, 10 + i) for i in range(12)]
    for y, x in inner:
        roi[0, y, x] = UNCERTAIN
    roi[1, 10:14, 10:14] = UNCERTAIN  # 16 uncertain pixels
    out = decompose([_view(2, 40, 40)], roi, num_crops=10, crop_size=16, generator=torch.Generator().manual_seed(0))
    assert out.centers.shape == (2, 10, 2) and out.centers.dtype == torch.long
    for i in range(2):
        cy, cx = out.centers[i].T
        assert torch.all(roi[i, cy, cx] == UNCERTAIN)
        assert len({(int(a), int(b)) for a, b in zip(cy, cx)}) == 10  # without replacement
    assert {(int(a), int(b)) for a, b in out.centers[0]} <= set(inner)


def test_decompose_falls_back_to_uniform_inner_region() -> None:
    roi = torch.zeros(1, 40, 50, dtype=torch.long)
    roi[0, 20, 20:23] = UNCERTAIN  # 3 < num_crops uncertain pixels
    roi[0, :, 40:] = 255
    out = decompose([_view(1, 40, 50)], roi, num_crops=10, crop_size=16, generator=torch.Generator().manual_seed(0))
    cy, cx = out.centers[0].T
    assert torch.all((cy >= 8) & (cy < 32) & (cx >= 8) & (cx < 42))
    assert len({(int(a), int(b)) for a, b in zip(cy, cx)}) == 10
    assert (roi[0, cy, cx] != UNCERTAIN).any()  # not restricted to the 3 uncertain pixels
    # The inner region of a 17x17 image holds one centre for a 16-pixel crop: sampled with replacement.
    out = decompose([_view(1, 17, 17)], torch.zeros(1, 17, 17, dtype=torch.long), num_crops=3, crop_size=16)
    assert out.centers.tolist() == [[[8, 8]] * 3]
    with pytest.raises(ValueError, match="no crop centre"):
        decompose([_view(1, 16, 16)], torch.zeros(1, 16, 16, dtype=torch.long), num_crops=3, crop_size=16)


def test_decompose_cuts_every_view_at_the_same_place() -> None:
    roi = torch.full((3, 36, 44), UNCERTAIN, dtype=torch.long)
    v1 = _view(3, 36, 44)
    out = decompose([v1, v1 + 1], roi, num_crops=5, crop_size=9, generator=torch.Generator().manual_seed(3))
    c1, c2 = out.crops
    assert c1.shape == c2.shape == (15, 3, 9, 9)
    assert torch.equal(c2, c1 + 1)
    for i in range(3):
        for j in range(5):
            y, x = (int(v) - 4 for v in out.centers[i, j])
            assert torch.equal(c1[i * 5 + j], v1[i, :, y : y + 9, x : x + 9])  # image-major order


def test_decompose_is_reproducible_and_leaves_global_rng_alone() -> None:
    roi = torch.full((2, 40, 40), UNCERTAIN, dtype=torch.long)
    views = [_view(2, 40, 40)]
    state = torch.get_rng_state()
    a = decompose(views, roi, num_crops=6, crop_size=8, generator=torch.Generator().manual_seed(7))
    b = decompose(views, roi, num_crops=6, crop_size=8, generator=torch.Generator().manual_seed(7))
    c = decompose(views, roi, num_crops=6, crop_size=8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.centers, b.centers) and torch.equal(a.crops[0], b.crops[0])
    assert not torch.equal(a.centers, c.centers)


def _one_crop_tag(roi: torch.Tensor, area_rule: str = "label_sum") -> tuple[int, int]:
    """Tag of the single 8x8 crop centred on the only uncertain pixel(s) of the inner region, and the global tag."""
    roi = roi[None]
    out = decompose([_view(1, *roi.shape[-2:])], roi, num_crops=1, crop_size=8, area_rule=area_rule)
    return int(out.crop_tags[0, 0]), int(out.global_tags[0])


def _roi_with_centre() -> torch.Tensor:
    roi = torch.zeros(24, 24, dtype=torch.long)
    roi[12, 12] = UNCERTAIN  # the crop: rows/cols [8, 16)
    return roi


def test_decompose_crop_tag_rules() -> None:
    roi = _roi_with_centre()
    assert _one_crop_tag(roi) == (0, -1)  # background crop (area 1/64); no confident class -> global -1
    roi[8:11, 8:15] = 3  # 21 pixels of class 3
    roi[0:2, 0:2] = 3
    assert _one_crop_tag(roi) == (3, 3)
    roi[14:16, 8:13] = 1  # plus 10 pixels of class 1: two classes
    assert _one_crop_tag(roi) == (-1, -1)
    roi[20:, 20:] = 255  # ignored pixels are no class
    roi[14:16, 8:13] = 255
    assert _one_crop_tag(roi) == (3, 3)


def test_decompose_single_class_image_fills_uncertain_pixels() -> None:
    roi = torch.zeros(24, 24, dtype=torch.long)
    roi[10:14, 10:15] = UNCERTAIN  # every crop centred here holds >= 16 uncertain pixels: area >= 0.25
    roi[0:3, 0:3] = 2  # the image's only confident class, outside every such crop
    for rule in ("label_sum", "fraction"):
        assert _one_crop_tag(roi, rule) == (2, 2)
    roi[21:24, 21:24] = 5  # a second class: uncertain pixels stay classless
    for rule in ("label_sum", "fraction"):
        assert _one_crop_tag(roi, rule) == (-1, -1)


def test_decompose_label_sum_quirk_vs_fraction() -> None:
    roi = _roi_with_centre()
    roi[8, 8:12] = 15  # 4 pixels of class 15 + 1 uncertain: label sum 61/64, fraction 5/64
    assert _one_crop_tag(roi, "label_sum") == (15, 15)
    assert _one_crop_tag(roi, "fraction") == (0, 15)
    roi[8, 8:12] = 1  # class 1: label sum 5/64 as well
    assert _one_crop_tag(roi, "label_sum") == (0, 1)
    roi[8:11, 8:16] = 1  # 24 + 1 pixels: fraction 25/64 > 0.2
    assert _one_crop_tag(roi, "fraction") == (1, 1)


def test_decompose_global_tags_batch() -> None:
    roi = torch.zeros(4, 20, 20, dtype=torch.long)
    roi[:, 10, 10] = UNCERTAIN
    roi[0, :4, :4] = 7  # one class
    roi[1, :4, :4] = 7  # two classes
    roi[1, -4:, -4:] = 9
    roi[2, :, 15:] = 255  # none (only background, uncertain and ignore)
    roi[3, 2:5, 2:5] = 12  # one class and ignore
    roi[3, :, :2] = 255
    out = decompose([_view(4, 20, 20)], roi, num_crops=2, crop_size=6, generator=torch.Generator().manual_seed(0))
    assert out.global_tags.tolist() == [7, -1, -1, 12]
    assert out.crop_tags.shape == (4, 2) and out.crop_tags.dtype == torch.long
    with pytest.raises(ValueError, match="area_rule"):
        decompose([_view(4, 20, 20)], roi, num_crops=2, crop_size=6, area_rule="area")


# -- sizes the ViT can cut into patches (issue 12, part 5) ------------------------------------------------------
def test_check_scales_accepts_what_the_published_code_trains_on() -> None:
    """The published ViT drops the pixels of a side that fill no whole patch: crop 224 with the VOC inference
    scales (0.75 -> 168, 1.25 -> 280, 1.75 -> 392 px) runs, and so does a crop of 200 (12.5 patches)."""
    from seco_labels.method.cams import check_scales

    check_scales((1.0, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0), 224, 16)
    check_scales((1.0, 0.5, 0.75, 1.5), 200, 16)
    check_scales((0.5,), 32, 16)  # exactly one patch


@pytest.mark.parametrize("scales, size, message", [
    ((1.0, 0.5), 30, "data.crop_size 30 at scale 0.5 gives 15 px, less than one of the backbone's 16 px patches; "
                     "set data.crop_size to 32 or more, or other cam.scales"),
    ((1.0, 0.75, 0.3), 50, "data.crop_size 50 at scale 0.3 gives 15 px, less than one of the backbone's 16 px "
                           "patches; set data.crop_size to 54 or more"),  # int(0.3 * 54) = 16, int(0.3 * 53) = 15
    ((1.0,), 8, "data.crop_size 8 at scale 1.0 gives 8 px"),
    ((1.0, 0.0), 448, "cam.scales [1.0, 0.0]: give one or more positive scales"),
])
def test_check_scales_refuses_a_side_below_one_patch_naming_the_smallest_size_that_works(scales, size, message):
    from seco_labels.errors import ConfigError
    from seco_labels.method.cams import check_scales

    with pytest.raises(ConfigError) as err:
        check_scales(scales, size, 16, size_option="data.crop_size", scales_option="cam.scales")
    assert message in str(err.value)
