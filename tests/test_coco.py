"""COCO RLE: our numpy encoder against pycocotools (when installed), and export-masks --format coco-json read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from seco_labels.artifacts import decode_rle, encode_rle
from seco_labels.artifacts.coco import mask_annotations
from seco_labels.cli import cli
from seco_labels.data import build_reader


def _masks(voc_root):
    """Binary masks with every kind of run: empty, full, first pixel set, one pixel, random, and real objects."""
    rng = np.random.default_rng(0)
    out = [np.zeros((5, 7), bool), np.ones((3, 4), bool), rng.random((13, 11)) > 0.5, rng.random((64, 48)) > 0.97]
    one = np.zeros((9, 6), bool)
    one[0, 0] = True
    out.append(one)
    reader = build_reader("voc", voc_root, "val")
    for i in reader.ids[:4]:
        gt = reader.load_mask(i)
        out += [gt == c for c in np.unique(gt) if c not in (0, 255)]
    return out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own use of numpy 2
def test_rle_round_trips_and_matches_pycocotools(voc_root):
    masks = _masks(voc_root)
    for m in masks:
        rle = encode_rle(m)
        assert rle["size"] == list(m.shape)
        np.testing.assert_array_equal(decode_rle(rle), m)
    cocomask = pytest.importorskip("pycocotools.mask")
    for m in masks:
        theirs = cocomask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert encode_rle(m)["counts"] == theirs["counts"].decode()
        np.testing.assert_array_equal(cocomask.decode({"size": list(m.shape), "counts": encode_rle(m)["counts"]}), m)


def test_mask_annotations_skip_background_and_uncertain_pixels():
    mask = np.array([[0, 3, 3], [255, 3, 7], [0, 0, 7]], np.uint8)
    anns = mask_annotations(mask)
    assert [(a["category_id"], a["area"], a["bbox"]) for a in anns] == [(3, 3, [1, 0, 2, 2]), (7, 2, [2, 1, 1, 2])]
    np.testing.assert_array_equal(decode_rle(anns[0]["segmentation"]), mask == 3)


def test_export_coco_json_decodes_to_the_png_masks(tiny_checkpoint, voc_root, tmp_path):
    art = tmp_path / "art"
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--split", "val", "--out",
                                   str(art), "--data-root", str(voc_root), "--format", "png,coco-json",
                                   "--scales", "1.0", "--no-flip", "--num-workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads((art / "coco_val.json").read_text())
    reader = build_reader("voc", voc_root, "val")
    assert [im["seco_id"] for im in doc["images"]] == reader.ids
    assert [c["name"] for c in doc["categories"]] == reader.class_names[1:] and doc["categories"][0]["id"] == 1
    for image in doc["images"]:
        assert (voc_root / image["file_name"]).is_file()
        with Image.open(art / "masks_val" / f"{image['seco_id']}.png") as png:
            expected = np.asarray(png)
        assert (image["height"], image["width"]) == expected.shape
        rebuilt = np.zeros(expected.shape, np.uint8)
        for ann in (a for a in doc["annotations"] if a["image_id"] == image["id"]):
            region = decode_rle(ann["segmentation"])
            assert ann["area"] == int(region.sum()) and not rebuilt[region].any()  # classes do not overlap
            rebuilt[region] = ann["category_id"]
        np.testing.assert_array_equal(rebuilt, np.where(expected == 255, 0, expected))
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"]) > 0
    alone = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--split", "val", "--out",
                                     str(tmp_path / "b"), "--format", "coco-json", "--quiet"])
    assert alone.exit_code == 2 and "coco-json is built from the exported masks; add h5 or png" in alone.output
