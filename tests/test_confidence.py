"""The per-image confidence of a pseudo mask: the formula on hand-made CAMs and masks, and its record in an export
(HDF5 attributes, confidence_<split>.json, the readers), old folders without it included."""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from seco_labels.artifacts import (ArtifactFile, ArtifactWriter, MaskConfidence, confidence_path, open_split,
                                   read_confidence, read_manifest)
from seco_labels.cli import cli
from seco_labels.data import build_reader
from seco_labels.errors import ConfigError, DataError
from seco_labels.evaluation.evaluate import evaluate_masks
from seco_labels.evaluation.report import write_report
from seco_labels.inference.confidence import CONFIDENCE_SCORE, mask_confidence
from seco_labels.inference.export import ExportOptions, export_split
from seco_labels.segmenters.config import SegDataConfig, SegmenterConfig
from seco_labels.segmenters.data import open_labels

HIGH, LOW = 0.7, 0.25


def _square(h=20, w=20, box=(5, 15, 5, 15)):
    """A (h, w) boolean map, True inside box [y0, y1) x [x0, x1)."""
    m = np.zeros((h, w), bool)
    m[box[0]:box[1], box[2]:box[3]] = True
    return m


# -- the formula -------------------------------------------------------------------------------------------------
def test_a_clear_mask_scores_one():
    inside = _square()
    cam = inside[None].astype(np.float32)  # class 3: 1 inside the square, 0 outside
    mask = np.where(inside, 3, 0).astype(np.uint8)
    c = mask_confidence(cam, np.array([3]), mask, high=HIGH, low=LOW)
    assert c.keys == (0, 3) and c.classes == pytest.approx((1.0, 1.0)) and c.image == pytest.approx(1.0)


def test_a_lost_class_scores_zero_and_halves_the_image():
    cam = np.zeros((1, 20, 20), np.float32)
    mask = np.zeros((20, 20), np.uint8)  # class 3 is tagged but nowhere in the mask
    c = mask_confidence(cam, np.array([3]), mask, high=HIGH, low=LOW)
    assert c.by_class() == pytest.approx({0: 1.0, 3: 0.0}) and c.image == pytest.approx(0.5)


def test_a_close_rival_class_lowers_the_margin():
    inside = _square()
    mask = np.where(inside, 3, 0).astype(np.uint8)

    def score(rival):
        cam = np.stack([inside * 1.0, inside * rival]).astype(np.float32)  # class 3 at 1, class 8 at `rival`
        return mask_confidence(cam, np.array([3, 8]), mask, high=HIGH, low=LOW).by_class()[3]

    assert score(0.0) == pytest.approx(1.0)
    assert score(0.85) == pytest.approx(np.sqrt(0.15 / 0.3))  # margin 1 - 0.85 over the room 1 - 0.7
    assert score(0.95) < score(0.85) < score(0.5) == pytest.approx(1.0)  # rivals below `high` cost nothing


def test_uncertain_pixels_lower_the_certainty():
    inside = _square()
    cam = inside[None].astype(np.float32)
    clear = mask_confidence(cam, np.array([3]), np.where(inside, 3, 0).astype(np.uint8), high=HIGH, low=LOW)
    half = np.where(inside, 3, 0).astype(np.uint8)
    half[5:10, 5:15] = 255  # half of the class's pixels left uncertain
    c = mask_confidence(cam, np.array([3]), half, high=HIGH, low=LOW)
    assert c.by_class()[3] == pytest.approx(np.sqrt(0.5))  # margin 1, certainty 50 / 100
    assert c.by_class()[3] < clear.by_class()[3] and c.by_class()[0] < clear.by_class()[0]
    undecided = np.where(inside, 255, 0).astype(np.uint8)  # the whole class uncertain: lost
    assert mask_confidence(cam, np.array([3]), undecided, high=HIGH, low=LOW).by_class()[3] == 0.0


def test_an_untagged_image_is_background_only():
    c = mask_confidence(np.zeros((0, 7, 9), np.float32), np.zeros(0, np.int64), np.zeros((7, 9), np.uint8),
                        high=HIGH, low=LOW)
    assert c.keys == (0,) and c.image == pytest.approx(1.0)


def test_a_mask_without_background_scores_its_classes_only():
    cam = np.ones((1, 6, 6), np.float32)
    c = mask_confidence(cam, np.array([2]), np.full((6, 6), 2, np.uint8), high=HIGH, low=LOW)
    assert c.keys == (2,) and c.image == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_shape_range_and_determinism_on_random_input(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 4))
    keys = np.sort(rng.choice(np.arange(1, 21), size=k, replace=False))
    cam = rng.random((k, 31, 17)).astype(np.float32)
    mask = rng.choice(np.array([0, 255, *keys]), size=(31, 17)).astype(np.uint8)
    high, low = sorted(rng.random(2))[::-1]
    c = mask_confidence(cam, keys, mask, high=high, low=low)
    assert c.keys == (0, *keys.tolist()) and len(c.classes) == k + 1
    assert all(0.0 <= v <= 1.0 for v in (c.image, *c.classes))
    assert c.image == pytest.approx(np.mean(c.classes))
    assert mask_confidence(cam.copy(), keys.copy(), mask.copy(), high=high, low=low) == c  # bit-identical


def test_thresholds_at_the_ends_do_not_divide_by_zero():
    inside = _square()
    cam = inside[None].astype(np.float32)
    mask = np.where(inside, 3, 0).astype(np.uint8)
    for high, low in ((1.0, 0.0), (0.0, 0.0), (1.0, 1.0)):
        c = mask_confidence(cam, np.array([3]), mask, high=high, low=low)
        assert all(0.0 <= v <= 1.0 for v in (c.image, *c.classes)), (high, low)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="disagree"):
        mask_confidence(np.zeros((2, 4, 4)), np.array([1]), np.zeros((4, 4), np.uint8), high=HIGH, low=LOW)
    with pytest.raises(ValueError, match="disagree"):
        mask_confidence(np.zeros((1, 4, 4)), np.array([1]), np.zeros((4, 5), np.uint8), high=HIGH, low=LOW)


def test_the_record_round_trips_through_json_and_attributes():
    c = MaskConfidence(0.5, (0, 4, 9), (0.25, 0.5, 0.75))
    assert MaskConfidence.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert MaskConfidence.from_attrs(c.to_attrs()) == c  # exact in float32 for these values
    assert MaskConfidence.from_attrs({}) is None
    with pytest.raises(ValueError, match="3 keys but 2"):
        MaskConfidence(0.5, (0, 4, 9), (0.25, 0.5))


# -- in an export ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny_checkpoint, voc_root, tmp_path_factory):
    """voc-demo's val split exported (h5 + png) at one small scale."""
    art = tmp_path_factory.mktemp("confidence-art")
    opts = ExportOptions(scales=(1.0,), flip=False, input_size=128, batch_size=4, num_workers=0, device="cpu")
    result = export_split(tiny_checkpoint, "val", art, data_root=str(voc_root), options=opts, quiet=True)
    return art, opts, result


def test_every_image_has_its_score_in_the_h5_file_and_the_json_file(exported):
    art, _, result = exported
    split = open_split(art, "val")
    ids = split.ids()
    from_json = read_confidence(art, "val")
    assert set(from_json) == ids
    with h5py.File(art / "cams_val.h5") as f:
        for i in ids:
            keys = [int(k) for k in f["cams"][i].attrs["keys"]]
            c = from_json[i]
            assert c.keys == (*((0,) if 0 in c.keys else ()), *keys)  # background, then every tagged class
            from_h5 = MaskConfidence.from_attrs(f["masks"][i].attrs)
            assert from_h5.keys == c.keys
            np.testing.assert_allclose(from_h5.classes, c.classes, atol=1e-6)  # float32 in HDF5
            assert 0 <= c.image <= 1 and c.image == pytest.approx(np.mean(c.classes), abs=1e-6)  # 6 decimals
    assert split.confidences() == from_json and ArtifactFile(art / "cams_val.h5").confidence(next(iter(ids)))
    assert json.loads(confidence_path(art, "val").read_text())["score"] == CONFIDENCE_SCORE
    assert split.record["confidence_score"] == read_manifest(art, "val")["confidence_score"] == CONFIDENCE_SCORE
    summary = json.loads((art / "export_val.json").read_text())["confidence"]
    assert summary == result["confidence"] and summary["images"] == len(ids)
    assert summary["min"] <= summary["median"] <= summary["max"] <= 1
    assert not (art / ".parts_val").exists()


def test_the_score_is_what_the_formula_gives_on_the_stored_cams_and_masks(exported):
    art, _, _ = exported
    split = open_split(art, "val")
    high, low = split.record["high_thre"], split.record["low_thre"]
    for i, c in split.confidences().items():
        cam, keys = split.cams.load_cam(i)
        again = mask_confidence(cam, keys, split.masks.load_mask(i), high=high, low=low)
        # the export scores the float32 CAMs, the file holds them in float16
        assert again.keys == c.keys and again.classes == pytest.approx(c.classes, abs=0.02)


def test_a_png_export_and_a_rerun_give_the_same_scores(exported, tiny_checkpoint, voc_root, tmp_path):
    art, opts, _ = exported
    png = tmp_path / "png"
    opts = ExportOptions(**{**opts.__dict__, "formats": ("png",)})
    export_split(tiny_checkpoint, "val", png, data_root=str(voc_root), options=opts, quiet=True)
    assert not (png / "cams_val.h5").exists() and not (png / ".parts_val").exists()
    assert confidence_path(png, "val").read_bytes() == confidence_path(art, "val").read_bytes()
    assert open_split(png, "val").confidences() == read_confidence(art, "val")


def test_a_resumed_export_keeps_the_earlier_scores(exported, tiny_checkpoint, voc_root, tmp_path):
    art, opts, _ = exported
    ids = sorted(open_split(art, "val").ids())
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    split_file = root / "ImageSets" / "Segmentation" / "val.txt"
    split_file.write_text("\n".join(ids[:5]) + "\n")
    out = tmp_path / "resumed"
    export_split(tiny_checkpoint, "val", out, data_root=str(root), options=opts, quiet=True)
    split_file.write_text("\n".join(ids) + "\n")
    again = export_split(tiny_checkpoint, "val", out, data_root=str(root), options=opts, quiet=True)
    assert again["skipped_done"] == 5 and again["confidence"]["images"] == len(ids)
    assert read_confidence(out, "val") == read_confidence(art, "val")
    with h5py.File(out / "cams_val.h5") as f:  # the first run's images kept their attributes in the new file
        assert all("confidence" in f["masks"][i].attrs for i in ids)


def _strip_scores(art, split="val"):
    """An artifact folder as exports made before the score was recorded left it."""
    confidence_path(art, split).unlink()
    with h5py.File(art / f"cams_{split}.h5", "a") as f:
        del f.attrs["confidence_score"]
        for ds in f["masks"].values():
            for key in ("confidence", "confidence_keys", "class_confidence"):
                del ds.attrs[key]
    manifest = json.loads((art / f"manifest_{split}.json").read_text())
    del manifest["confidence_score"]
    (art / f"manifest_{split}.json").write_text(json.dumps(manifest))


def test_an_old_folder_without_scores_still_reads_evaluates_and_reports(exported, voc_root, tmp_path):
    art, _, _ = exported
    old = tmp_path / "old"
    shutil.copytree(art, old)
    _strip_scores(old)
    split = open_split(old, "val")
    assert split.confidences() == {} and split.cams.confidence(next(iter(split.ids()))) is None
    assert read_confidence(old, "val") is None
    reader = split.open_images(root=voc_root)
    assert evaluate_masks(split.masks, reader).summary()["miou"] is not None
    assert len(split.pseudo_labels(data_root=voc_root)) == len(split.ids())
    page = write_report(old, "val", data_root=voc_root, thumb_height=32).read_text()
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S)[1])
    assert not data["has_confidence"] and all(im["confidence"] is None for im in data["images"])


def test_the_h5_attributes_serve_when_the_json_file_is_gone(exported, tmp_path):
    art, _, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(art, copy)
    confidence_path(copy, "val").unlink()
    from_h5 = open_split(copy, "val").confidences()
    assert set(from_h5) == set(read_confidence(art, "val"))
    for i, c in read_confidence(art, "val").items():
        assert from_h5[i].keys == c.keys and from_h5[i].image == pytest.approx(c.image, abs=1e-6)


def test_a_damaged_confidence_file_is_named(exported, tmp_path):
    art, _, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(art, copy)
    confidence_path(copy, "val").write_text("{not json")
    with pytest.raises(DataError, match="confidence_val.json is unreadable"):
        open_split(copy, "val").confidences()


# -- fit-segmenter --min-confidence / --keep-share ----------------------------------------------------------------
@pytest.fixture(scope="module")
def scored_labels(voc_root, tmp_path_factory):
    """An 8-image train split and 1-image val split of voc-demo, and an export of its GT masks (no SeCo model) whose
    i-th image has confidence i / 10."""
    root = tmp_path_factory.mktemp("voc8")
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (root / name).symlink_to(voc_root / name)
    lists = voc_root / "ImageSets" / "Segmentation"
    train = (lists / "train.txt").read_text().split()[:8]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text((lists / "val.txt").read_text().split()[0] + "\n")
    reader = build_reader("voc", root, "train", require_masks=True)
    art = tmp_path_factory.mktemp("scored")
    attrs = {"dataset_root": str(root), "layout": "voc", "num_classes": reader.num_classes,
             "class_names": reader.class_names, "ignore_index": 255, "confidence_score": "test"}
    scores = {}
    with ArtifactWriter(art, "train", attrs, formats=("png",)) as writer:
        for n, i in enumerate(reader.ids):
            scores[i] = n / 10
            writer.add(i, np.zeros((0, *reader.image_size(i)), np.float32), np.zeros(0, np.int64),
                       reader.load_mask(i), confidence=MaskConfidence(n / 10, (0,), (n / 10,)))
    return root, art, scores


def _seg_data(root, art, **over) -> SegDataConfig:
    d = SegDataConfig(labels=str(art), root=str(root), split="train", val_split="val", **over)
    SegmenterConfig(data=d).validate()
    return d


def test_min_confidence_keeps_the_images_at_or_above_it(scored_labels):
    root, art, scores = scored_labels
    d = _seg_data(root, art, min_confidence=0.3)
    labels, pseudo = open_labels(d)
    expected = [i for i in scores if scores[i] >= 0.3 - 1e-9]
    assert labels.ids == pseudo.ids == expected and len(expected) == 5
    assert d.kept_images == 5 and labels.selection.startswith("kept 5 of 8 images")
    _, mask = pseudo[0]  # the dataset's first item is the first kept image
    np.testing.assert_array_equal(mask.numpy(), labels.reader.load_mask(expected[0]))


def test_keep_share_keeps_the_most_confident(scored_labels):
    root, art, scores = scored_labels
    d = _seg_data(root, art, keep_share=0.25)
    labels, pseudo = open_labels(d)
    top = sorted(scores, key=scores.get)[-2:]  # 0.25 x 8 images
    assert labels.ids == pseudo.ids == [i for i in scores if i in top] and d.kept_images == 2
    d = _seg_data(root, art)
    labels, _ = open_labels(d)
    assert len(labels.ids) == 8 and d.kept_images is None and labels.selection == ""


def test_the_filter_is_refused_where_it_cannot_work(scored_labels, tmp_path):
    root, art, _ = scored_labels
    with pytest.raises(ConfigError, match="--labels gt has none"):
        _seg_data(root, "gt", min_confidence=0.5)
    with pytest.raises(ConfigError, match="one of --min-confidence and --keep-share"):
        _seg_data(root, art, min_confidence=0.5, keep_share=0.5)
    with pytest.raises(ConfigError, match="data.min_confidence=1.5"):
        _seg_data(root, art, min_confidence=1.5)
    with pytest.raises(ConfigError, match="data.keep_share=0"):
        _seg_data(root, art, keep_share=0.0)
    with pytest.raises(DataError, match=r"has confidence >= 0.95 \(the highest is 0.7000\)"):
        open_labels(_seg_data(root, art, min_confidence=0.95))
    old = tmp_path / "old"
    shutil.copytree(art, old)
    confidence_path(old, "train").unlink()
    with pytest.raises(DataError, match="records no confidence for split 'train'"):
        open_labels(_seg_data(root, old, keep_share=0.5))


def test_cli_prints_and_records_the_count_kept(scored_labels, tmp_path):
    root, art, _ = scored_labels
    run = tmp_path / "run"
    args = ["fit-segmenter", "--arch", "unet", "--encoder", "tu-mobilenetv3_small_050", "--model-kwargs",
            "{encoder_depth: 3, decoder_channels: [32, 16, 8]}", "--data-root", str(root), "--split", "train",
            "--val-split", "val", "--iters", "1", "--batch-size", "2", "--crop-size", "64", "--num-workers", "0",
            "--device", "cpu", "--quiet", "--encoder-weights", "random", "--labels", str(art), "--out", str(run)]
    res = CliRunner().invoke(cli, [*args, "--min-confidence", "0.5"])
    assert res.exit_code == 0, res.output
    assert "kept 3 of 8 images of split 'train': confidence >= 0.5" in res.output
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (data["min_confidence"], data["keep_share"], data["kept_images"]) == (0.5, None, 3)
    res = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "gt"), "--labels", "gt", "--keep-share", "0.5"])
    assert res.exit_code == 2 and "--labels gt has none" in res.output


# -- benchmarks/confidence.py: the rank correlation ---------------------------------------------------------------
def test_spearman_uses_average_ranks():
    from benchmarks.confidence import ranks, spearman

    np.testing.assert_array_equal(ranks([0.3, 0.1, 0.3, 0.9]), [2.5, 1.0, 2.5, 4.0])  # ties share their ranks
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3])) and np.isnan(spearman([1, 2], [1, 2]))
