"""Four traps of a user's own data: the folder layout detected without --layout, --iters scaling a preset's
schedule (and a resume keeping it), large photos bounded by data.max_side, and --val-fraction drawing validation
images among those with a mask."""

from __future__ import annotations

import json
import shutil

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import make_folder_dataset
from PIL import Image

from seco_labels.cli import cli
from seco_labels.cli.options import resolve_config
from seco_labels.data import build_reader, write_folder_splits
from seco_labels.errors import ConfigError, DataError

FAST = ["--set", "data.crop_size=64", "--set", "decompose.local_crop_size=16", "--set", "model.backbone_kwargs={depth: 2}",
        "--set", "model.aux_layer=-1", "--set", "cam.scales=1.0", "--set", "data.batch_size=2",
        "--set", "model.reservoir_size=48", "--set", "data.num_workers=0"]
#: the synthetic 12-megapixel-like photo (kept at 1600x1200 so the test stays fast), under images/big.png
BIG = (1200, 1600)


@pytest.fixture(scope="module")
def folder(voc_root, tmp_path_factory):
    return make_folder_dataset(voc_root, tmp_path_factory.mktemp("folder"))


@pytest.fixture()
def small_folder(folder, tmp_path):
    """Four demo images in the folder layout with their masks, plus ``big``: a large image tagged 'dog' whose mask
    marks a dog rectangle."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = (folder / "tags.csv").read_text().splitlines()
    kept = rows[1:5]
    for row in kept:
        rel = row.split(",")[0]
        stem = rel.rsplit(".", 1)[0]
        for kind, suffix in (("images", ".jpg"), ("masks", ".png")):
            (root / kind / stem).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / kind / f"{stem}{suffix}", root / kind / f"{stem}{suffix}")
    h, w = BIG
    rng = np.random.default_rng(0)
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[300:900, 400:1200] = 12  # dog
    image[mask == 12] = (200, 120, 40)
    Image.fromarray(image).save(root / "images" / "big.png")
    Image.fromarray(mask, mode="L").save(root / "masks" / "big.png")
    (root / "tags.csv").write_text("\n".join([rows[0], *kept, "big.png,dog"]) + "\n")
    shutil.copyfile(folder / "classes.txt", root / "classes.txt")
    return root


def _resolve(args: list[str]):
    """The config ``seco train`` resolves from ``args`` (its --preset/--config/--set and config-key options),
    and what it printed."""
    from seco_labels.cli.train import train_cmd

    seen = {}

    @click.command(params=[p for p in train_cmd.params if p.name not in ("run_dir",)])
    def probe(preset, config_file, overrides, quiet, val_fraction, split_seed, resume, allow_changes):
        seen["cfg"] = resolve_config(preset, config_file, overrides)

    res = CliRunner().invoke(probe, args)
    assert res.exit_code == 0, res.output
    return seen["cfg"], res.output


# -- 1. the folder layout detected ------------------------------------------------------------------------------
def test_folder_layout_is_detected_only_when_no_layout_is_named(folder):
    cfg, said = _resolve(["--preset", "voc", "--data-root", str(folder)])
    assert cfg.data.layout == "folder" and "detected the folder layout" in said and str(folder) in said
    cfg, said = _resolve(["--preset", "demo", "--data-root", str(folder)])  # a preset's layout is no choice
    assert cfg.data.layout == "folder"
    for named in (["--layout", "voc"], ["--set", "data.layout=voc"]):
        cfg, said = _resolve(["--preset", "demo", "--data-root", str(folder), *named])
        assert cfg.data.layout == "voc" and "detected" not in said
    cfg, said = _resolve(["--preset", "demo"])  # the demo's own VOC-layout root has no tags file
    assert cfg.data.layout == "voc" and "detected" not in said


def test_voc_reader_points_a_folder_dataset_to_layout_folder(folder):
    with pytest.raises(DataError, match=r"train.txt not found.*holds tags.csv.*--layout folder"):
        build_reader("voc", folder, "train")


# -- 2. --iters scales a preset's schedule ----------------------------------------------------------------------
def test_iters_scales_the_presets_schedule_and_explicit_values_win(tmp_path):
    from seco_labels.config import get_preset

    demo = get_preset("demo")
    cfg, _ = _resolve(["--preset", "demo", "--iters", "600"])
    assert cfg.train.iters == 600 and cfg.optim.warmup_iters == 2 * demo.optim.warmup_iters
    assert (cfg.loss.lig.start, cfg.loss.lil.start, cfg.loss.seg.start, cfg.loss.reg.start) == (121, 121, 241, 241)
    assert cfg.loss.cls.start == cfg.loss.ptc.start == 0 and cfg.cam.seg_final_cam_from == 0
    assert cfg.cam.roi_final_cam_from == 300 and cfg.model.proto_start == 80
    assert (cfg.train.val_every, cfg.train.ckpt_every) == (demo.train.val_every, demo.train.ckpt_every)
    same, _ = _resolve(["--preset", "demo", "--set", "train.iters=600"])
    assert same == cfg
    unscaled, _ = _resolve(["--preset", "demo", "--iters", "300"])
    assert unscaled == demo
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump({"optim": {"warmup_iters": 7}}))
    mine, _ = _resolve(["--preset", "demo", "--iters", "600", "--set", "loss.lig.start=5", "--config", str(file)])
    assert (mine.loss.lig.start, mine.optim.warmup_iters, mine.loss.lil.start) == (5, 7, 121)


def test_scaled_schedule_is_saved_and_a_resume_raising_iters_keeps_it(voc_root, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "demo", "--data-root", str(voc_root), "--split", "train", "--val-split", "",
            "--out", str(run), "-q", *FAST]
    res = CliRunner().invoke(cli, [*args, "--iters", "2"])
    assert res.exit_code == 0, res.output
    first = yaml.safe_load((run / "config.yaml").read_text())
    # 2/300 of the demo's schedule: starts (k*60+1) -> round(k*60*2/300)+1, warm-up 30 -> 0, ROI CAM 150 -> 1
    assert (first["loss"]["lig"]["start"], first["loss"]["seg"]["start"]) == (1, 2)
    assert (first["optim"]["warmup_iters"], first["cam"]["roi_final_cam_from"], first["model"]["proto_start"]) \
        == (0, 1, 0)
    res = CliRunner().invoke(cli, [*args, "--iters", "4", "--resume", "auto"])
    assert res.exit_code == 0, res.output
    assert "trained 4 steps" in res.output and "config changed since the checkpoint: train.iters 2 -> 4" in res.output
    resumed = yaml.safe_load((run / "config.yaml").read_text())
    assert resumed["train"]["iters"] == 4
    for section in ("loss", "optim", "cam", "model"):
        assert resumed[section] == first[section]  # the schedule of the run under way, not 4/300 of the demo's
    changes = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert changes[-1]["changes"] == {"train.iters": {"old": 2, "new": 4}}
    # an explicit schedule value is still a change of the run
    refused = CliRunner().invoke(cli, [*args, "--iters", "5", "--resume", "auto", "--set", "loss.lig.start=3"])
    assert refused.exit_code == 2 and "loss.lig.start: checkpoint 1, requested 3" in refused.output


# -- 3. large photos ---------------------------------------------------------------------------------------------
def test_reader_bounds_large_images_and_their_masks(small_folder):
    plain = build_reader("folder", small_folder, "all", require_masks=True)
    assert plain.load_image("big").shape == (*BIG, 3) and plain.max_side == 0
    r = build_reader("folder", small_folder, "all", require_masks=True, max_side=800)
    image, mask = r.load_image("big"), r.load_mask("big")
    assert image.shape == (600, 800, 3) and mask.shape == (600, 800) and r.image_size("big") == (600, 800)
    assert set(np.unique(mask).tolist()) == {0, 12}  # nearest: no blended class values
    assert abs((mask == 12).mean() - 0.25) < 0.01  # the dog covers a quarter of the image, as at full size
    assert np.abs(image[200:400, 250:550].astype(int) - (200, 120, 40)).max() <= 2
    small = r.ids[0]
    assert r.load_image(small).shape == plain.load_image(small).shape  # 500 px: under the bound, unchanged
    from seco_labels.config import get_preset

    cfg = get_preset("demo")
    cfg.data.max_side = -1
    with pytest.raises(ConfigError, match="data.max_side=-1"):
        cfg.validate()


def test_max_side_defaults_by_layout_and_is_explicit_when_set(folder, voc_root):
    cfg, _ = _resolve(["--preset", "demo", "--data-root", str(folder)])
    assert cfg.data.max_side == 2 * cfg.data.crop_size == 256
    cfg, _ = _resolve(["--preset", "demo", "--data-root", str(folder), "--set", "data.crop_size=64"])
    assert cfg.data.max_side == 128
    cfg, _ = _resolve(["--preset", "demo", "--data-root", str(folder), "--set", "data.max_side=0"])
    assert cfg.data.max_side == 0
    cfg, _ = _resolve(["--preset", "demo", "--data-root", str(voc_root)])
    assert cfg.data.layout == "voc" and cfg.data.max_side == 0


def test_large_photo_trains_exports_bounded_masks_and_evaluates(small_folder, tmp_path):
    run, art = tmp_path / "run", tmp_path / "art"
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--data-root", str(small_folder), "--split", "all",
                                   "--val-split", "", "--iters", "1", "--out", str(run), "-q", *FAST])
    assert res.exit_code == 0, res.output
    assert "detected the folder layout" in res.output and "trained 1 steps" in res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (saved["layout"], saved["max_side"]) == ("folder", 128)
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(run / "last.pt"), "--split", "all", "--out",
                                   str(art), "--scales", "1.0", "--num-workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    with Image.open(art / "masks_all" / "big.png") as png:
        assert png.size == (128, 96)
    from seco_labels.artifacts import open_split

    split = open_split(art, "all")
    assert split.dataset.max_side == 128 and split.masks.load_mask("big").shape == (96, 128)
    image, mask = split.pseudo_labels()[split.pseudo_labels().ids.index("big")][:2]
    assert tuple(image.shape) == (3, 96, 128) and tuple(mask.shape) == (96, 128)  # images bounded as the masks
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art), "--split", "all", "--cams", "-q"])
    assert res.exit_code == 0, res.output  # scored at the GT's size: the pseudo masks and CAMs are scaled up
    assert json.loads((art / "metrics_all.json").read_text())["num_images"] == 5
    res = CliRunner().invoke(cli, ["report", str(art), "--split", "all"])  # bounded images with their masks
    assert res.exit_code == 0, res.output
    with Image.open(art / "report_all" / "thumbs" / "big.jpg") as thumb:
        assert thumb.size == (213, 160)
    # a segmenter on those masks trains on bounded images and validates and predicts at the image's own size
    seg = tmp_path / "seg"
    res = CliRunner().invoke(cli, ["fit-segmenter", "--labels", str(art), "--split", "all", "--val-split", "all",
                                   "--arch", "unet", "--encoder", "resnet18", "--encoder-weights", "random",
                                   "--model-kwargs", "{encoder_depth: 3, decoder_channels: [16, 8, 4]}",
                                   "--crop-size", "64", "--batch-size", "2", "--iters", "1", "--num-workers", "0",
                                   "--out", str(seg), "-q"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((seg / "config.yaml").read_text())["data"]["max_side"] == 128  # the export's
    out = tmp_path / "pred"
    res = CliRunner().invoke(cli, ["predict", "--model", str(seg), "--images", str(small_folder / "images"),
                                   "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    with Image.open(out / "big.png") as png:
        assert png.size == BIG[::-1]


def test_a_segmenter_predicts_bounded_images_at_their_own_size():
    import torch

    from seco_labels.segmenters import build_segmenter, predict_mask

    model = build_segmenter("unet", encoder="resnet18", classes=3, encoder_depth=3,
                            decoder_channels=[16, 8, 4]).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    image = (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8)
    with torch.no_grad():
        full = predict_mask(model, image, multiple=32)
        bounded = predict_mask(model, image, multiple=32, max_side=100)
    assert full.shape == bounded.shape == (200, 300)
    assert seen == [(224, 320), (96, 128)]  # its own size, then 67 x 100 padded to the multiple


# -- 4. --val-fraction draws validation images among those with a mask ------------------------------------------
def test_val_fraction_draws_validation_among_images_with_masks(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    everything = build_reader("folder", root, "all")
    unmasked = everything.ids[::3]
    for image_id in unmasked:
        everything.mask_path(image_id).unlink()
    train, val = write_folder_splits(root, 0.25, seed=0)
    r_train, r_val = build_reader("folder", root, "train"), build_reader("folder", root, "val")
    assert len(r_val) == round(0.25 * len(everything)) and r_val.has_masks
    assert set(unmasked) <= set(r_train.ids) and sorted(r_train.ids + r_val.ids) == sorted(everything.ids)
    shutil.rmtree(root / "splits")
    for image_id in everything.ids:
        everything.mask_path(image_id).unlink(missing_ok=True)
    with pytest.raises(DataError, match=r"no image under .*images has a mask in .*masks"):
        write_folder_splits(root, 0.25, seed=0, require_masks=True)
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--data-root", str(root), "--split", "train",
                                   "--val-fraction", "0.25", "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and f"has a mask in {root / 'masks'}" in res.output
    write_folder_splits(root, 0.25, seed=0)  # without masks, a held-out split to export: drawn among all images
    assert len(build_reader("folder", root, "val")) == round(0.25 * len(everything))


def test_a_run_from_before_max_side_resumes_with_it_off():
    from seco_labels.runtime.checkpoint import diff_configs

    from seco_labels.config import get_preset
    from seco_labels.config_io import config_to_dict

    new = config_to_dict(get_preset("demo"))
    old = json.loads(json.dumps(new))
    del old["data"]["max_side"]
    assert diff_configs(old, new) == []
    new["data"]["max_side"] = 256
    assert [(c.key, c.old, c.new) for c in diff_configs(old, new)] == [("data.max_side", 0, 256)]
