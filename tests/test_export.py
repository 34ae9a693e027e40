"""`seco export-masks` on a checkpoint trained here, then `seco evaluate` on its output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TEST_DATA, VOC_DEMO  # tests/ is on sys.path (pytest prepend mode)
from PIL import Image
from seco_labels.runtime.checkpoint import load_seco
from test_train import tiny_config

from seco_labels.artifacts import ArtifactFile
from seco_labels.cli import cli
from seco_labels.data import build_reader, normalize
from seco_labels.errors import CheckpointError, ConfigError, DataError
from seco_labels.inference.export import ExportOptions, export_split

N_VAL = len(build_reader("voc", VOC_DEMO, "val"))
N_COCO_VAL = len(build_reader("coco", TEST_DATA / "coco-mini", "val"))


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def test_export_then_evaluate(checkpoint, voc_root, tmp_path):
    art = tmp_path / "art"
    opts = ExportOptions(scales=(1.0, 0.5), num_workers=0, batch_size=3)
    result = export_split(checkpoint, "val", art, data_root=str(voc_root), options=opts, quiet=True)
    assert result["exported"] == N_VAL and result["skipped_done"] == 0 and result["bad"] == []
    pngs = sorted((art / "masks_val").glob("*.png"))
    assert len(pngs) == N_VAL
    img = Image.open(pngs[0])
    assert img.mode == "P"
    ident = pngs[0].stem
    gt = np.asarray(Image.open(voc_root / "SegmentationClassAug" / f"{ident}.png"))
    mask = np.asarray(img)
    assert mask.shape == gt.shape
    with h5py.File(art / "cams_val.h5") as f:
        cam = f["cams"][ident]
        keys = np.asarray(cam.attrs["keys"])
        assert cam.dtype == np.float16 and cam.shape == (len(keys), *gt.shape)
        tags = set(np.unique(gt[(gt > 0) & (gt < 255)]).tolist())
        assert set(keys.tolist()) == tags  # the image's tagged classes
        np.testing.assert_array_equal(f["masks"][ident][()], mask)
        assert set(np.unique(mask).tolist()) <= {0, 255} | tags  # only tagged classes, bg and ignore
    # resumable: a second run has nothing to do
    again = export_split(checkpoint, "val", art, data_root=str(voc_root), options=opts, quiet=True)
    assert again["exported"] == 0 and again["skipped_done"] == N_VAL
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art), "--split", "val", "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((art / "metrics_val.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0


def test_export_cli_and_bad_checkpoint(checkpoint, voc_root, tmp_path):
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(checkpoint), "--split", "val", "--out",
                                   str(tmp_path / "a"), "--data-root", str(voc_root), "--format", "png",
                                   "--scales", "seeds", "--num-workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"exported {N_VAL} image(s) of val" in res.output
    assert len(list((tmp_path / "a" / "masks_val").glob("*.png"))) == N_VAL
    assert not (tmp_path / "a" / "cams_val.h5").exists()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="bad.pt is corrupt or truncated"):
        load_seco(bad, "cpu")
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(checkpoint), "--split", "val", "--out",
                                   str(tmp_path / "b"), "--scales", "1,x"])
    assert res.exit_code == 2 and "give positive numbers" in res.output


@pytest.fixture
def voc_copy(voc_root, tmp_path):
    """voc-mini's val split (images, masks, labels) in a writable folder."""
    root = tmp_path / "voc"
    ids = (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:6]
    for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClassAug", ".png")):
        (root / sub).mkdir(parents=True)
        for i in ids:
            shutil.copy(voc_root / sub / f"{i}{ext}", root / sub / f"{i}{ext}")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    shutil.copy(voc_root / "cls_labels_onehot.npy", root / "cls_labels_onehot.npy")
    return root, ids


def _export_cmd(checkpoint, root, out):
    return [sys.executable, "-m", "seco_labels.cli", "export-masks", "--checkpoint", str(checkpoint), "--split", "val",
            "--out", str(out), "--data-root", str(root), "--input-size", "128", "--batch-size", "1",
            "--num-workers", "0", "--device", "cpu", "--quiet"]


def test_killed_export_resumes_to_identical_files(checkpoint, voc_copy, tmp_path):
    root, ids = voc_copy
    opts = ExportOptions(input_size=128, batch_size=1, num_workers=0, device="cpu")
    export_split(checkpoint, "val", tmp_path / "full", data_root=str(root), options=opts, quiet=True)
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_export_cmd(checkpoint, root, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((killed / "masks_val").glob("*.png"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.stem for p in (killed / "masks_val").glob("*.png")}
    assert 2 <= len(finished) < len(ids), "the export finished before it was killed; the test needs a slower export"
    assert not (killed / "cams_val.h5").exists()  # never assembled, never half-written
    for part in (killed / ".parts_val").glob("*.npz"):  # every part on disk is complete
        with np.load(part) as z:
            assert set(z.files) == {"cam", "cam_shape", "keys", "mask", "mask_shape"}
    res = subprocess.run(_export_cmd(checkpoint, root, killed), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not (killed / ".parts_val").exists()  # parts were assembled into the HDF5 file and removed
    summary = json.loads((killed / "export_val.json").read_text())
    assert summary["skipped_done"] >= len(finished) and summary["exported"] + summary["skipped_done"] == len(ids)
    for png in sorted((tmp_path / "full" / "masks_val").glob("*.png")):
        assert png.read_bytes() == (killed / "masks_val" / png.name).read_bytes(), png.name
    assert not list((killed / "masks_val").glob(".*"))  # no temp files left behind
    a, b = ArtifactFile(tmp_path / "full" / "cams_val.h5"), ArtifactFile(killed / "cams_val.h5")
    assert a.ids() == b.ids() == set(ids)
    assert {k: v for k, v in a.attrs.items() if k != "created"} == {k: v for k, v in b.attrs.items() if k != "created"}
    for i in ids:
        np.testing.assert_array_equal(a.load_mask(i), b.load_mask(i))
        (ca, ka), (cb, kb) = a.load_cam(i), b.load_cam(i)
        np.testing.assert_array_equal(ca, cb)
        np.testing.assert_array_equal(ka, kb)


def test_bad_image_stops_or_is_skipped(checkpoint, voc_copy, tmp_path):
    root, ids = voc_copy
    jpg = root / "JPEGImages" / f"{ids[2]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:300])  # truncated
    (root / "JPEGImages" / f"{ids[4]}.jpg").unlink()  # missing
    opts = ExportOptions(scales=(1.0,), num_workers=0, batch_size=2)
    with pytest.raises(DataError, match=f"{ids[4]}.jpg.*not found"):
        export_split(checkpoint, "val", tmp_path / "a", data_root=str(root), options=opts, quiet=True)
    (root / "JPEGImages" / f"{ids[4]}.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=rf"{ids[2]}.jpg is unreadable.*--skip-bad"):
        export_split(checkpoint, "val", tmp_path / "a", data_root=str(root), options=opts, quiet=True)
    (root / "JPEGImages" / f"{ids[4]}.jpg").unlink()
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(checkpoint), "--split", "val", "--out",
                                   str(tmp_path / "b"), "--data-root", str(root), "--scales", "seeds",
                                   "--num-workers", "0", "--skip-bad", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "exported 4 image(s) of val" in res.output and "2 bad image(s) skipped" in res.output
    assert ArtifactFile(tmp_path / "b" / "cams_val.h5").ids() == set(ids) - {ids[2], ids[4]}
    assert json.loads((tmp_path / "b" / "export_val.json").read_text())["bad"] == [ids[2], ids[4]]


def test_predicted_tags_label_untagged_images(checkpoint, voc_copy, tmp_path):
    root, ids = voc_copy
    shutil.rmtree(root / "SegmentationClassAug")
    (root / "cls_labels_onehot.npy").unlink()  # no masks, no labels: nothing tags these images
    opts = ExportOptions(scales=(1.0,), num_workers=0, tags="given")
    with pytest.raises(DataError, match="tags of split 'val' cannot be derived"):
        export_split(checkpoint, "val", tmp_path / "a", data_root=str(root), options=opts, quiet=True)
    model, cfg = load_seco(checkpoint, torch.device("cpu"))
    reader = build_reader("voc", root, "val", require_tags=False)
    x = torch.stack([torch.nn.functional.interpolate(normalize(reader.load_image(i))[None], size=(64, 64),
                                                     mode="bilinear", align_corners=False)[0] for i in ids])
    with torch.no_grad():
        scores = torch.sigmoid(model.classify(x)[0])
    thr = float(scores.median())  # some classes in, some out
    opts = ExportOptions(scales=(1.0,), num_workers=0, tags="predicted", tag_threshold=thr)
    export_split(checkpoint, "val", tmp_path / "b", data_root=str(root), options=opts, quiet=True)
    art = ArtifactFile(tmp_path / "b" / "cams_val.h5")
    assert art.attrs["tags_source"] == f"predicted>{thr}"
    for n, i in enumerate(ids):
        _, keys = art.load_cam(i)
        np.testing.assert_array_equal(keys, torch.nonzero(scores[n] > thr).flatten().numpy() + 1)
        assert set(np.unique(art.load_mask(i)).tolist()) <= {0, 255, *keys.tolist()}


def _per_image_reference(checkpoint, root: Path, ids: list[str], size: int, scales) -> dict[str, tuple]:
    """The export recipe restated plainly, one image at a time, on every class: image id -> (CAMs of the tagged
    classes (k, H, W) float32 at the original size, keys (k,), mask (H, W) uint8)."""
    from seco_labels.method.cams import multi_scale_cams
    from seco_labels.method.refine import PAR, refine_with_background

    model, cfg = load_seco(checkpoint, torch.device("cpu"))
    par = PAR(cfg.cam.par_dilations, cfg.cam.par_iters)
    reader = build_reader("voc", root, "val")
    out = {}
    with torch.no_grad():
        for i in ids:
            rgb = reader.load_image(i)
            tags = torch.from_numpy(reader.tags(i).copy())  # (C,)
            x = torch.nn.functional.interpolate(normalize(rgb)[None], size=(size, size), mode="bilinear",
                                                align_corners=False)
            cam = multi_scale_cams(model.cams, x, scales)[0]  # (1, C, S, S), every class
            keys = torch.nonzero(tags).flatten() + 1
            h, w = rgb.shape[:2]
            valid = cam.new_zeros(1, cam.shape[1], h, w)  # (1, C, H, W), untagged classes 0
            valid[0, keys - 1] = torch.nn.functional.interpolate(cam[:, keys - 1], size=(h, w), mode="bilinear",
                                                                 align_corners=False)[0]
            image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
            mask = refine_with_background(par, image, valid, tags[None], high_thre=cfg.cam.high_thre,
                                          low_thre=cfg.cam.low_thre, ignore_index=cfg.data.ignore_index,
                                          down_scale=cfg.cam.par_downscale)[0]
            out[i] = (valid[0, keys - 1].numpy(), keys.numpy(), mask.numpy().astype(np.uint8))
    return out


def test_export_equals_a_per_image_reference(checkpoint, voc_copy, tmp_path):
    """What a speed-up of the exporter must not change: its CAMs and masks on real images against the recipe
    restated one image at a time (every class of both CAM outputs, PAR over all C channels). One image per batch
    runs the same network calls, so everything is bit-identical; 3 per batch may differ in the last bits of the
    network's fp32 sums (matrix products of other shapes), so CAMs agree to fp16 storage precision and masks in
    all but a few pixels where two classes tie."""
    root, ids = voc_copy
    ids = ids[:4]  # with 3 per batch: a full batch and a batch of 1
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    scales = (1.0, 0.5, 1.5)
    ref = _per_image_reference(checkpoint, root, ids, 128, scales)
    for batch_size in (1, 3):
        out = tmp_path / f"batch{batch_size}"
        opts = ExportOptions(scales=scales, input_size=128, batch_size=batch_size, num_workers=0)
        export_split(checkpoint, "val", out, data_root=str(root), options=opts, quiet=True)
        art = ArtifactFile(out / "cams_val.h5")
        differing = 0
        for i in ids:
            cam_ref, keys_ref, mask_ref = ref[i]
            cam, keys = art.load_cam(i)
            mask = art.load_mask(i)
            np.testing.assert_array_equal(keys, keys_ref)
            np.testing.assert_array_equal(mask, np.asarray(Image.open(out / "masks_val" / f"{i}.png")))
            if batch_size == 1:
                np.testing.assert_array_equal(cam, cam_ref.astype(np.float16).astype(np.float32))  # stored as fp16
                np.testing.assert_array_equal(mask, mask_ref)
            else:
                np.testing.assert_allclose(cam, cam_ref, rtol=0, atol=1e-3)  # fp16 rounding: half an ulp <= 2.5e-4
                differing += int((mask != mask_ref).sum())
        assert differing <= 1e-4 * sum(m.size for _, _, m in ref.values())


def test_export_refines_at_the_checkpoints_par_downscale(checkpoint, voc_copy, tmp_path):
    """cam.par_downscale, which training's pseudo labels use, is the export's too (it used PAR's default of 2)."""
    from seco_labels.runtime.checkpoint import load_checkpoint, save_checkpoint

    root, ids = voc_copy
    ids = ids[:2]
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    ckpt = load_checkpoint(checkpoint)
    assert ckpt["config"]["cam"]["par_downscale"] == 2
    ckpt["config"]["cam"]["par_downscale"] = 1
    full_size = tmp_path / "full_size.pt"
    save_checkpoint(full_size, ckpt)
    masks = {}
    for name, path in (("half", checkpoint), ("full", full_size)):
        ref = _per_image_reference(path, root, ids, 128, (1.0,))
        opts = ExportOptions(scales=(1.0,), input_size=128, batch_size=1, num_workers=0, formats=("png",))
        export_split(path, "val", tmp_path / name, data_root=str(root), options=opts, quiet=True)
        masks[name] = [np.asarray(Image.open(tmp_path / name / "masks_val" / f"{i}.png")) for i in ids]
        for i, mask in zip(ids, masks[name]):
            np.testing.assert_array_equal(mask, ref[i][2])
    assert any((a != b).any() for a, b in zip(masks["half"], masks["full"]))  # the setting matters


def _assert_empty_export(art_dir: Path, ident: str, shape: tuple[int, int]) -> None:
    """``ident`` has an all-background mask and an empty (0, H, W) CAM, in the HDF5 file, the PNG and the reader."""
    art = ArtifactFile(art_dir / "cams_val.h5")
    cam, keys = art.load_cam(ident)
    assert cam.shape == (0, *shape) and keys.shape == (0,)
    np.testing.assert_array_equal(art.load_mask(ident), np.zeros(shape, np.uint8))
    np.testing.assert_array_equal(np.asarray(Image.open(art_dir / "masks_val" / f"{ident}.png")), np.zeros(shape))


def test_images_with_no_class_export_as_background(checkpoint, voc_copy, tmp_path):
    """Given tags: an image whose GT holds no foreground; predicted tags: a threshold nothing passes."""
    root, ids = voc_copy
    empty = ids[1]
    mask_path = root / "SegmentationClassAug" / f"{empty}.png"
    with Image.open(mask_path) as png:
        background = Image.fromarray(np.zeros((png.height, png.width), np.uint8), mode="P")
        background.putpalette(png.getpalette())
    background.save(mask_path)
    labels = np.load(root / "cls_labels_onehot.npy", allow_pickle=True).item()
    labels[empty] = np.zeros_like(labels[empty])
    np.save(root / "cls_labels_onehot.npy", labels, allow_pickle=True)
    shape = (background.height, background.width)

    opts = ExportOptions(scales=(1.0, 0.5), num_workers=0, batch_size=3)  # the empty image shares a batch
    res = export_split(checkpoint, "val", tmp_path / "given", data_root=str(root), options=opts, quiet=True)
    assert res["exported"] == len(ids) and res["bad"] == []
    _assert_empty_export(tmp_path / "given", empty, shape)
    tagged = ArtifactFile(tmp_path / "given" / "cams_val.h5").load_cam(ids[0])[1]
    assert len(tagged) > 0  # the other images keep their classes

    opts = ExportOptions(scales=(1.0,), num_workers=0, tags="predicted", tag_threshold=1.0)  # sigmoid < 1
    res = export_split(checkpoint, "val", tmp_path / "pred", data_root=str(root), options=opts, quiet=True)
    assert res["exported"] == len(ids)
    for i in ids:
        with Image.open(root / "JPEGImages" / f"{i}.jpg") as img:
            _assert_empty_export(tmp_path / "pred", i, (img.height, img.width))
    ds = __import__("seco_labels.artifacts", fromlist=["open_pseudo_labels"]).open_pseudo_labels(tmp_path / "pred", "val")
    assert int(ds[0][1].max()) == 0


def test_checkpoint_mismatch_is_clear(checkpoint, coco_root, voc_root, tmp_path):
    with pytest.raises(CheckpointError, match="trained on 21 classes .*--layout coco has 81"):
        export_split(checkpoint, "val", tmp_path / "a", data_root=str(coco_root), layout="coco",
                     options=ExportOptions(num_workers=0), quiet=True)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt["config"]["model"]["backbone"] = "vit_small_patch16_224"
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="does not match its own config"):
        load_seco(other, torch.device("cpu"))
    with pytest.raises(ConfigError, match="--input-size 24 at scale 0.5 gives 12 px, less than one of the "
                                          "backbone's 16 px patches; set --input-size to 32 or more"):
        export_split(checkpoint, "val", tmp_path / "b", data_root=str(voc_root),
                     options=ExportOptions(input_size=24, num_workers=0), quiet=True)


def test_h5_only_export_then_evaluate_masks_and_cams(checkpoint, voc_root, tmp_path):
    art = tmp_path / "art"
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(checkpoint), "--split", "val", "--out",
                                   str(art), "--data-root", str(voc_root), "--format", "h5", "--num-workers", "0",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert not (art / "masks_val").exists()
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art), "--split", "val", "--cams", "--quiet"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if not ln.startswith("wrote ")]  # stderr is mixed in
    assert lines[0].startswith("mIoU ") and lines[1].startswith("CAM (threshold ")
    masks = json.loads((art / "metrics_val.json").read_text())
    cams = json.loads((art / "cams_metrics_val.json").read_text())
    assert masks["num_images"] == cams["num_images"] == N_VAL
    assert cams["cam_threshold"] in [t["threshold"] for t in cams["threshold_sweep"]]
    assert abs(float(lines[0].split()[1]) - 100 * masks["miou"]) < 0.01
    assert (art / "cams_per_class_val.csv").read_text().startswith("index,name,iou")


def test_coco_export_then_evaluate(coco_root, tmp_path):
    from seco_labels.training.trainer import Trainer

    cfg = tiny_config(coco_root, iters=2)
    cfg.data.layout, cfg.data.num_classes, cfg.train.val_every = "coco", 81, 0
    Trainer(cfg, tmp_path / "run", quiet=True).fit()
    art = tmp_path / "art"
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--split", "val",
                                   "--out", str(art), "--scales", "1.0,0.5", "--num-workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"exported {N_COCO_VAL} image(s) of val" in res.output
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(art), "--split", "val", "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((art / "metrics_val.json").read_text())
    assert metrics["num_images"] == N_COCO_VAL and len(metrics["per_class"]) == 81
    ds = __import__("seco_labels.artifacts", fromlist=["open_pseudo_labels"]).open_pseudo_labels(art, "val")
    image, mask = ds[0]
    assert image.shape[1:] == mask.shape and int(mask.max()) <= 255


def test_crf_option(checkpoint, voc_copy, tmp_path, monkeypatch):
    root, ids = voc_copy
    args = ["export-masks", "--checkpoint", str(checkpoint), "--split", "val", "--data-root", str(root),
            "--scales", "seeds", "--num-workers", "0", "--quiet", "--crf"]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pydensecrf", None)  # as if the crf extra were not installed
        m.setitem(sys.modules, "pydensecrf.densecrf", None)
        res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "none")])
    assert res.exit_code == 1 and 'pip install -e ".[crf]" in your clone' in res.output
    assert not (tmp_path / "none").exists()  # failed before writing anything
    pytest.importorskip("pydensecrf.densecrf")
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "crf")])
    assert res.exit_code == 0, res.output
    plain = export_split(checkpoint, "val", tmp_path / "plain", data_root=str(root),
                         options=ExportOptions(scales=(1.0,), num_workers=0), quiet=True)
    assert plain["exported"] == len(ids)
    with_crf, without = ArtifactFile(tmp_path / "crf" / "cams_val.h5"), ArtifactFile(tmp_path / "plain" / "cams_val.h5")
    assert with_crf.attrs["crf"] is True and without.attrs["crf"] is False
    changed = 0
    for i in ids:
        a, b = with_crf.load_mask(i), without.load_mask(i)
        np.testing.assert_array_equal(a == 255, b == 255)  # the CRF keeps ignore pixels ignored
        assert set(np.unique(a).tolist()) <= set(np.unique(b).tolist())  # and invents no class
        changed += int((a != b).sum())
    assert changed > 0


def test_export_options_from_a_config_file(checkpoint, voc_copy, tmp_path):
    root, ids = voc_copy
    cfg = tmp_path / "export.yaml"
    cfg.write_text(f"data-root: {root}\nscales: [1.0]\nformat: png\nnum_workers: 0\nhigh-thre: 0.6\nquiet: true\n")
    res = CliRunner().invoke(cli, ["export-masks", "--config", str(cfg), "--checkpoint", str(checkpoint),
                                   "--split", "val", "--out", str(tmp_path / "a"), "--high-thre", "0.65"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "a" / "manifest_val.json").read_text())
    assert manifest["scales"] == [1.0] and manifest["high_thre"] == 0.65  # the command line wins over the file
    assert not (tmp_path / "a" / "cams_val.h5").exists() and len(list((tmp_path / "a" / "masks_val").glob("*"))) == 6
    cfg.write_text("scale: [1.0]\n")
    res = CliRunner().invoke(cli, ["export-masks", "--config", str(cfg), "--checkpoint", str(checkpoint),
                                   "--split", "val", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "unknown key 'scale'" in res.output and "scales" in res.output
