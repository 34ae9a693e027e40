"""The folder layout (images/ + tags.csv): reading, its errors, drawn splits, and a run through train -> export ->
evaluate on the demo images converted to it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import make_folder_dataset

from seco_labels.cli import cli
from seco_labels.data import VOC_CLASSES, build_reader, dataset_classes, write_folder_splits
from seco_labels.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def folder(voc_root, tmp_path_factory):
    return make_folder_dataset(voc_root, tmp_path_factory.mktemp("folder"))


def test_reads_the_same_images_tags_and_masks_as_the_voc_layout(folder, voc_root):
    voc = build_reader("voc", voc_root, "train")
    r = build_reader("folder", folder, "all", require_masks=True)
    assert r.class_names == list(VOC_CLASSES) and r.num_classes == 21 and len(r) == len(voc)
    assert r.ids[:2] == [voc.ids[0], f"sub__{voc.ids[1]}"]  # '/' of a nested folder becomes '__'
    for image_id, voc_id in zip(r.ids[:4], voc.ids[:4]):
        assert r.image_path(image_id).is_file() and r.image_path(image_id).stem == voc_id
        np.testing.assert_array_equal(r.tags(image_id), voc.tags(voc_id))
        np.testing.assert_array_equal(r.load_mask(image_id), voc.load_mask(voc_id))
        np.testing.assert_array_equal(r.load_image(image_id), voc.load_image(voc_id))
    assert dataset_classes("folder", folder) == VOC_CLASSES and dataset_classes("voc", voc_root) is None


def _write(root, tags_csv, images=("a.jpg", "b/c.png")):
    from PIL import Image

    for rel in images:
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6)).save(root / "images" / rel)
    (root / "tags.csv").write_text(tags_csv)
    return root


def test_classes_come_from_the_tags_sorted_and_matched_case_insensitively(tmp_path, caplog):
    root = _write(tmp_path, "image,tags\na.jpg,Dog;cat\nb/c,\n")
    with caplog.at_level(logging.WARNING):
        r = build_reader("folder", root, "all")
    assert r.class_names == ["background", "cat", "Dog"] and r.ids == ["a", "b__c"]
    np.testing.assert_array_equal(r.tags("a"), [1, 1])
    np.testing.assert_array_equal(r.tags("b__c"), [0, 0])  # no tags: allowed, background only, and said
    assert "1 image(s)" in caplog.text and "background only" in caplog.text
    (root / "tags.csv").write_text("image,tags\nimages/a.jpg,DOG\nb/c.png,cat;dog\n")  # any spelling, one class
    assert build_reader("folder", root, "all").class_names == ["background", "cat", "DOG"]
    (root / "tags.jsonl").write_text('{"image": "a.jpg", "tags": ["owl"]}\n')
    (root / "tags.csv").unlink()
    assert build_reader("folder", root, "all").class_names == ["background", "owl"]
    with pytest.raises(ConfigError, match="data.num_classes=21 but .* has 2 classes"):
        build_reader("folder", root, "all", num_classes=21)


@pytest.mark.parametrize("tags_csv, classes, message", [
    ("image,tags\na.jpg,cat;zebra\n", "cat\ndog\n", r"tags.csv line 2: class 'zebra' of 'a.jpg' is not in the classes "
                                                    r"of .*classes.txt; add it to .*classes.txt or fix the tag"),
    ("image,tags\na.jpg,cat\nnope.jpg,dog\n", None, r"tags.csv line 3: image 'nope.jpg' not found under .*images; "
                                                     r"remove the line or add the image"),
    ("image,tags\na.jpg,cat\nb/c.png,dog\na,dog\n", None, r"tags.csv lines 2 and 4 both tag 'a'; merge them"),
    ("file,labels\na.jpg,cat\n", None, r"must start with the header line 'image,tags'"),
    ("image,tags\na.jpg,cat,dog\n", None, r"line 2 has 3 columns; quote the tags or separate them with ';'"),
    ("image,tags\na.jpg,cat;Background\n", None, r"class 'Background' of 'a.jpg' is background, which is never tagged"),
])
def test_bad_tags_files_name_the_line_and_the_fix(tmp_path, tags_csv, classes, message):
    root = _write(tmp_path, tags_csv)
    if classes:
        (root / "classes.txt").write_text(classes)
    with pytest.raises(DataError, match=message):
        build_reader("folder", root, "all")


def test_missing_pieces_are_explained(tmp_path):
    with pytest.raises(DataError, match=r"images not found: the folder layout keeps its images in DATA/images/"):
        build_reader("folder", tmp_path, "all")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"no tags file in .*: write .*tags.csv \(header 'image,tags'"):
        build_reader("folder", tmp_path, "all")
    root = _write(tmp_path, "image,tags\na.jpg,cat\n")
    with pytest.raises(DataError, match=r"splits/train.txt not found .*Use --split all .*--val-fraction"):
        build_reader("folder", root, "train")
    (root / "images" / "a.png").write_bytes((root / "images" / "a.jpg").read_bytes())
    with pytest.raises(DataError, match=r"a.jpg and .*a.png both have the id 'a'"):
        build_reader("folder", root, "all")


def test_drawn_splits_are_seeded_recorded_and_kept(folder, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(folder, root)
    train, val = write_folder_splits(root, 0.25, seed=3)
    assert val.read_text().startswith("# drawn by seco_labels: --val-fraction 0.25 --split-seed 3\n")
    r_train, r_val = build_reader("folder", root, "train"), build_reader("folder", root, "val")
    everything = build_reader("folder", root, "all").ids
    assert len(r_val) == round(0.25 * len(everything)) and sorted(r_train.ids + r_val.ids) == sorted(everything)
    assert write_folder_splits(root, 0.25, seed=3) == (train, val)  # the same draw: kept as it is
    with pytest.raises(ConfigError, match=r"val.txt exists and is not the draw of --val-fraction 0.25 --split-seed 4"):
        write_folder_splits(root, 0.25, seed=4)


def test_train_export_evaluate_on_the_folder_layout(voc_root, tmp_path):
    """The demo images as a user's folder (no classes.txt: classes from the tags), trained, exported, scored."""
    from test_train import tiny_config

    from seco_labels.artifacts import open_split
    from seco_labels.inference.export import ExportOptions, export_split
    from seco_labels.training.trainer import Trainer

    data = make_folder_dataset(voc_root, tmp_path / "data", with_classes=False, with_masks=False)
    write_folder_splits(data, 0.25, seed=0)
    cfg = tiny_config(data, iters=2)
    cfg.data.layout, cfg.data.train_split, cfg.train.val_every, cfg.data.val_split = "folder", "train", 0, ""
    run = tmp_path / "run"
    Trainer(cfg, run, quiet=True).fit()
    named = build_reader("folder", data, "all").class_names
    assert cfg.data.class_names == tuple(named) and cfg.data.num_classes == len(named) < 21
    saved = (run / "config.yaml").read_text()
    assert "layout: folder" in saved and f"num_classes: {len(named)}" in saved
    art = tmp_path / "art"
    result = export_split(run / "last.pt", "val", art, options=ExportOptions(scales=(1.0,), num_workers=0),
                          quiet=True)
    val = build_reader("folder", data, "val")
    assert result["exported"] == len(val)
    split = open_split(art, "val")
    assert split.dataset.layout == "folder" and split.dataset.class_names == tuple(named)
    assert split.ids() == set(val.ids) and any(i.startswith("sub__") for i in val.ids)
    for image_id in val.ids:
        mask = split.masks.load_mask(image_id)
        tagged = {k + 1 for k in val.tags(image_id).nonzero()[0]}
        assert mask.shape == val.image_size(image_id) and set(np.unique(mask).tolist()) <= {0, 255} | tagged
    classes = json.loads((art / "classes.json").read_text())
    assert [c["name"] for c in classes] == list(named) and classes[1]["color"] == [128, 0, 0]
    res = CliRunner().invoke(cli, ["show", "--pred", str(art), "--split", "val", "-n", "2", "--no-gt", "-q"])
    assert res.exit_code == 0, res.output
    assert len(list((art / "show_val").glob("*.png"))) == 2
    seg = tmp_path / "seg"
    res = CliRunner().invoke(cli, ["fit-segmenter", "--arch", "unet", "--encoder", "resnet18", "--model-kwargs",
                                   "{encoder_depth: 3, decoder_channels: [32, 16, 8]}", "--labels", str(art),
                                   "--split", "val", "--val-split", "", "--out", str(seg), "--iters", "1",
                                   "--batch-size", "2", "--crop-size", "64", "--num-workers", "0", "-q",
                                   "--encoder-weights", "random"])
    assert res.exit_code == 0, res.output
    seg_data = yaml.safe_load((seg / "config.yaml").read_text())["data"]
    assert (seg_data["layout"], seg_data["root"], seg_data["class_names"]) == ("folder", str(data), list(named))


def test_evaluate_scores_against_the_folder_masks(folder, tmp_path):
    """GT masks of the folder layout: perfect predictions score 1, one class removed scores below."""
    import shutil

    r = build_reader("folder", folder, "all", require_masks=True)
    preds = tmp_path / "preds"
    preds.mkdir()
    for image_id in r.ids:
        shutil.copyfile(r.mask_path(image_id), preds / f"{image_id}.png")
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(preds), "--split", "all", "--gt", str(folder),
                                   "--layout", "folder", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads((preds / "metrics_all.json").read_text())
    assert doc["miou"] == 1.0 and doc["num_images"] == len(r.ids)
    assert [c["name"] for c in doc["per_class"]] == list(VOC_CLASSES)


def test_train_cli_draws_the_splits_then_trains(folder, tmp_path):
    import shutil

    from test_cli import FAST

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--out", str(tmp_path / "voc"), "--val-fraction", "0.2"])
    assert res.exit_code == 2 and "--val-fraction draws the split lists of the folder layout, not of layout 'voc'" \
        in res.output
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--layout", "folder", "--data-root", str(data),
                                   "--split", "train", "--val-split", "val", "--val-fraction", "0.25", "--split-seed",
                                   "1", "--iters", "1", "--out", str(run), "-q", *FAST])
    assert res.exit_code == 0, res.output
    val = (data / "splits" / "val.txt").read_text().splitlines()
    assert val[0] == "# drawn by seco_labels: --val-fraction 0.25 --split-seed 1" and len(val) - 1 == 8  # of 32
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("cam_miou" in r for r in log)  # validated on the drawn val split's GT masks
