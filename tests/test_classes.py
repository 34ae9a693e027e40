"""A dataset's own classes: names from a file, the class count checked against the masks, the names carried into
the artifacts, the reports and the segmenters; and sizes that cannot train, refused before step 0."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from test_train import tiny_config

from seco_labels.cli import cli
from seco_labels.config_io import config_to_dict
from seco_labels.data import build_reader, read_class_names, voc_palette
from seco_labels.errors import ConfigError, DataError
from seco_labels.training.trainer import Trainer

PERSON, DOG = 15, 12  # VOC indices of the two classes the 3-class dataset keeps
NAMES = ["background", "person", "dog"]


@pytest.fixture(scope="module")
def three_classes(voc_root, tmp_path_factory) -> Path:
    """The demo images in VOC layout with 3 classes (0 background, 1 person, 2 dog) and no labels file."""
    root = tmp_path_factory.mktemp("three")
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for split in ("train", "val"):
        ids = (voc_root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            (root / "JPEGImages" / f"{i}.jpg").symlink_to(voc_root / "JPEGImages" / f"{i}.jpg")
            voc = np.asarray(Image.open(voc_root / "SegmentationClassAug" / f"{i}.png"))
            mask = np.where(voc == 255, 255, 0).astype(np.uint8)
            mask[voc == PERSON], mask[voc == DOG] = 1, 2
            png = Image.fromarray(mask, mode="P")
            png.putpalette(voc_palette())
            png.save(root / "SegmentationClassAug" / f"{i}.png")
    return root


def _tiny_cli_config(tmp_path: Path, root: Path, iters: int = 2) -> Path:
    """tiny_config as a config file for the CLI, on ``root``, without validation during training."""
    cfg = config_to_dict(tiny_config(root, iters=iters))
    cfg["train"]["val_every"] = 0
    cfg["data"]["num_workers"] = 0
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- the classes file ------------------------------------------------------------------------------------------
def test_classes_file_background_is_implied_or_first(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\nperson\n\ndog\n")
    assert read_class_names(f) == ("background", "person", "dog")
    f.write_text("Background\nperson\ndog\n")
    assert read_class_names(f) == ("Background", "person", "dog")


@pytest.mark.parametrize("text, message", [
    ("person\ndog\nPerson\n", "'Person' is both class 1 and class 3; names must differ"),
    ("# nothing\n", "names 0 class(es); give background plus at least one class"),
    ("background\n", "names 1 class(es)"),
])
def test_bad_classes_file_names_the_file_and_line(tmp_path, text, message):
    f = tmp_path / "classes.txt"
    f.write_text(text)
    with pytest.raises(ConfigError, match=f"classes file {f}.*" + message.replace("(", r"\(").replace(")", r"\)")):
        read_class_names(f)


def test_class_names_must_agree_with_the_count(voc_root):
    cfg = tiny_config(voc_root)
    cfg.data.class_names = ("background", "person", "dog")
    with pytest.raises(ConfigError, match=r"data.class_names names 3 classes but data.num_classes=21; give "
                                          r"--classes FILE alone \(it sets both\)"):
        cfg.validate()
    with pytest.raises(ConfigError, match="data.num_classes=21 but data.class_names names 3 classes"):
        build_reader("voc", voc_root, "val", num_classes=21, class_names=NAMES)


# -- a 3-class dataset -------------------------------------------------------------------------------------------
def test_three_class_masks_are_not_trained_as_21_voc_classes(three_classes, tmp_path):
    res = CliRunner().invoke(cli, ["train", "--config", str(_tiny_cli_config(tmp_path, three_classes)),
                                   "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 1, res.output
    assert "masks of split 'train'" in res.output and "use classes 1..2 only, but 21 classes" in res.output
    assert "--classes FILE" in res.output and "--set data.num_classes=3" in res.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any step


def test_own_class_names_reach_the_artifacts_reports_and_segmenter(three_classes, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("person\ndog\n")
    run, art, seg = tmp_path / "run", tmp_path / "art", tmp_path / "seg"
    res = CliRunner().invoke(cli, ["train", "--config", str(_tiny_cli_config(tmp_path, three_classes)),
                                   "--classes", str(classes), "--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert saved["class_names"] == NAMES and saved["num_classes"] == 3

    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(run / "last.pt"), "--split", "val",
                                   "--out", str(art), "--num-workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    with h5py.File(art / "cams_val.h5") as f:
        assert list(f.attrs["class_names"]) == NAMES and int(f.attrs["num_classes"]) == 3
    assert json.loads((art / "manifest_val.json").read_text())["class_names"] == NAMES

    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art), "--split", "val", "--quiet"])
    assert res.exit_code == 0, res.output
    with (art / "per_class_val.csv").open() as f:
        assert [row["name"] for row in csv.DictReader(f)] == NAMES

    res = CliRunner().invoke(cli, ["fit-segmenter", "--arch", "unet", "--encoder", "resnet18", "--model-kwargs",
                                   "{encoder_depth: 3, decoder_channels: [32, 16, 8]}", "--labels", str(art),
                                   "--split", "val", "--val-split", "val", "--out", str(seg), "--iters", "1",
                                   "--batch-size", "2", "--crop-size", "64", "--num-workers", "0", "--device", "cpu",
                                   "--quiet", "--encoder-weights", "random"])
    assert res.exit_code == 0, res.output
    seg_data = yaml.safe_load((seg / "config.yaml").read_text())["data"]
    assert seg_data["class_names"] == NAMES and seg_data["num_classes"] == 3  # taken from the export
    with (seg / "per_class.csv").open() as f:
        assert [row["name"] for row in csv.DictReader(f)] == NAMES


def test_gt_segmenter_on_three_class_masks_needs_the_classes(three_classes, tmp_path):
    args = ["fit-segmenter", "--arch", "unet", "--encoder", "resnet18", "--labels", "gt", "--data-root",
            str(three_classes), "--split", "train", "--val-split", "", "--out", str(tmp_path / "seg"), "--iters", "1",
            "--num-workers", "0", "--device", "cpu", "--quiet", "--encoder-weights", "random"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "use classes 1..2 only, but 21 classes" in res.output


def test_masks_with_no_foreground_at_all_are_refused(three_classes, tmp_path):
    root = tmp_path / "empty"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").symlink_to(three_classes / "JPEGImages")
    (root / "SegmentationClassAug").mkdir()
    ids = (three_classes / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:4]
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids))
    for i in ids:
        h, w = np.asarray(Image.open(three_classes / "SegmentationClassAug" / f"{i}.png")).shape
        Image.fromarray(np.zeros((h, w), np.uint8), mode="L").save(root / "SegmentationClassAug" / f"{i}.png")
    with pytest.raises(DataError, match=r"no image of split 'train' .* has a foreground class in its mask"):
        Trainer(tiny_config(root), tmp_path / "run", quiet=True)


# -- sizes that cannot train ------------------------------------------------------------------------------------
def test_crop_size_below_one_patch_at_a_scale_is_refused_up_front(voc_root, tmp_path):
    """A crop that is no multiple of 16 trains (the published patch embedding drops the remainder, see
    test_cli.py), but a scaled side below one 16 px patch has no token at all."""
    cfg_file = _tiny_cli_config(tmp_path, voc_root)
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg_file), "--set", "data.crop_size=24", "--out",
                                   str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert ("data.crop_size 24 at scale 0.5 gives 12 px, less than one of the backbone's 16 px patches; set "
            "data.crop_size to 32 or more, or other cam.scales") in " ".join(res.output.split())
    assert "Usage: seco train [OPTIONS]" in res.output or "Usage: cli train [OPTIONS]" in res.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    cfg = tiny_config(voc_root)
    cfg.cam.scales = (1.0, 0.25)  # 0.25 x 48 = 12 px
    cfg.data.crop_size = 48
    with pytest.raises(ConfigError, match=r"data.crop_size 48 at scale 0.25 gives 12 px.* set data.crop_size to "
                                          r"64 or more, or other cam.scales"):
        Trainer(cfg, tmp_path / "r2", quiet=True)
    cfg = tiny_config(voc_root)
    cfg.decompose.local_crop_size = 8
    with pytest.raises(ConfigError, match="decompose.local_crop_size=8 is smaller than one of the backbone's 16 px "
                                          "patches; set it to 16 or more"):
        Trainer(cfg, tmp_path / "r3", quiet=True)


def test_local_crops_of_any_size_from_one_patch_train(voc_root, tmp_path):
    """As published, a local crop that is no multiple of 16 px trains: its last pixels fill no patch."""
    cfg = tiny_config(voc_root)
    cfg.decompose.local_crop_size = 24
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    trainer.step = max(cfg.loss.lil.start, cfg.loss.lig.start)  # the local crops feed LIL and LIG
    out = trainer.train_step(next(iter(trainer.train_loader())))
    assert out.terms["lil"] is not None and out.terms["lig"] is not None
    assert all(v is None or math.isfinite(v) for v in out.terms.values())


def test_batch_size_that_does_not_divide_the_reservoir_names_values_that_do(voc_root, tmp_path):
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--data-root", str(voc_root), "--batch-size", "3",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert ("model.reservoir_size=480 must be a multiple of data.batch_size * (2 + decompose.num_local_crops) = "
            "3 * 12 = 36; keep the reservoir with a batch size of 1, 2, 4 or 5 (--batch-size), or keep the batch "
            "size with --set model.reservoir_size=468 or 504") in " ".join(res.output.split())
