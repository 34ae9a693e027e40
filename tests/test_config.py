"""Config presets, layering and validation."""

from __future__ import annotations

import pytest
import yaml

from seco_labels.config import apply_overrides, config_from_dict, get_preset, set_values
from seco_labels.config_io import config_to_dict, load_config_file, save_config
from seco_labels.errors import ConfigError


def test_voc_preset_holds_the_paper_values():
    cfg = get_preset("voc")
    assert cfg.model.backbone == "vit_base_patch16_224"
    assert cfg.data.crop_size == 448 and cfg.data.batch_size == 4
    assert cfg.train.iters == 20000
    assert cfg.optim.lr == 6e-5 and cfg.optim.head_lr_mult == 10 and cfg.optim.warmup_iters == 1500
    assert (cfg.loss.lig.weight, cfg.loss.lil.weight, cfg.loss.seg.weight, cfg.loss.reg.weight) == (0.5, 0.5, 0.12, 0.05)
    assert (cfg.loss.lig_tau, cfg.loss.lil_tau) == (0.1, 0.08)
    assert cfg.model.reservoir_size == 4608 and cfg.model.ema_momentum == 0.999
    assert (cfg.cam.high_thre, cfg.cam.low_thre) == (0.7, 0.25)
    assert cfg.decompose.num_local_crops == 10 and cfg.decompose.local_crop_size == 64


def test_coco_preset_differs_where_the_published_script_does():
    cfg = get_preset("coco")
    assert cfg.data.num_classes == 81 and cfg.train.iters == 80000
    assert cfg.cam.high_thre == 0.65 and cfg.cam.scales == (1.0, 0.5, 0.75, 1.25, 1.5)
    assert cfg.loss.ptc.start == 8001 and cfg.loss.lil.weight == 0.3
    assert cfg.data.batch_size == 8  # 2 GPUs x 4 per GPU, as a global batch


def test_presets_for_real_results_name_pretrained_weights_and_only_the_demo_is_random():
    # the tag of the published code's jx_vit_base_p16_224-80ecf9dd.pth; a bare vit_base_patch16_224 is AugReg2
    assert get_preset("voc").model.backbone_weights == "vit_base_patch16_224.orig_in21k_ft_in1k"
    assert get_preset("coco").model.backbone_weights == "vit_base_patch16_224.orig_in21k_ft_in1k"
    small = get_preset("small")
    assert small.model.backbone_weights.startswith(small.model.backbone + ".") and small.data.crop_size == 320
    assert get_preset("demo").model.backbone_weights == "random"
    assert all(get_preset(p).model.backbone_weights_sha256 == "" for p in ("voc", "coco", "small", "demo"))


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="available: coco, demo, small, voc"):
        get_preset("cityscapes")


def test_overrides_coerce_types_and_reject_unknown_keys():
    cfg = get_preset("voc")
    apply_overrides(cfg, ["train.iters=12", "cam.scales=1.0,0.5", "loss.lig.weight=0", "loss.rectify=false"])
    assert cfg.train.iters == 12 and isinstance(cfg.train.iters, int)
    assert cfg.cam.scales == (1.0, 0.5)
    assert cfg.loss.lig.weight == 0.0
    assert cfg.loss.rectify is False
    with pytest.raises(ConfigError, match="unknown config key 'train.itres'"):
        apply_overrides(cfg, ["train.itres=3"])
    with pytest.raises(ConfigError, match="train.iters='many' is not a valid int"):
        apply_overrides(cfg, ["train.iters=many"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(cfg, ["iters"])


def test_values_convert_to_the_resolved_field_types():
    """Field types come from typing.get_type_hints, so ``X | None``, fixed and open tuples and dicts convert, in
    SecoConfig and in the segmenter's config alike."""
    from seco_labels.segmenters.config import segmenter_config

    cfg = apply_overrides(get_preset("demo"), [
        "data.rescale_range=(0.4, 1.5)", "cam.par_dilations=[1, 2.0]", "model.backbone_weights=7",
        "model.backbone_kwargs={depth: 2}", "train.compile=yes", "data.class_names=cat, dog"])
    assert cfg.data.rescale_range == (0.4, 1.5) and cfg.cam.par_dilations == (1, 2)
    assert all(isinstance(d, int) for d in cfg.cam.par_dilations)
    assert cfg.model.backbone_weights == "7" and cfg.model.backbone_kwargs == {"depth": 2}
    assert cfg.train.compile is True and cfg.data.class_names == ("cat", "dog")
    seg = segmenter_config(overrides=["data.labels=gt", "data.num_classes=21.0"])  # int | None
    assert seg.data.num_classes == 21 and isinstance(seg.data.num_classes, int)
    with pytest.raises(ConfigError, match="data.num_classes=2.5 is not a valid int"):
        segmenter_config(overrides=["data.labels=gt", "data.num_classes=2.5"])
    with pytest.raises(ConfigError, match="is not a valid tuple\\[float, float\\]"):
        apply_overrides(get_preset("demo"), ["data.rescale_range=a,b"])
    with pytest.raises(ConfigError, match="train.compile='maybe' is not a valid bool"):
        apply_overrides(get_preset("demo"), ["train.compile=maybe"])


def test_set_values_keeps_strings_verbatim():
    cfg = set_values(get_preset("voc"), {"data.root": "no", "train.iters": 5})
    assert cfg.data.root == "no" and cfg.train.iters == 5


def test_validate_names_the_key_at_fault():
    cfg = get_preset("voc")
    cfg.model.reservoir_size = 1000
    with pytest.raises(ConfigError, match="model.reservoir_size=1000 must be a multiple of .* = 48"):
        cfg.validate()
    cfg = get_preset("voc")
    cfg.cam.low_thre = 0.9
    with pytest.raises(ConfigError, match="cam.low_thre=0.9"):
        cfg.validate()


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = get_preset("demo")
    cfg.loss.lil_variant = "supcon"
    save_config(cfg, tmp_path / "config.yaml")
    data = load_config_file(tmp_path / "config.yaml")
    assert data["preset"] == "demo" and data["loss"]["lil_variant"] == "supcon"
    again = config_from_dict(data)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["cam"]["scales"] == [1.0, 0.5, 1.5]


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_config_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="bad.yaml must hold a mapping"):
        load_config_file(bad)
