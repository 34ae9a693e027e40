"""The SeCo network with a tiny ViT: shapes, frozen position embedding, teacher EMA, memories, weights."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
import torch.nn.functional as F

from seco_labels.errors import ConfigError
from seco_labels.models import ClassPrototypes, KeyReservoir, SeCoNet, ViTEncoder

TINY = dict(backbone="vit_tiny_patch16_224", backbone_kwargs={"depth": 4}, proj_hidden=32, reservoir_size=24)


@pytest.fixture(scope="module")
def net() -> SeCoNet:
    torch.manual_seed(0)
    return SeCoNet(num_classes=5, **TINY)


def test_forward_shapes(net):
    out = net(torch.randn(2, 3, 64, 96))
    assert out.cls_token.shape == (2, 192)
    assert out.tokens.shape == (2, 192, 4, 6)
    assert out.logits.shape == out.aux_logits.shape == (2, 4)
    assert out.seg.shape == (2, 5, 4, 6)
    assert out.cam.shape == out.cam_aux.shape == (2, 4, 4, 6)
    assert not out.cam.requires_grad


def test_standalone_cams_equal_the_training_forward_cams(net):
    """multi_scale_cams reuses the forward's CAM at scale 1.0; that is only valid if both are equal."""
    x = torch.randn(1, 3, 64, 64)
    out = net(x)
    cam, cam_aux = net.cams(x)
    torch.testing.assert_close(cam, out.cam)
    torch.testing.assert_close(cam_aux, out.cam_aux)


def test_position_embedding_is_frozen_and_aux_layer_is_unnormed(net):
    assert not net.encoder.vit.pos_embed.requires_grad
    assert all(p is not net.encoder.vit.pos_embed for ps in net.param_groups().values() for p in ps)
    x = torch.randn(1, 3, 48, 48)
    _, tokens, aux = net.encoder(x)
    # final tokens pass through LayerNorm (per-token mean ~0), the aux tokens do not
    assert tokens.mean(1).abs().max() < 1e-2
    assert aux.mean(1).abs().max() > tokens.mean(1).abs().max()


def test_resampled_position_embedding_is_kept_per_grid_and_redone_when_the_embedding_changes():
    """The cache of resampled embeddings gives what resampling gives, holds a few grids, and is not read after an
    in-place change (a loaded checkpoint, the teacher's EMA), for a replaced embedding, or for one a caller
    unfroze."""
    from seco_labels.models.backbone import POS_CACHE_SIZE

    torch.manual_seed(0)
    enc = ViTEncoder("vit_tiny_patch16_224", aux_layer=0, depth=1)
    pos = enc.vit.pos_embed
    first = enc._pos_embed(5, 7)
    torch.testing.assert_close(first, enc._resample(pos, 5, 7), rtol=0, atol=0)
    assert first.shape == (1, 1 + 5 * 7, 192)
    assert enc._pos_embed(5, 7) is first  # the same grid again: no resampling
    x = torch.randn(1, 3, 80, 112)
    before = enc(x).tokens
    with torch.no_grad():
        pos.mul_(2.0)  # in place, as load_state_dict and the EMA write
    again = enc._pos_embed(5, 7)
    assert again is not first
    torch.testing.assert_close(again, enc._resample(pos, 5, 7), rtol=0, atol=0)
    assert not torch.allclose(enc(x).tokens, before)  # the forward sees the new embedding
    for side in range(1, POS_CACHE_SIZE + 3):
        enc._pos_embed(side, side)
    assert len(enc._pos_cache) == POS_CACHE_SIZE  # the oldest grids are dropped
    enc.vit.pos_embed = torch.nn.Parameter(pos.detach() * 3.0, requires_grad=False)  # replaced, not written
    torch.testing.assert_close(enc._pos_embed(5, 7), enc._resample(enc.vit.pos_embed, 5, 7), rtol=0, atol=0)
    assert len(enc._pos_cache) == 1  # the old embedding's grids are gone
    assert [n for n, _ in enc.named_parameters() if "pos" in n] == ["vit.pos_embed"]  # the cache adds no state
    twin = pickle.loads(pickle.dumps(enc))  # a whole module still pickles, and its copy resamples its own embedding
    torch.testing.assert_close(twin._pos_embed(5, 7), enc._pos_embed(5, 7), rtol=0, atol=0)
    assert twin._pos_source is twin.vit.pos_embed
    pos = enc.vit.pos_embed
    pos.requires_grad_(True)
    grads = enc._pos_embed(5, 7)
    assert grads.requires_grad and grads is not enc._pos_embed(5, 7)  # learnt: resampled in the graph each call


def test_every_trainable_parameter_gets_a_gradient(net):
    out = net(torch.randn(2, 3, 64, 64))
    q = net.proj_head(out.cls_token)
    loss = out.logits.sum() + out.aux_logits.sum() + out.seg.sum() + q.sum()
    net.zero_grad()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(p.grad is None for p in net.teacher.parameters())


def test_teacher_ema_moves_toward_student():
    torch.manual_seed(0)
    m = SeCoNet(num_classes=3, ema_momentum=0.9, **TINY)
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    s = next(m.encoder.parameters()).detach().clone()
    t0 = next(m.teacher["encoder"].parameters()).detach().clone()
    m.update_teacher()
    t1 = next(m.teacher["encoder"].parameters())
    torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)


def test_reservoir_is_fifo_and_checks_its_size():
    r = KeyReservoir(6, 2)
    r.push(torch.ones(3, 2), torch.tensor([1, 2, 3]))
    assert r.tags.tolist() == [1, 2, 3, 0, 0, 0] and int(r.ptr) == 3
    r.push(2 * torch.ones(3, 2), torch.tensor([4, 5, 6]))
    r.push(3 * torch.ones(3, 2), torch.tensor([7, 8, 9]))
    assert r.tags.tolist() == [7, 8, 9, 4, 5, 6] and int(r.ptr) == 3
    assert r.keys[0, 0] == 3 and r.keys[3, 0] == 2
    with pytest.raises(ValueError, match="not a multiple of the 4 keys"):
        r.push(torch.ones(4, 2), torch.zeros(4, dtype=torch.long))


def test_prototypes_update_only_from_single_label_images():
    p = ClassPrototypes(3, 2, momentum=0.5)
    p.vectors.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    p.update(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([2, -1]))
    s = 2**-0.5
    torch.testing.assert_close(p.vectors, torch.tensor([[1.0, 0.0], [s, s], [1.0, 0.0]]))


def test_local_weights_file_loads_strictly(tmp_path):
    torch.manual_seed(1)
    src = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=0)
    path = tmp_path / "vit_tiny.pth"
    torch.save(src.state_dict(), path)
    enc = ViTEncoder("vit_tiny_patch16_224", weights=str(path), depth=2, aux_layer=-1)
    torch.testing.assert_close(enc.vit.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    bad = tmp_path / "other.pth"
    torch.save(timm.create_model("vit_small_patch16_224", depth=2, num_classes=0).state_dict(), bad)
    with pytest.raises(ConfigError, match="other.pth"):
        ViTEncoder("vit_tiny_patch16_224", weights=str(bad), depth=2, aux_layer=-1)
    with pytest.raises(ConfigError, match="missing.pth not found"):
        ViTEncoder("vit_tiny_patch16_224", weights=str(tmp_path / "missing.pth"), depth=2)


def test_bad_backbone_and_aux_layer_are_config_errors():
    with pytest.raises(ConfigError, match="unknown backbone 'vit_nope'"):
        ViTEncoder("vit_nope")
    with pytest.raises(ConfigError, match="aux_layer=-9 is out of range"):
        ViTEncoder("vit_tiny_patch16_224", depth=4, aux_layer=-9)


def test_extra_views_share_the_encoder_batch_without_changing_results(net):
    x, g = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    alone, joint = net(x), net(x, extra=g)
    torch.testing.assert_close(joint.logits, alone.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joint.seg, alone.seg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joint.extra_cls, net.embed(g), rtol=1e-5, atol=1e-5)
    assert alone.extra_cls is None


# -- inputs that are no multiple of the patch (issue 12, part 5) ----------------------------------------------
def test_encoder_drops_the_pixels_that_fill_no_patch_like_the_published_conv(net):
    """The published patch embedding is a stride-16 convolution: 168 x 200 gives 10 x 12 tokens, and the last
    8 rows and 8 columns change nothing."""
    enc = net.encoder  # no dropout in timm's default ViT: train mode is deterministic
    x = torch.randn(2, 3, 168, 200)
    out = enc(x)
    assert out.tokens.shape == out.aux_tokens.shape == (2, 192, 10, 12)
    cropped = enc(x[..., :160, :192])
    noisy = x.clone()
    noisy[..., 160:, :] = 100.0  # pixels outside every whole patch
    noisy[..., :, 192:] = -100.0
    for other in (cropped, enc(noisy)):
        torch.testing.assert_close(other.tokens, out.tokens, rtol=0, atol=0)
        torch.testing.assert_close(other.cls_token, out.cls_token, rtol=0, atol=0)
    with pytest.raises(ValueError, match="input of 15x200 px is smaller than one 16x16 px patch"):
        enc(torch.randn(1, 3, 15, 200))


def test_multi_scale_cam_of_a_partial_grid_is_stretched_over_the_whole_image(net):
    """Published ``multi_scale_cam2``: at scale 0.75 a 224 px input is resized to 168 px, whose 10 x 10 token CAM
    covers 160 px, and that CAM is upsampled to all 224 px (not to the 160 px it covers, nor to 168)."""
    from seco_labels.method.cams import multi_scale_cams

    x = torch.randn(1, 3, 224, 224)
    cam, _ = multi_scale_cams(net.cams, x, (0.75,), flip=False)
    raw, _ = net.cams(F.interpolate(x, size=(168, 168), mode="bilinear", align_corners=False))
    assert raw.shape[-2:] == (10, 10)
    want = F.relu(F.interpolate(raw, size=(224, 224), mode="bilinear", align_corners=False))
    want = want - want.amin(dim=(-2, -1), keepdim=True)
    want = want / (want.amax(dim=(-2, -1), keepdim=True) + 1e-5)
    torch.testing.assert_close(cam, want)


# -- weights files (issue 12, part 3) -------------------------------------------------------------------------
def _random_state_dict(jx: bool, seed: int = 3) -> dict[str, torch.Tensor]:
    """Random tensors (not an init: a tensor left at init cannot match them by chance) in the layout of timm's
    ``vit_tiny_patch16_224`` with 2 blocks; ``jx``: plus the 1000-class head the published code's
    ``jx_vit_base_p16_224-80ecf9dd.pth`` carries."""
    g = torch.Generator().manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=1000 if jx else 0)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def _save(sd: dict[str, torch.Tensor], path, layout: str) -> None:
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif layout in ("model", "state_dict"):
        torch.save({layout: sd, "epoch": 300}, path)  # a training script's checkpoint
    else:
        torch.save(sd, path)


@pytest.mark.parametrize("jx, layout", [
    (True, "bare"),  # the published jx file: timm keys + head.weight (1000, D), head.bias (1000,)
    (True, "pre_logits"),  # the original ImageNet-21k files also carry pre_logits.fc
    (False, "bare"),  # timm's current num_classes=0 state dict
    (True, "safetensors"),  # what timm saves to the HF hub, head included
    (False, "model"),
    (True, "state_dict"),
])
def test_weights_load_in_the_published_and_timm_layouts(tmp_path, jx, layout):
    sd = _random_state_dict(jx)
    if layout == "pre_logits":
        sd["pre_logits.fc.weight"], sd["pre_logits.fc.bias"] = torch.randn(192, 192), torch.randn(192)
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    _save(sd, path, layout)
    enc = ViTEncoder("vit_tiny_patch16_224", weights=str(path), depth=2, aux_layer=-1)
    loaded = enc.vit.state_dict()
    assert set(loaded) == {k for k in sd if not k.startswith(("head.", "pre_logits."))}
    for k, v in loaded.items():
        assert torch.equal(v, sd[k]), k
    assert ("head.weight" in sd) == jx


def test_weights_of_another_grid_get_their_position_embedding_resampled(tmp_path):
    """A 384 px file (24 x 24 grid) into the 224 px model: class position kept, grid bicubic to 14 x 14."""
    sd = _random_state_dict(jx=True)
    sd["pos_embed"] = torch.randn(1, 1 + 24 * 24, 192)
    torch.save(sd, tmp_path / "w384.pth")
    enc = ViTEncoder("vit_tiny_patch16_224", weights=str(tmp_path / "w384.pth"), depth=2, aux_layer=-1)
    pos = enc.vit.pos_embed
    assert pos.shape == (1, 1 + 14 * 14, 192)
    assert torch.equal(pos[:, 0], sd["pos_embed"][:, 0])
    grid = sd["pos_embed"][:, 1:].reshape(1, 24, 24, 192).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(14, 14), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pos[:, 1:], want.flatten(2).transpose(1, 2))


def test_a_weights_file_with_a_missing_key_is_refused_naming_key_and_file(tmp_path):
    """timm's own loader turns strict off once the head is removed (num_classes=0): the key stayed at init."""
    sd = _random_state_dict(jx=True)
    del sd["blocks.1.mlp.fc1.bias"]
    torch.save(sd, tmp_path / "jx_cut.pth")
    with pytest.raises(ConfigError, match=r"backbone weights file \S*jx_cut.pth does not fit vit_tiny_patch16_224 "
                                          r"\(missing blocks.1.mlp.fc1.bias\)"):
        ViTEncoder("vit_tiny_patch16_224", weights=str(tmp_path / "jx_cut.pth"), depth=2, aux_layer=-1)
    sd = _random_state_dict(jx=False)
    sd["dist_token"] = torch.randn(1, 1, 192)  # a DeiT-distilled file: not silently ignored either
    torch.save(sd, tmp_path / "deit.pth")
    with pytest.raises(ConfigError, match=r"deit.pth does not fit vit_tiny_patch16_224 \(unexpected dist_token\)"):
        ViTEncoder("vit_tiny_patch16_224", weights=str(tmp_path / "deit.pth"), depth=2, aux_layer=-1)


@pytest.mark.parametrize("name, content, message", [
    ("notes.pth", b"not a checkpoint", "notes.pth cannot be read as a state dict"),
    ("empty.pth", b"", "empty.pth cannot be read as a state dict"),
    ("bad.safetensors", b"garbage", "bad.safetensors cannot be read as a state dict"),
    ("list.pth", None, "list.pth holds no state dict"),
])
def test_an_unreadable_weights_file_is_a_config_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        ViTEncoder("vit_tiny_patch16_224", weights=str(path), depth=2, aux_layer=-1)
