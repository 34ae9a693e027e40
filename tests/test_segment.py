"""`seco segment`: the decoder's multi-scale + flip segmentation of a split, scored by `seco evaluate`."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from seco_labels.runtime.checkpoint import load_seco

from seco_labels.cli import cli
from seco_labels.data import build_reader
from seco_labels.inference.decoder_masks import multi_scale_seg_logits


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def test_logits_are_the_decoder_at_one_scale_and_flip_equivariant(checkpoint):
    model, _ = load_seco(checkpoint, torch.device("cpu"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = F.interpolate(model(x).seg.float(), size=(50, 70), mode="bilinear", align_corners=False)
    one = multi_scale_seg_logits(model, x, (1.0,), (50, 70), flip=False)
    torch.testing.assert_close(one, plain)
    # with the mirror image added, segmenting the mirrored input gives the mirrored logits
    both = multi_scale_seg_logits(model, x, (1.0, 1.25), (48, 48))
    mirrored = multi_scale_seg_logits(model, x.flip(-1), (1.0, 1.25), (48, 48))
    torch.testing.assert_close(mirrored, both.flip(-1), rtol=1e-4, atol=1e-4)
    assert both.shape == (2, 21, 48, 48)


def test_segment_then_evaluate(checkpoint, voc_root, tmp_path):
    out = tmp_path / "seg"
    n = len(build_reader("voc", voc_root, "val", require_tags=False).ids)
    args = ["segment", "--checkpoint", str(checkpoint), "--split", "val", "--out", str(out), "--input-size", "64",
            "--device", "cpu", "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert f"segmented {n} image(s) of val into {out} (0 already done" in res.output
    pngs = sorted((out / "masks_val").glob("*.png"))
    assert len(pngs) == n
    for png in pngs[:5]:
        mask = np.asarray(Image.open(png))
        h, w = np.asarray(Image.open(voc_root / "JPEGImages" / f"{png.stem}.jpg")).shape[:2]
        assert mask.shape == (h, w) and mask.max() < 21  # class indices, never "uncertain"
    summary = json.loads((out / "segment_val.json").read_text())
    assert summary["scales"] == [1.0, 1.25, 1.5] and summary["flip"] is True and summary["crf"] is False

    again = CliRunner().invoke(cli, args)
    assert "segmented 0 image(s) of val" in again.output and f"({n} already done" in again.output

    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(out), "--split", "val", "-q"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics_val.json").read_text())
    assert metrics["num_images"] == n and metrics["split"] == "val" and 0.0 <= metrics["miou"] <= 1.0
    assert metrics["pred_ignored_pixels"] == 0


def test_rerun_with_other_settings_is_refused_until_overwrite(checkpoint, voc_root, tmp_path):
    out = tmp_path / "seg"
    ids = build_reader("voc", voc_root, "val", require_tags=False).ids
    args = ["segment", "--checkpoint", str(checkpoint), "--split", "val", "--out", str(out), "--input-size", "64",
            "--scales", "1.0,1.5", "--device", "cpu", "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest_val.json").read_text())
    assert (manifest["scales"], manifest["flip"], manifest["crf"], manifest["input_size"]) == ([1.0, 1.5], True,
                                                                                            False, 64)
    assert manifest["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert manifest["dataset_root"] == str(voc_root.resolve()) and manifest["split"] == "val"
    before = {p.name: p.read_bytes() for p in (out / "masks_val").glob("*.png")}

    other = [a if a != "1.0,1.5" else "1.0" for a in args]
    res = CliRunner().invoke(cli, other)
    assert res.exit_code == 2
    assert (f"{out} already holds split 'val' segmented with other settings ({out / 'manifest_val.json'}): "
            "scales: [1.0, 1.5] -> [1.0]. Pass --overwrite to redo it, or write to another --out") in res.output
    res = CliRunner().invoke(cli, args + ["--no-flip"])
    assert res.exit_code == 2 and "flip: True -> False" in res.output
    assert {p.name: p.read_bytes() for p in (out / "masks_val").glob("*.png")} == before  # nothing touched
    assert json.loads((out / "segment_val.json").read_text())["scales"] == [1.0, 1.5]

    # crf is one of the compared settings: a manifest that says the masks had the CRF refuses a run without it
    # (running with --crf itself needs the optional crf extra)
    (out / "manifest_val.json").write_text(json.dumps({**manifest, "crf": True}))
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "crf: True -> False" in res.output

    (out / "masks_val" / "stale.png").write_bytes(before[f"{ids[0]}.png"])
    res = CliRunner().invoke(cli, other + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert f"segmented {len(ids)} image(s) of val into {out} (0 already done" in res.output
    assert sorted(p.stem for p in (out / "masks_val").glob("*.png")) == sorted(ids)  # the old folder is gone
    assert json.loads((out / "manifest_val.json").read_text())["scales"] == [1.0]
    assert json.loads((out / "segment_val.json").read_text())["scales"] == [1.0]
    res = CliRunner().invoke(cli, other)  # the new settings resume
    assert res.exit_code == 0 and f"segmented 0 image(s) of val into {out} ({len(ids)} already done" in res.output


def test_scale_below_one_patch_is_refused(checkpoint, tmp_path):
    """64 x 1.1 = 70 px is no multiple of 16 but runs, as in the published code (test_cli.py); 64 x 0.2 = 12 px
    holds no patch at all."""
    res = CliRunner().invoke(cli, ["segment", "--checkpoint", str(checkpoint), "--split", "val", "--out",
                                   str(tmp_path), "--input-size", "64", "--scales", "1.1,0.2", "--device", "cpu"])
    assert res.exit_code == 2 and "--input-size 64 at scale 0.2 gives 12 px, less than one of the backbone's 16 px " \
                                  "patches; set --input-size to 80 or more, or other --scales" in res.output
    assert not any(tmp_path.iterdir())  # refused before any image


def test_crf_post_processing_changes_few_pixels(checkpoint, voc_root, tmp_path):
    pytest.importorskip("pydensecrf.densecrf", reason="the crf extra (pydensecrf2) is not installed")
    root = tmp_path / "data"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (root / name).symlink_to(voc_root / name)
    (root / "ImageSets" / "Segmentation" / "two.txt").write_text("coco_000000000260\ncoco_000000000536\n")
    masks = {}
    for crf in (False, True):
        out = tmp_path / f"crf{crf}"
        args = ["segment", "--checkpoint", str(checkpoint), "--split", "two", "--out", str(out), "--data-root",
                str(root), "--input-size", "64", "--device", "cpu", "-q"] + (["--crf"] if crf else [])
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        masks[crf] = [np.asarray(Image.open(out / "masks_two" / f"{i}.png")) for i in ("coco_000000000260",
                                                                                      "coco_000000000536")]
        assert json.loads((out / "segment_two.json").read_text())["crf"] is crf
    for raw, refined in zip(masks[False], masks[True]):
        assert raw.shape == refined.shape and refined.max() < 21
        # the CRF relabels along edges; most pixels keep the decoder's label
        assert 0.5 < (raw == refined).mean() <= 1.0
