"""`seco evaluate` and seco_labels.evaluation.evaluate on the real VOC ground truth: identities, hand-computed
perturbations, the CAM threshold sweep, reports, and errors that name the id."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from seco_labels.cli import cli
from seco_labels.data import VOC_CLASSES, tags_from_mask, voc_palette
from seco_labels.errors import DataError
from seco_labels.evaluation.evaluate import (
    ArrayCamSource,
    MaskSource,
    PngMaskFolder,
    evaluate_masks,
    open_ground_truth,
    sweep_cam_threshold,
    write_reports,
)

N_IDS = 50  # a subset of val keeps the suite fast


def _save(mask: np.ndarray, path: Path) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(path)


@pytest.fixture(scope="module")
def gt(voc_gt_root):
    """The masks-only VOC 2012 GT (no images) and the first N_IDS val ids."""
    reader = open_ground_truth(voc_gt_root, "val")
    return reader, reader.ids[:N_IDS]


@pytest.fixture
def pred_dir(gt, tmp_path):
    """A prediction folder holding exact copies of the GT masks of the subset."""
    reader, ids = gt
    folder = tmp_path / "masks_val"
    folder.mkdir()
    for i in ids:
        shutil.copyfile(reader.mask_path(i), folder / f"{i}.png")
    return folder


def _counts(reader, ids):
    """(K,) labelled GT pixels per class over ids."""
    counts = np.zeros(reader.num_classes, dtype=np.int64)
    for i in ids:
        m = reader.load_mask(i)
        counts += np.bincount(m[m != 255], minlength=reader.num_classes)
    return counts


def _id_with_class(reader, ids):
    """An id and a foreground class present in its mask (the first such, in list order)."""
    for i in ids:
        classes = [c for c in np.unique(reader.load_mask(i)) if 0 < c < 255]
        if classes:
            return i, int(classes[0])
    raise AssertionError("no foreground class in the subset")


def test_masks_only_reader_needs_no_images(voc_gt_root, gt):
    reader, _ = gt
    assert not (voc_gt_root / "JPEGImages").exists()
    listed = (voc_gt_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert reader.ids == listed and reader.num_classes == 21
    mask = reader.load_mask(reader.ids[0])
    assert mask.dtype == np.uint8 and mask.ndim == 2


def test_gt_against_itself_is_perfect(gt, pred_dir):
    reader, ids = gt
    res = evaluate_masks(pred_dir, reader, ids=ids)
    s = res.summary()
    assert s["miou"] == 1.0 and s["miou_gt"] == 1.0 and s["pixel_accuracy"] == 1.0
    assert s["mean_precision"] == 1.0 and s["mean_recall"] == 1.0
    assert s["fp_tp"] == 0.0 and s["fp_tp_bg"] == 0.0 and s["fp_tp_fg"] == 0.0
    assert s["num_images"] == N_IDS and s["pred_ignored_pixels"] == 0
    present = _counts(reader, ids) > 0
    for row in res.per_class_rows():
        if present[row["index"]]:
            assert row["iou"] == row["precision"] == row["recall"] == 1.0 and row["fp_tp"] == 0.0
        else:
            assert row["iou"] is None


def test_erasing_one_class_in_one_mask_gives_the_hand_computed_iou(gt, pred_dir):
    reader, ids = gt
    image_id, c = _id_with_class(reader, ids)
    mask = reader.load_mask(image_id)
    erased = int((mask == c).sum())
    pert = mask.copy()
    pert[mask == c] = 0  # class c -> background in this one mask
    _save(pert, pred_dir / f"{image_id}.png")

    counts = _counts(reader, ids)
    res = evaluate_masks(pred_dir, reader, ids=ids)
    iou = res.confusion.iou()
    # c keeps counts[c] - erased of its pixels and gains no false positive
    assert iou[c] == pytest.approx((counts[c] - erased) / counts[c])
    # background gains `erased` false positives and loses nothing
    assert iou[0] == pytest.approx(counts[0] / (counts[0] + erased))
    assert res.confusion.precision()[c] == 1.0
    assert res.confusion.recall()[c] == pytest.approx((counts[c] - erased) / counts[c])
    present = np.flatnonzero(counts > 0)
    expected = np.ones(reader.num_classes)
    expected[c], expected[0] = iou[c], iou[0]
    assert res.confusion.miou() == pytest.approx(expected[present].mean())
    assert res.summary()["fp_tp"] == 0.0  # no foreground pixel is wrong, only missing


def test_relabelling_one_class_as_another_gives_the_hand_computed_fp_tp(gt, pred_dir):
    reader, ids = gt
    image_id, c = _id_with_class(reader, ids)
    d = 1 if c != 1 else 2  # relabel c as d: a foreground-foreground confusion
    mask = reader.load_mask(image_id)
    moved = int((mask == c).sum())
    pert = mask.copy()
    pert[mask == c] = d
    # and leave a background strip unlabelled
    strip = (mask[:5] == 0).sum()
    pert[:5][mask[:5] == 0] = 255
    _save(pert, pred_dir / f"{image_id}.png")

    counts = _counts(reader, ids)
    res = evaluate_masks(pred_dir, reader, ids=ids)
    s = res.summary()
    tp_fg = counts[1:].sum() - moved
    assert s["fp_tp"] == pytest.approx(moved / tp_fg)
    assert s["fp_tp_fg"] == pytest.approx(moved / tp_fg) and s["fp_tp_bg"] == 0.0
    assert res.confusion.iou()[d] == pytest.approx(counts[d] / (counts[d] + moved))
    rows = {r["name"]: r for r in res.per_class_rows()}
    assert rows[VOC_CLASSES[d]]["fp_fg"] == moved and rows[VOC_CLASSES[d]]["fp_bg"] == 0
    if counts[d]:
        assert rows[VOC_CLASSES[d]]["fp_tp"] == pytest.approx(moved / counts[d])
    assert s["pred_ignored_pixels"] == strip
    assert rows["background"]["recall"] == pytest.approx(1.0)  # unlabelled pixels are skipped, not errors


class _DictMasks:
    """A MaskSource held in memory (what an HDF5 source will look like)."""

    name = "<dict>"

    def __init__(self, masks):
        self.masks = masks

    def ids(self):
        return set(self.masks)

    def load_mask(self, image_id):
        return self.masks[image_id]


def _planted_cams(reader, ids, t_star, seed=0):
    """CAMs whose foreground scores lie in (t_star, 1] on the class's GT pixels and in [0, t_star) elsewhere."""
    rng = np.random.default_rng(seed)
    cams = {}
    for i in ids:
        mask = reader.load_mask(i)
        keys = np.flatnonzero(tags_from_mask(mask, reader.num_classes)) + 1
        cam = np.empty((keys.size, *mask.shape), dtype=np.float32)
        for j, c in enumerate(keys):
            on = mask == c
            cam[j] = np.where(on, rng.uniform(t_star + 0.001, 1.0, mask.shape), rng.uniform(0, t_star - 0.001, mask.shape))
        cams[i] = (cam.astype(np.float16), keys)
    return cams


def test_threshold_sweep_finds_the_planted_threshold(gt):
    reader, ids = gt
    ids = ids[:12]
    cams = _planted_cams(reader, ids, 0.45)
    sweep = sweep_cam_threshold(ArrayCamSource(cams), reader, ids=ids)
    assert sweep.best_threshold == pytest.approx(0.45)
    assert sweep.best_miou == pytest.approx(1.0)
    j = sweep.thresholds.index(0.45)
    assert sweep.mious[j - 1] < 1.0 and sweep.mious[j + 1] < 1.0
    assert sweep.best.info["cam_threshold"] == pytest.approx(0.45)
    assert len(sweep.best.info["threshold_sweep"]) == 19

    # every point of the curve equals evaluate_masks on the masks thresholded the published way
    for t in (0.2, 0.7):
        masks = {}
        for i, (cam, keys) in cams.items():
            padded = np.concatenate([np.full((1, *cam.shape[1:]), t, np.float32), cam.astype(np.float32)])
            masks[i] = np.concatenate([[0], keys])[padded.argmax(0)]
        direct = evaluate_masks(_DictMasks(masks), reader, ids=ids)
        assert isinstance(_DictMasks(masks), MaskSource)
        assert sweep.mious[sweep.thresholds.index(t)] == pytest.approx(direct.confusion.miou())


def test_sweep_errors_name_the_id(gt):
    reader, ids = gt
    cams = _planted_cams(reader, ids[:2], 0.5)
    cam, keys = cams[ids[1]]
    with pytest.raises(DataError, match=f"1 of 2 CAMs missing .*{ids[1]}"):
        sweep_cam_threshold(ArrayCamSource({ids[0]: cams[ids[0]]}), reader, ids=ids[:2])
    bad = dict(cams)
    bad[ids[1]] = (cam[..., :-1], keys)
    with pytest.raises(DataError, match=f"CAM of {ids[1]} .* but its ground truth"):
        sweep_cam_threshold(ArrayCamSource(bad), reader, ids=ids[:2])
    bad[ids[1]] = (cam, keys + 30)
    with pytest.raises(DataError, match=f"CAM keys of {ids[1]}"):
        sweep_cam_threshold(ArrayCamSource(bad), reader, ids=ids[:2])


def test_missing_predictions_are_counted_and_named(gt, pred_dir):
    reader, ids = gt
    for i in ids[3:10]:
        (pred_dir / f"{i}.png").unlink()
    with pytest.raises(DataError) as e:
        evaluate_masks(pred_dir, reader, ids=ids)
    msg = str(e.value)
    assert f"7 of {N_IDS} predictions missing" in msg
    assert ", ".join(ids[3:8]) + ", ..." in msg and ids[8] not in msg


def test_wrong_size_prediction_names_the_id(gt, pred_dir):
    reader, ids = gt
    mask = reader.load_mask(ids[4])
    _save(mask[:-1], pred_dir / f"{ids[4]}.png")
    with pytest.raises(DataError, match=f"prediction for {ids[4]} .* but its ground truth is"):
        evaluate_masks(pred_dir, reader, ids=ids)


def test_out_of_range_values_name_the_id(gt, pred_dir):
    reader, ids = gt
    mask = reader.load_mask(ids[2]).copy()
    mask[0, 0] = 21
    Image.fromarray(mask, mode="L").save(pred_dir / f"{ids[2]}.png")
    with pytest.raises(DataError, match=rf"prediction for {ids[2]} .* values \[21\] outside 0..20 and 255"):
        evaluate_masks(pred_dir, reader, ids=ids)


def test_rgb_prediction_is_refused_naming_the_id(gt, pred_dir):
    reader, ids = gt
    Image.new("RGB", (4, 4)).save(pred_dir / f"{ids[0]}.png")
    with pytest.raises(DataError, match=f"{ids[0]} has mode RGB"):
        evaluate_masks(PngMaskFolder(pred_dir), reader, ids=ids)


def test_reports_are_written_with_expected_contents(gt, pred_dir, tmp_path):
    reader, ids = gt
    res = evaluate_masks(pred_dir, reader, ids=ids[:5])
    json_path, csv_path = write_reports(res, tmp_path / "out")
    assert (json_path.name, csv_path.name) == ("metrics.json", "per_class.csv")  # a fit-segmenter run's names
    named = write_reports(res, tmp_path / "out", prefix="cams_", split_in_name=True)
    assert [p.name for p in named] == ["cams_metrics_val.json", "cams_per_class_val.csv"]
    assert json.loads(named[0].read_text())["split"] == "val"
    doc = json.loads(json_path.read_text())
    assert doc["miou"] == 1.0 and doc["num_images"] == 5 and doc["split"] == "val"
    assert "conventions" in doc and len(doc["per_class"]) == 21
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["name"] for r in rows] == list(VOC_CLASSES)
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files


# -- the command -------------------------------------------------------------------------------------------
@pytest.fixture
def art(voc_root, tmp_path):
    """ART_DIR with masks_val/ = the voc_root val GT masks, and one mask with its first class erased."""
    reader = open_ground_truth(voc_root, "val")
    folder = tmp_path / "art" / "masks_val"
    folder.mkdir(parents=True)
    for i in reader.ids:
        shutil.copyfile(reader.mask_path(i), folder / f"{i}.png")
    counts = _counts(reader, reader.ids)
    # a class that also occurs in another image, so that its precision stays defined (1.0) after the erasure
    image_id, c = next((i, c) for i in reader.ids for c in np.unique(reader.load_mask(i))
                       if 0 < c < 255 and counts[c] > (reader.load_mask(i) == c).sum())
    c = int(c)
    mask = reader.load_mask(image_id)
    pert = mask.copy()
    pert[mask == c] = 0
    _save(pert, folder / f"{image_id}.png")
    expected = (counts[c] - int((mask == c).sum())) / counts[c]
    return tmp_path / "art", c, expected


def test_cli_prints_the_table_and_writes_the_reports(art, voc_root):
    art_dir, c, expected_iou = art
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art_dir), "--split", "val", "--gt", str(voc_root)])
    assert res.exit_code == 0, res.output
    assert "mIoU" in res.output and VOC_CLASSES[c] in res.output and "FP/TP" in res.output
    doc = json.loads((art_dir / "metrics_val.json").read_text())
    assert doc["num_images"] == len(open_ground_truth(voc_root, "val").ids) and doc["fp_tp"] == 0.0
    assert doc["split"] == "val" and doc["per_class"][c]["iou"] == pytest.approx(expected_iou)
    assert f"wrote {art_dir / 'metrics_val.json'} and {art_dir / 'per_class_val.csv'}" in res.output
    rows = list(csv.DictReader((art_dir / "per_class_val.csv").open()))
    assert len(rows) == 21 and float(rows[c]["iou"]) == pytest.approx(expected_iou)
    assert rows[c]["precision"] == "1.0"


def test_cli_takes_the_gt_root_from_config_and_a_direct_png_folder(art, voc_root, tmp_path):
    art_dir, c, expected_iou = art
    (art_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"root": str(voc_root), "layout": "voc"}}))
    out = tmp_path / "reports"
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art_dir / "masks_val"), "--split", "val", "--out",
                                   str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("mIoU ")
    assert json.loads((out / "metrics_val.json").read_text())["per_class"][c]["iou"] == pytest.approx(expected_iou)


def test_cli_keeps_the_reports_of_two_splits_in_one_folder(voc_root, tmp_path):
    """Evaluating train then val into one --out leaves both reports, each naming its split."""
    art_dir, out = tmp_path / "art", tmp_path / "reports"
    counts = {}
    for split in ("train", "val"):
        reader = open_ground_truth(voc_root, split)
        counts[split] = len(reader.ids)
        (art_dir / f"masks_{split}").mkdir(parents=True)
        for i in reader.ids:
            shutil.copyfile(reader.mask_path(i), art_dir / f"masks_{split}" / f"{i}.png")
        res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art_dir), "--split", split, "--gt", str(voc_root),
                                       "--out", str(out), "-q"])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["metrics_train.json", "metrics_val.json",
                                                     "per_class_train.csv", "per_class_val.csv"]
    for split, n in counts.items():
        doc = json.loads((out / f"metrics_{split}.json").read_text())
        assert (doc["split"], doc["num_images"], doc["miou"]) == (split, n, 1.0)
        assert len(list(csv.DictReader((out / f"per_class_{split}.csv").open()))) == 21


def test_cli_without_gt_is_a_usage_error(art):
    art_dir, _, _ = art
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art_dir), "--split", "val"])
    assert res.exit_code == 2 and "pass --gt" in res.output


def test_cli_missing_prediction_exits_1_naming_the_id(art, voc_root):
    art_dir, _, _ = art
    victim = sorted((art_dir / "masks_val").glob("*.png"))[0]
    victim.unlink()
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art_dir), "--split", "val", "--gt", str(voc_root)])
    n = len(open_ground_truth(voc_root, "val").ids)
    assert res.exit_code == 1 and victim.stem in res.output and f"1 of {n} predictions missing" in res.output


def test_cli_folder_without_masks_exits_1(tmp_path, voc_root):
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(tmp_path), "--split", "val", "--gt", str(voc_root)])
    assert res.exit_code == 1 and "masks_val" in res.output
