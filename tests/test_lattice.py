"""The permutohedral-lattice filter against the published rloss extension's output and the exact Gaussian."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_DATA, VOC_DEMO  # tests/ is on sys.path (pytest prepend mode)
from PIL import Image

from seco_labels.method.energy import dense_gaussian_filter, energy_features
from seco_labels.method.lattice import PermutohedralLattice, permutohedral_filter

REFERENCE = TEST_DATA / "rloss_lattice_reference.npz"


def _demo_images(n: int, size: tuple[int, int]) -> torch.Tensor:
    """The first n demo images resized to size (W, H): (n, 3, H, W) float RGB 0..255."""
    files = sorted((Path(VOC_DEMO) / "JPEGImages").glob("*.jpg"))[:n]
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize(size), dtype=np.float32))
                        .permute(2, 0, 1) for f in files])


def test_matches_the_published_rloss_filter():
    # The reference is the output of the compiled rloss bilateralfilter_batch (the filter the published
    # DenseEnergyLoss calls) on two real 20x24 images and 3 value channels, at the published sigmas for a
    # half-resolution crop (sigma_rgb 15, sigma_xy 100 * 0.5): see tests/data/README.md.
    ref = np.load(REFERENCE)
    image, values, expected = ref["image"], ref["values"], ref["rloss"]
    b, k, h, w = values.shape
    feats = energy_features(torch.from_numpy(image).float(), float(ref["sigma_rgb"]), float(ref["sigma_xy"]))
    out = permutohedral_filter(feats, torch.from_numpy(values).reshape(b, k, h * w)).reshape(b, k, h, w)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(32, 24), (56, 56)])
def test_low_bias_against_the_exact_gaussian_on_real_images(size):
    # The lattice is unnormalised: on real images it returns about 0.6x the exact dense sum (0.54-0.69 over
    # the 5-95% range of pixels at a 448 crop, docs/algorithm.md); the published loss strength includes this.
    feats = energy_features(_demo_images(2, size), 15.0, 50.0)
    values = torch.ones(2, 1, feats.shape[2])
    ratio = (permutohedral_filter(feats, values) / dense_gaussian_filter(feats, values)).flatten()
    assert 0.5 < ratio.median() < 0.7
    assert ratio.quantile(0.05) > 0.35 and ratio.quantile(0.95) < 0.9


def test_linear_and_channel_separable():
    g = torch.Generator().manual_seed(0)
    feats = energy_features(_demo_images(2, (20, 16)), 15.0, 50.0)
    lattice = PermutohedralLattice(feats)
    u, v = torch.rand(2, 2, 320, generator=g), torch.rand(2, 2, 320, generator=g)
    fu, fv = lattice.filter(u), lattice.filter(v)
    torch.testing.assert_close(lattice.filter(2 * u - 3 * v), 2 * fu - 3 * fv, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lattice.filter(u[:, :1]), fu[:, :1])  # channels are filtered independently


def test_items_do_not_share_vertices_and_pixel_order_does_not_matter():
    g = torch.Generator().manual_seed(1)
    feats = energy_features(_demo_images(2, (16, 12)), 15.0, 50.0)
    values = torch.rand(2, 3, feats.shape[2], generator=g)
    both = permutohedral_filter(feats, values)
    torch.testing.assert_close(both[:1], permutohedral_filter(feats[:1], values[:1]))
    other = feats.clone()
    other[1] = other[1].flip(1)  # a different second item: the first item's output must not move
    torch.testing.assert_close(permutohedral_filter(other, values)[0], both[0])
    perm = torch.randperm(feats.shape[2], generator=g)
    torch.testing.assert_close(permutohedral_filter(feats[:, :, perm], values[:, :, perm]), both[:, :, perm])


def test_vertex_count_grows_with_pixels_not_their_square():
    for size in [(16, 16), (48, 48)]:
        feats = energy_features(_demo_images(1, size), 15.0, 50.0)
        n = feats.shape[2]
        assert 0 < PermutohedralLattice(feats).num_vertices <= 6 * n  # at most d + 1 = 6 corners per pixel


def test_gradient_flows_to_values():
    feats = energy_features(_demo_images(1, (6, 5)), 15.0, 10.0)
    n = feats.shape[2]
    # Filtering the N unit vectors as N channels gives the operator's matrix: row k is F e_k, so F = M^T.
    matrix = permutohedral_filter(feats, torch.eye(n)[None])[0].T  # (N, N) out = matrix @ v
    values = torch.rand(1, 1, n, requires_grad=True)
    weights = torch.rand(1, 1, n)
    out = permutohedral_filter(feats, values)
    torch.testing.assert_close(out[0, 0], matrix @ values[0, 0].detach(), rtol=1e-5, atol=1e-5)
    (out * weights).sum().backward()
    torch.testing.assert_close(values.grad[0, 0], matrix.T @ weights[0, 0], rtol=1e-5, atol=1e-5)
    assert (matrix >= 0).all() and (matrix.diagonal() > 0).all()  # a blur of non-negative weights


def test_bad_shapes_and_spread_features_are_refused():
    with pytest.raises(ValueError, match=r"\(B, d, N\)"):
        PermutohedralLattice(torch.zeros(5, 10))
    lattice = PermutohedralLattice(torch.zeros(1, 5, 10))
    with pytest.raises(ValueError, match=r"values must be \(B, K, N\) = \(1, K, 10\)"):
        lattice.filter(torch.zeros(1, 2, 9))
    with pytest.raises(ValueError, match="divided by the sigmas"):
        PermutohedralLattice(torch.tensor([[[0.0, 1e7]] * 5]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    feats = energy_features(_demo_images(2, (40, 32)), 15.0, 50.0)
    values = torch.rand(2, 4, feats.shape[2])
    torch.testing.assert_close(permutohedral_filter(feats.cuda(), values.cuda()).cpu(),
                               permutohedral_filter(feats, values), rtol=1e-4, atol=1e-4)
