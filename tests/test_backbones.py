"""Today's ViTs as the SeCo backbone: DINOv2 (patch 14, LayerScale), register-token models (``no_embed_class``)
and distilled DeiT, against timm's own forward; strict loading of their weights; a training step and an export
through the CLI. Every model is tiny and randomly initialised (nothing downloads)."""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import timm.models.deit
import timm.models.vision_transformer
import torch
from click.testing import CliRunner
from PIL import Image
from timm.layers import resample_abs_pos_embed

from seco_labels.errors import ConfigError
from seco_labels.models import ViTEncoder

TINY = dict(depth=2, embed_dim=32, num_heads=2)
#: name -> (patch size, prefix tokens: class + distillation + registers, prefix tokens pos_embed covers)
MODELS = {
    "vit_tiny_patch16_224": (16, 1, 1),
    "vit_small_patch14_dinov2": (14, 1, 1),
    "vit_small_patch14_reg4_dinov2": (14, 5, 0),
    "deit_tiny_distilled_patch16_224": (16, 2, 2),
}


@pytest.fixture
def timm_resamples_like_the_encoder(monkeypatch):
    """timm's dynamic-size ``_pos_embed`` resamples with antialiasing (whose bicubic kernel differs even when
    upsampling); the encoder resamples without, as the published code does. Make timm do the same, so that the
    two forwards can be compared at any size."""
    for module in (timm.models.vision_transformer, timm.models.deit):
        monkeypatch.setattr(module, "resample_abs_pos_embed",
                            functools.partial(resample_abs_pos_embed, antialias=False))


def _tiny_encoder(name: str, grid: int = 6, **kwargs) -> ViTEncoder:
    """A tiny encoder whose class, register and position tokens are far from their near-zero init, so that any
    mix-up of their order or of the position-embedding prefix shows in the output."""
    torch.manual_seed(0)
    enc = ViTEncoder(name, aux_layer=-2, img_size=grid * MODELS[name][0], **TINY, **kwargs).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.2 * torch.randn_like(p))
        enc.vit.pos_embed.add_(torch.randn_like(enc.vit.pos_embed))
    return enc


@pytest.mark.parametrize("name", list(MODELS))
def test_encoder_equals_timms_forward_at_native_and_other_sizes(name, timm_resamples_like_the_encoder):
    patch, prefix, pos_prefix = MODELS[name]
    enc = _tiny_encoder(name)
    vit = enc.vit
    assert (enc.patch_size, enc.num_prefix_tokens, enc.pos_prefix_tokens) == (patch, prefix, pos_prefix)
    assert enc.num_prefix_tokens == vit.num_prefix_tokens
    assert vit.pos_embed.shape[1] == pos_prefix + 36 and not vit.pos_embed.requires_grad
    # native 6 x 6 grid, a smaller and a larger one; the encoder also takes sides that are no multiple of the patch
    for gh, gw, extra in ((6, 6, 0), (4, 5, 0), (9, 7, patch - 1)):
        x = torch.randn(2, 3, gh * patch + extra, gw * patch + extra)
        whole = x[..., : gh * patch, : gw * patch]
        with torch.no_grad():
            out = enc(x)
            ref = vit.forward_features(whole)  # (B, prefix + h*w, D), dynamic_img_size
            aux_ref = vit.forward_intermediates(whole, indices=[enc.aux_index], norm=False, output_fmt="NCHW",
                                                intermediates_only=True)[0]
        assert out.cls_token.shape == (2, 32)
        assert out.tokens.shape == out.aux_tokens.shape == (2, 32, gh, gw)  # (H // p, W // p)
        assert ref.shape[1] == prefix + gh * gw
        torch.testing.assert_close(out.cls_token, ref[:, 0], rtol=1e-5, atol=1e-5)
        patches = ref[:, prefix:].transpose(1, 2).reshape(2, 32, gh, gw)
        torch.testing.assert_close(out.tokens, patches, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.aux_tokens, aux_ref, rtol=1e-5, atol=1e-5)
    if prefix > 1:  # the grid holds patch tokens only: a register (or distillation) token is not its first cell
        first_non_class = ref[:, 1].reshape(2, 32)
        assert not torch.allclose(out.tokens[:, :, 0, 0], first_non_class, atol=1e-3)


def test_plain_vit_forward_is_unchanged_by_the_prefix_handling():
    """vit_tiny (one prefix token, covered by pos_embed): the sequence is [class, patches] + pos_embed, as the
    encoder built it before it knew register tokens, bit for bit."""
    enc = _tiny_encoder("vit_tiny_patch16_224")
    vit = enc.vit
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        t = vit.patch_embed(x)
        b, h, w, d = t.shape
        t = torch.cat([vit.cls_token.expand(b, -1, -1), t.reshape(b, h * w, d)], dim=1)
        t = t + resample_abs_pos_embed(vit.pos_embed, new_size=(h, w), old_size=(6, 6), num_prefix_tokens=1,
                                       antialias=False)
        t = vit.norm(vit.blocks(vit.norm_pre(t)))
        out = enc(x)
    torch.testing.assert_close(out.cls_token, t[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out.tokens, t[:, 1:].transpose(1, 2).reshape(b, d, h, w), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2", "vit_small_patch14_dinov2",
                                  "deit_tiny_distilled_patch16_224"])
def test_weights_of_another_grid_load_strictly(name, tmp_path):
    patch, prefix, pos_prefix = MODELS[name]
    torch.manual_seed(1)
    src = timm.create_model(name, num_classes=0, img_size=4 * patch, **TINY)  # 4 x 4 grid
    with torch.no_grad():
        src.pos_embed.normal_()
    sd = src.state_dict()
    path = tmp_path / "small_grid.pth"
    torch.save(sd, path)
    enc = ViTEncoder(name, weights=str(path), aux_layer=-1, img_size=6 * patch, **TINY)  # 6 x 6 grid
    vit = enc.vit
    assert vit.pos_embed.shape == (1, pos_prefix + 36, 32)
    expected = resample_abs_pos_embed(sd["pos_embed"], new_size=(6, 6), old_size=(4, 4),
                                      num_prefix_tokens=pos_prefix, antialias=False)
    torch.testing.assert_close(vit.pos_embed, expected, rtol=0, atol=0)
    # the prefix entries (class / distillation token) are kept as they are, not resampled with the patches
    torch.testing.assert_close(vit.pos_embed[:, :pos_prefix], sd["pos_embed"][:, :pos_prefix], rtol=0, atol=0)
    for key in ("cls_token", "blocks.1.attn.qkv.weight", "norm.weight", *(["reg_token"] if prefix == 5 else [])):
        torch.testing.assert_close(vit.state_dict()[key], sd[key], rtol=0, atol=0)
    # still strict: a key missing from the file is named with the file
    missing = tmp_path / "no_registers.pth"
    dropped = "reg_token" if "reg_token" in sd else "blocks.0.ls1.gamma" if "dinov2" in name else "dist_token"
    torch.save({k: v for k, v in sd.items() if k != dropped}, missing)
    with pytest.raises(ConfigError, match=rf"no_registers\.pth does not fit {name} \(missing {dropped}\)"):
        ViTEncoder(name, weights=str(missing), aux_layer=-1, img_size=6 * patch, **TINY)
    # a pos_embed that is no prefix + square grid of this model is refused, naming the file
    bad = tmp_path / "bad_pos.pth"
    torch.save({**sd, "pos_embed": sd["pos_embed"][:, :pos_prefix + 15]}, bad)
    with pytest.raises(ConfigError, match=rf"bad_pos\.pth: pos_embed has shape .* {pos_prefix} prefix token"):
        ViTEncoder(name, weights=str(bad), aux_layer=-1, img_size=6 * patch, **TINY)


def test_dinov2_native_grid_is_37_at_518_px():
    enc = ViTEncoder("vit_small_patch14_dinov2", aux_layer=-1, **TINY)
    assert enc.grid_size == (37, 37) and enc.vit.pos_embed.shape == (1, 1 + 37 * 37, 32)
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 112, 100))  # 8 x 7 patches of 14 px, 2 columns left over
    assert out.tokens.shape == (1, 32, 8, 7)
    with pytest.raises(ValueError, match="smaller than one 14x14 px patch"):
        enc(torch.randn(1, 3, 13, 100))


# -- the real CLI: two training steps, then an export ------------------------------------------------------------
def _two_image_root(voc_root: Path, dst: Path) -> tuple[Path, list[str]]:
    """Two train images of the demo set in VOC layout (export-masks has no option to limit the images), shrunk to
    a third of their size (and no multiple of 14 px) to keep the full-resolution refinement of the export fast."""
    ids = (voc_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:2]
    for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClassAug", ".png")):
        (dst / sub).mkdir(parents=True)
        for i in ids:
            img = Image.open(voc_root / sub / f"{i}{ext}")
            size = (img.width // 3 | 1, img.height // 3 | 1)  # odd sides
            img.resize(size, Image.NEAREST if img.mode == "P" else Image.BILINEAR).save(dst / sub / f"{i}{ext}")
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True)
    (dst / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    shutil.copy(voc_root / "cls_labels_onehot.npy", dst / "cls_labels_onehot.npy")
    return dst, ids


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_dinov2_trains_and_exports_through_the_cli(name, voc_root, tmp_path):
    from seco_labels.runtime.checkpoint import load_seco

    from seco_labels.cli import cli

    run, art = tmp_path / "run", tmp_path / "art"
    # 112 px crops (8 x 8 patches of 14 px; CAM scales 0.5 and 1.5 give 4 x 4 and 12 x 12), 28 px local crops;
    # every loss term on from step 1, so PAR, the decomposition and the token losses all see the 14 px grid.
    sets = [
        f"model.backbone={name}", "model.backbone_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
        "model.backbone_weights=random", "model.aux_layer=-1", "model.proto_start=0", "data.crop_size=112",
        "decompose.local_crop_size=28", "data.batch_size=2", "data.num_workers=0", "train.val_every=0",
        *(f"loss.{term}.start=1" for term in ("lig", "lil", "seg", "reg")),
    ]
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--out", str(run), "--iters", "2", "--quiet",
                                   *(a for s in sets for a in ("--set", s))])
    assert res.exit_code == 0, res.output
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [0, 1]
    assert all(math.isfinite(steps[1][f"loss_{t}"]) for t in ("cls", "aux", "ptc", "lil", "lig", "seg", "reg"))
    model, cfg = load_seco(run / "last.pt", "cpu")
    assert cfg.model.backbone == name and model.encoder.patch_size == 14
    assert model.encoder.num_prefix_tokens == MODELS[name][1]

    root, ids = _two_image_root(voc_root, tmp_path / "voc")
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(run / "last.pt"), "--split", "train",
                                   "--out", str(art), "--data-root", str(root), "--num-workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "exported 2 image(s) of train" in res.output
    with h5py.File(art / "cams_train.h5") as f:
        for ident in ids:
            w, h = Image.open(root / "JPEGImages" / f"{ident}.jpg").size
            png = Image.open(art / "masks_train" / f"{ident}.png")
            assert png.size == (w, h)
            cam, mask = f["cams"][ident], f["masks"][ident][()]
            keys = np.asarray(cam.attrs["keys"])
            assert len(keys) >= 1 and cam.shape == (len(keys), h, w)
            assert mask.shape == (h, w)
            np.testing.assert_array_equal(mask, np.asarray(png))
