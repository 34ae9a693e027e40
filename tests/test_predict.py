"""`seco predict`: masks of new images from a fit-segmenter smp model and from the SeCo decoder.

Three real images of the val split (a 3-image split list in a copy of the dataset root), a tiny U-Net
(tu-mobilenetv3_small_050, depth 3) fitted for 2 steps on their GT masks, and the shared 4-step tiny SeCo checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from test_segmenters import tiny_cfg  # tests/ is on sys.path (pytest prepend mode)

from seco_labels.cli import cli
from seco_labels.data.classes import voc_palette
from seco_labels.data.transforms import normalize
from seco_labels.inference.predictors import load_predictor
from seco_labels.segmenters import SegmenterTrainer

SPLIT = "three"
DOC = Path(__file__).resolve().parents[1] / "docs" / "predict.md"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(voc_root, tmp_path_factory) -> Path:
    """The VOC test set with a split 'three': the first three ids of its val list."""
    root = tmp_path_factory.mktemp("voc3")
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (root / name).symlink_to(voc_root / name)
    ids = (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:3]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / f"{SPLIT}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture(scope="module")
def ids(root) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{SPLIT}.txt").read_text().split()


@pytest.fixture(scope="module")
def images(root, ids, tmp_path_factory) -> Path:
    """The split's images as a plain folder, the last one in a subfolder (ids keep relative paths)."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for i, image_id in enumerate(ids):
        dest = folder / ("sub" if i == len(ids) - 1 else "") / f"{image_id}.jpg"
        shutil.copy(root / "JPEGImages" / f"{image_id}.jpg", dest)
    return folder


def rel_ids(ids: list[str]) -> list[str]:
    """The ids the `images` folder gives."""
    return ids[:-1] + [f"sub/{ids[-1]}"]


@pytest.fixture(scope="module")
def seg_run(root, tmp_path_factory) -> Path:
    """A fit-segmenter run: a depth-3 U-Net trained 2 steps on the GT masks of the split, no validation."""
    run = tmp_path_factory.mktemp("seg") / "run"
    cfg = tiny_cfg(root, "gt", data__split=SPLIT, data__val_split="")
    SegmenterTrainer(cfg, run, quiet=True).fit()
    return run


def invoke(*args: str):
    return CliRunner().invoke(cli, ["predict", *args, "--device", "cpu", "-q"])


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as png:
        assert png.mode == "P" and png.getpalette() == voc_palette()  # the exporter's palette PNG
        return np.asarray(png)


def expected_smp_mask(run: Path, rgb: np.ndarray, flip: bool) -> np.ndarray:
    """The saved model run by hand: ImageNet-normalised, zero-padded to a multiple of 8 (the stride of a
    depth-3 encoder), argmax of the logits (plus the mirror image's) cropped back."""
    import segmentation_models_pytorch as smp

    model = smp.from_pretrained(str(run / "model")).eval()
    h, w = rgb.shape[:2]
    x = F.pad(normalize(rgb)[None], (0, -w % 8, 0, -h % 8))
    with torch.no_grad():
        logits = model(x)
        if flip:
            logits = logits + model(x.flip(-1)).flip(-1)
    return logits[0, :, :h, :w].argmax(0).numpy().astype(np.uint8)


# -- smp models --------------------------------------------------------------------------------------------
def test_smp_folder_masks_overlays_and_the_model_run_by_hand(seg_run, images, root, ids, tmp_path):
    out = tmp_path / "out"
    res = invoke("--model", str(seg_run), "--images", str(images), "--out", str(out), "--overlay")
    assert res.exit_code == 0, res.output
    assert f"predicted {len(ids)} image(s) of {images} into {out} with the smp model (0 already done" in res.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(f"{i}.png" for i in
                                                                                     rel_ids(ids))
    for image_id, rel in zip(ids, rel_ids(ids)):
        rgb = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        mask = read_mask(out / f"{rel}.png")
        assert mask.shape == rgb.shape[:2] and mask.max() < 21
        np.testing.assert_array_equal(mask, expected_smp_mask(seg_run, rgb, flip=False))
        with Image.open(out / "overlay" / f"{rel}.jpg") as ov:
            assert ov.size == (rgb.shape[1], rgb.shape[0]) and ov.mode == "RGB"
    settings = json.loads((out / "manifest_predict.json").read_text())
    assert settings["model_kind"] == "smp" and settings["flip"] is False and settings["size_multiple"] == 8
    assert settings["source"] == {"images": str(images.resolve())} and settings["num_classes"] == 21


def test_smp_flip_and_model_folder(seg_run, images, root, ids, tmp_path):
    out = tmp_path / "flip"
    res = invoke("--model", str(seg_run / "model"), "--images", str(images), "--out", str(out), "--flip")
    assert res.exit_code == 0, res.output
    rgb = np.asarray(Image.open(root / "JPEGImages" / f"{ids[0]}.jpg").convert("RGB"))
    np.testing.assert_array_equal(read_mask(out / f"{ids[0]}.png"), expected_smp_mask(seg_run, rgb, flip=True))


def test_folder_equals_split_and_split_is_scored_by_evaluate(seg_run, images, ids, tmp_path):
    folder_out, split_out = tmp_path / "folder", tmp_path / "split"
    assert invoke("--model", str(seg_run), "--images", str(images), "--out", str(folder_out)).exit_code == 0
    # --data-root and --layout default to the run's training data
    res = invoke("--model", str(seg_run), "--split", SPLIT, "--out", str(split_out))
    assert res.exit_code == 0, res.output
    assert f"predicted {len(ids)} image(s) of split {SPLIT} into {split_out}" in res.output
    for image_id, rel in zip(ids, rel_ids(ids)):
        np.testing.assert_array_equal(read_mask(split_out / f"{image_id}.png"), read_mask(folder_out / f"{rel}.png"))
    res = CliRunner().invoke(cli, ["evaluate", "--pred", str(split_out), "--split", SPLIT, "-q"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(next(split_out.glob("metrics*.json")).read_text())
    assert metrics["num_images"] == len(ids) and 0.0 <= metrics["miou"] <= 1.0


# -- the SeCo decoder --------------------------------------------------------------------------------------
def test_seco_decoder_equals_seco_segment(tiny_checkpoint, root, ids, tmp_path):
    common = ["--split", SPLIT, "--data-root", str(root), "--input-size", "64", "--scales", "1.0,1.25", "--device",
              "cpu", "-q"]
    seg = CliRunner().invoke(cli, ["segment", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "seg"),
                                   *common])
    assert seg.exit_code == 0, seg.output
    # the run folder and its last.pt are the same model
    for model in (tiny_checkpoint, tiny_checkpoint.parent):
        out = tmp_path / f"pred_{model.name}"
        res = CliRunner().invoke(cli, ["predict", "--model", str(model), "--out", str(out), "--overlay", *common])
        assert res.exit_code == 0, res.output
        assert "with the seco model (0 already done" in res.output
        for image_id in ids:
            mask = read_mask(out / f"{image_id}.png")
            h, w = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg")).shape[:2]
            assert mask.shape == (h, w) and mask.max() < 21
            np.testing.assert_array_equal(mask, read_mask(tmp_path / "seg" / f"masks_{SPLIT}" / f"{image_id}.png"))
            assert Image.open(out / "overlay" / f"{image_id}.jpg").size == (w, h)
        settings = json.loads((out / "manifest_predict.json").read_text())
        assert settings["scales"] == [1.0, 1.25] and settings["flip"] is True and settings["input_size"] == 64


def test_seco_options_are_refused_for_smp_models(seg_run, images, tmp_path):
    res = invoke("--model", str(seg_run), "--images", str(images), "--out", str(tmp_path), "--scales", "1.0",
                 "--crf")
    assert res.exit_code == 2
    assert (f"--scales, --crf apply to the SeCo decoder; {seg_run / 'model'} is an smp model (fit-segmenter), which "
            "predicts at the image's own size (only --flip applies)") in res.output


# -- resume and settings -----------------------------------------------------------------------------------
def test_resume_skips_refuses_other_settings_and_overwrites(seg_run, images, ids, tmp_path):
    out = tmp_path / "out"
    args = ["--model", str(seg_run), "--images", str(images), "--out", str(out)]
    assert invoke(*args).exit_code == 0
    first = out / f"{ids[0]}.png"
    stamp = first.stat().st_mtime_ns
    (out / f"{ids[1]}.png").unlink()
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert f"predicted 1 image(s) of {images} into {out} with the smp model ({len(ids) - 1} already done" in res.output
    assert first.stat().st_mtime_ns == stamp  # finished masks are not rewritten

    # overlays asked for later are drawn from the finished masks, without predicting again
    res = invoke(*args, "--overlay")
    assert res.exit_code == 0 and "predicted 0 image(s)" in res.output
    assert len(list((out / "overlay").rglob("*.jpg"))) == len(ids)

    res = invoke(*args, "--flip")
    assert res.exit_code == 2
    assert (f"{out} already holds predictions made with other settings ({out / 'manifest_predict.json'}): flip: "
            "False -> True. Pass --overwrite to predict every image again, or choose another --out") in res.output
    res = invoke(*args, "--flip", "--overwrite")
    assert res.exit_code == 0 and f"predicted {len(ids)} image(s)" in res.output
    assert json.loads((out / "manifest_predict.json").read_text())["flip"] is True


def test_output_inside_the_image_folder_is_not_read_back(seg_run, images, ids, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(images, folder)
    out = folder / "masks"
    for _ in range(2):  # the second run must not see the first run's PNGs as new images
        res = invoke("--model", str(seg_run), "--images", str(folder), "--out", str(out))
        assert res.exit_code == 0, res.output
    assert f"predicted 0 image(s) of {folder} into {out} with the smp model ({len(ids)} already done" in res.output
    assert not (out / "masks").exists()
    res = invoke("--model", str(seg_run), "--images", str(folder), "--out", str(folder))
    assert res.exit_code == 2
    assert (f"--out {folder} is the image folder itself: <id>.png masks would mix with (and could replace) the "
            f"images; pass another folder, e.g. --out {folder / 'masks'}") in res.output


# -- errors ------------------------------------------------------------------------------------------------
def test_empty_folder_and_neither_images_nor_split(seg_run, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    res = invoke("--model", str(seg_run), "--images", str(empty), "--out", str(tmp_path / "out"))
    assert res.exit_code == 1
    assert (f"Error: no images in {empty} (looked for .jpg, .jpeg, .png, .webp, .bmp files, also in subfolders)"
            in res.output)
    res = invoke("--model", str(seg_run), "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and "pass either --images DIR or --split SPLIT" in res.output


def test_unreadable_image_is_named_and_skip_bad_goes_on(seg_run, images, ids, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(images, folder)
    bad = folder / "broken.jpg"
    bad.write_bytes((folder / f"{ids[0]}.jpg").read_bytes()[:300])  # a truncated JPEG
    out = tmp_path / "out"
    res = invoke("--model", str(seg_run), "--images", str(folder), "--out", str(out))
    assert res.exit_code == 1
    assert f"Error: image {bad} is unreadable; it may be corrupt or truncated (" in res.output
    assert "(pass --skip-bad to log such images and go on)" in res.output
    res = invoke("--model", str(seg_run), "--images", str(folder), "--out", str(out), "--skip-bad")
    assert res.exit_code == 0, res.output
    assert ", 1 bad image(s) skipped;" in res.output
    assert sorted(p.stem for p in out.rglob("*.png")) == sorted(ids)


def test_model_paths_that_hold_no_model(seg_run, images, tmp_path):
    def error(model: Path) -> str:
        res = invoke("--model", str(model), "--images", str(images), "--out", str(tmp_path / "out"))
        assert res.exit_code == 1, res.output
        return res.output

    neither = tmp_path / "neither"
    neither.mkdir()
    assert (f"Error: --model {neither} is neither a fit-segmenter run (no model/config.json), an smp model folder "
            "(no config.json) nor a seco train run (no last.pt); pass SEG_DIR, SEG_DIR/model, RUN_DIR or "
            "RUN_DIR/last.pt") in error(neither)
    unfinished = tmp_path / "unfinished"
    (unfinished / "model").mkdir(parents=True)
    assert (f"Error: model folder {unfinished / 'model'} holds no model (no config.json); the fit-segmenter run may "
            "not have finished: continue it with seco fit-segmenter --resume auto") in error(unfinished)
    assert (f"Error: {seg_run / 'last.pt'} is a fit-segmenter training checkpoint, not a model to predict with; pass "
            f"its run folder {seg_run}") in error(seg_run / "last.pt")
    no_classes = tmp_path / "no_classes"
    shutil.copytree(seg_run / "model", no_classes)
    config = json.loads((no_classes / "config.json").read_text())
    del config["classes"]
    (no_classes / "config.json").write_text(json.dumps(config))
    assert (f"Error: {no_classes / 'config.json'} records no number of classes (classes: None); save the model "
            "with smp's save_pretrained") in error(no_classes)


def test_a_split_of_another_class_count_is_refused(seg_run, tmp_path):
    predictor = load_predictor(seg_run, device="cpu")
    assert predictor.kind == "smp" and predictor.num_classes == 21 and predictor.layout == "voc"
    res = invoke("--model", str(seg_run), "--split", SPLIT, "--layout", "coco", "--out", str(tmp_path / "out"))
    assert res.exit_code == 1
    assert (f"Error: model {seg_run / 'model' / 'model.safetensors'} predicts 21 classes but layout 'coco' has 81; "
            "use a model trained on this dataset's classes") in res.output


# -- docs --------------------------------------------------------------------------------------------------
def test_the_python_snippet_of_the_docs_runs(seg_run, images, ids, tmp_path, monkeypatch):
    (code,) = re.findall(r"^## From Python\n.*?^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    monkeypatch.chdir(tmp_path)  # the snippet's relative paths, pointed at the test's model and images
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "dlv3p-pseudo").symlink_to(seg_run)
    (tmp_path / "photos").symlink_to(images)
    (tmp_path / "photo.jpg").symlink_to(images / f"{ids[0]}.jpg")
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)
    assert ns["mask"].dtype == np.uint8 and ns["mask"].shape == ns["rgb"].shape[:2]
    assert ns["result"]["predicted"] == len(ids)
    assert len(list((tmp_path / "masks" / "overlay").rglob("*.jpg"))) == len(ids)
    np.testing.assert_array_equal(read_mask(tmp_path / "masks" / f"{ids[0]}.png"), ns["mask"])
