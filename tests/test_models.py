"""The SeCo network with a tiny ViT: shapes, frozen position embedding, teacher EMA, memories, weights."""

from __future__ import annotations

import pytest
import timm
import torch

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
