"""`seco fit-segmenter` and `seco compare`: smp architectures trained on exported pseudo masks or GT, offline.

Tiny sizes throughout (64 px crops, 2 steps, one val image, depth-reduced encoders) on an 8-image train split of
voc-mini; torch runs single-threaded here, which is much faster than two threads on a shared 2-core machine.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from seco_labels.artifacts import ArtifactWriter, manifest_path, save_mask_png
from seco_labels.cli import cli
from seco_labels.data import build_reader
from seco_labels.errors import CheckpointError, ConfigError, DataError
from seco_labels.evaluation.evaluate import EvalResult, write_reports
from seco_labels.evaluation.metrics import ConfusionMatrix
from seco_labels.evaluation.plots import PALETTE
from seco_labels.segmenters import (
    SegmenterConfig,
    SegmenterTrainer,
    UnknownNameError,
    build_segmenter,
    ce_loss,
    joint_augment,
    load_run,
    open_labels,
    predict_mask,
    preflight,
    size_multiple,
)
from seco_labels.segmenters.compare import compare_runs, draw_bar_chart
from seco_labels.segmenters.data import MEAN_PIXEL

TINY_UNET = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(voc_root, tmp_path_factory) -> Path:
    """voc-mini with an 8-image train split and a 2-image val split (its two smallest images)."""
    root = tmp_path_factory.mktemp("voc8")
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (root / name).symlink_to(voc_root / name)
    lists = voc_root / "ImageSets" / "Segmentation"
    train = (lists / "train.txt").read_text().split()[:8]
    val = (lists / "val.txt").read_text().split()
    val = sorted(val, key=lambda i: np.prod(Image.open(voc_root / "JPEGImages" / f"{i}.jpg").size))[:2]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val) + "\n")
    return root


def _export(root: Path, out: Path, formats: tuple[str, ...]) -> Path:
    """An export of the train split without a SeCo model: GT masks with a 3 px ignore band along class edges."""
    reader = build_reader("voc", root, "train", require_masks=True)
    attrs = {"dataset_root": str(root), "layout": "voc", "num_classes": reader.num_classes,
             "class_names": reader.class_names, "ignore_index": 255}
    with ArtifactWriter(out, "train", attrs, formats=formats) as writer:
        for i in reader.ids:
            m = reader.load_mask(i).copy()
            edge = np.zeros(m.shape, bool)
            edge[:, 3:] |= m[:, 3:] != m[:, :-3]
            edge[3:, :] |= m[3:, :] != m[:-3, :]
            m[edge] = 255
            writer.add(i, np.zeros((0, *m.shape), np.float32), np.zeros(0, np.int64), m)
    return out


@pytest.fixture(scope="module")
def art_png(root, tmp_path_factory) -> Path:
    return _export(root, tmp_path_factory.mktemp("art") / "png", ("png",))


@pytest.fixture(scope="module")
def art_h5(root, tmp_path_factory) -> Path:
    return _export(root, tmp_path_factory.mktemp("art") / "h5", ("h5",))


def tiny_cfg(root: Path, labels: str | Path, arch: str = "unet", encoder: str = "tu-mobilenetv3_small_050",
             kwargs: dict | None = None, **over) -> SegmenterConfig:
    cfg = SegmenterConfig()
    cfg.data.labels, cfg.data.root, cfg.data.split, cfg.data.val_split = str(labels), str(root), "train", "val"
    cfg.data.crop_size, cfg.data.batch_size, cfg.data.num_workers = 64, 2, 0
    cfg.model.arch, cfg.model.encoder, cfg.model.encoder_weights = arch, encoder, "random"
    cfg.model.kwargs = dict(TINY_UNET if kwargs is None and arch == "unet" else kwargs or {})
    cfg.train.iters, cfg.train.device, cfg.train.val_max_images, cfg.train.ckpt_every = 2, "cpu", 1, 2
    for key, value in over.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg.validate()


def _log(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


# -- the architecture x encoder matrix ------------------------------------------------------------------------
MATRIX = [
    # arch, encoder, smp kwargs, labels, expected size multiple
    ("deeplabv3plus", "resnet18", {}, "png", 16),
    ("unet", "tu-mobilenetv3_small_050", TINY_UNET, "gt", 8),  # depth 3: stride 8
    ("segformer", "mit_b0", {"decoder_segmentation_channels": 32}, "h5", 32),
    ("upernet", "tu-convnext_atto", {"decoder_channels": 32}, "png", 32),
    # DPT's ViT has 16 px patches but the decoder halves the token grid: multiples of 32
    ("dpt", "tu-vit_tiny_patch16_224", {"decoder_intermediate_channels": [32, 64, 64, 64],
                                        "decoder_fusion_channels": 32}, "gt", 32),
]


@pytest.mark.parametrize("arch,encoder,kwargs,labels,multiple", MATRIX, ids=[f"{m[0]}-{m[1]}-{m[3]}" for m in MATRIX])
def test_fit_scores_and_reloads_with_plain_smp(arch, encoder, kwargs, labels, multiple, root, art_png, art_h5,
                                               tmp_path):
    import segmentation_models_pytorch as smp

    source = {"gt": "gt", "png": art_png, "h5": art_h5}[labels]
    run = tmp_path / "run"
    cfg = tiny_cfg(root, source, arch, encoder, kwargs, data__crop_size=50)
    trainer = SegmenterTrainer(cfg, run, quiet=True)
    assert trainer.labels.kind == labels
    assert trainer.multiple == multiple
    assert cfg.data.crop_size == -(-50 // multiple) * multiple  # rounded up, and recorded in config.yaml
    summary = trainer.fit()

    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["arch"], metrics["encoder"], metrics["labels"]) == (arch, encoder, str(source))
    assert metrics["num_images"] == 1 and metrics["split"] == "val"
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["miou"] == summary["val_miou"]
    with open(run / "per_class.csv") as f:
        assert len(list(csv.DictReader(f))) == 21
    assert [r["step"] for r in _log(run) if "loss" in r] == [0, 1]
    assert _log(run)[-1] == {"step": 1, "split": "val", "miou": metrics["miou"]}
    assert "crop_size: " + str(cfg.data.crop_size) in (run / "config.yaml").read_text()

    # the saved model is plain smp: it reloads without seco_labels' help and predicts the same
    reloaded = smp.from_pretrained(str(run / "model")).eval()
    assert type(reloaded) is smp.MODEL_ARCHITECTURES_MAPPING[arch]
    trainer.model.eval()
    image = trainer.val_reader.load_image(trainer.val_reader.ids[0])  # not a multiple of 32: padded, cropped back
    ours = predict_mask(trainer.model, image, multiple=multiple)
    theirs = predict_mask(reloaded, image, multiple=multiple)
    assert ours.shape == image.shape[:2]
    np.testing.assert_array_equal(ours, theirs)


def test_cli_fit_segmenter_then_compare(root, art_png, tmp_path):
    common = ["--arch", "unet", "--encoder", "tu-mobilenetv3_small_050", "--model-kwargs",
              "{encoder_depth: 3, decoder_channels: [32, 16, 8]}", "--data-root", str(root), "--split", "train",
              "--val-split", "val", "--iters", "2", "--batch-size", "2", "--crop-size", "64", "--num-workers", "0",
              "--val-max-images", "1", "--device", "cpu", "--quiet", "--encoder-weights", "random"]
    runs = {}
    for labels in ("gt", str(art_png)):
        runs[labels] = tmp_path / ("gt" if labels == "gt" else "pseudo")
        res = CliRunner().invoke(cli, ["fit-segmenter", *common, "--labels", labels, "--out", str(runs[labels])])
        assert res.exit_code == 0, res.output
        assert "trained unet/tu-mobilenetv3_small_050 for 2 steps" in res.output and "val mIoU" in res.output
    res = CliRunner().invoke(cli, ["compare", str(runs[str(art_png)]), str(runs["gt"]), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    name = "unet/tu-mobilenetv3_small_050"
    assert f"| class | {name} (pseudo) | {name} (gt) | B − A |" in res.output
    for ext in ("md", "csv", "png"):
        assert (tmp_path / "c" / f"compare.{ext}").is_file()
    # a second run into the same folder refuses to overwrite; --resume auto finds it finished
    again = ["fit-segmenter", *common, "--labels", "gt", "--out", str(runs["gt"])]
    res = CliRunner().invoke(cli, again)
    assert res.exit_code == 2 and "already holds a run" in res.output and "--resume auto" in res.output
    res = CliRunner().invoke(cli, [*again, "--resume", "auto"])
    assert res.exit_code == 0 and "resuming" in res.output and "for 2 steps" in res.output


# -- names ----------------------------------------------------------------------------------------------------
def test_arch_choices_come_from_the_smp_registry():
    import segmentation_models_pytorch as smp

    option = next(p for p in cli.commands["fit-segmenter"].params if p.name == "arch")
    assert list(option.type.choices) == list(smp.MODEL_ARCHITECTURES_MAPPING)
    res = CliRunner().invoke(cli, ["fit-segmenter", "--arch", "deeplabv4", "--out", "x"])
    assert res.exit_code == 2 and "'deeplabv4' is not one of" in res.output and "'segformer'" in res.output


def test_unknown_names_list_the_valid_choices(root, tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown encoder 'resnet19'; did you mean resnet18.*valid choices: "
                                               r"resnet18, resnet34, .*mit_b0.*or tu-<any timm model>") as e:
        build_segmenter("unet", encoder="resnet19", classes=21)
    assert isinstance(e.value, KeyError)  # as smp's create_model miss
    with pytest.raises(UnknownNameError, match=r"unknown timm model 'convnext_atom' in encoder 'tu-convnext_atom'; "
                                               r"did you mean convnext_atto"):
        build_segmenter("unet", encoder="tu-convnext_atom", classes=21)
    with pytest.raises(UnknownNameError, match=r"unknown architecture 'unet3'; did you mean unet.*valid choices: "
                                               r"unet, unetplusplus, manet"):
        build_segmenter("unet3", encoder="resnet18", classes=21)
    with pytest.raises(ConfigError, match="smp cannot build dpt with encoder resnet18.*Only Timm encoders"):
        build_segmenter("dpt", encoder="resnet18", classes=21)
    res = CliRunner().invoke(cli, ["fit-segmenter", "--encoder", "resnet19", "--labels", "gt", "--data-root",
                                   str(root), "--split", "train", "--out", str(tmp_path / "r"),
                                   "--encoder-weights", "random"])
    assert res.exit_code == 2 and "unknown encoder 'resnet19'" in res.output
    assert not (tmp_path / "r").exists()


# -- label folder checks: before any training ----------------------------------------------------------------
def _copy(art: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(art, dst)
    return dst


def _labels_error(root: Path, art: Path, **over) -> str:
    with pytest.raises(DataError) as e:
        open_labels(tiny_cfg(root, art, **over).data)
    return str(e.value)


def test_missing_id_is_named(root, art_png, art_h5, tmp_path):
    art = _copy(art_png, tmp_path)
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    (art / "masks_train" / f"{ids[3]}.png").unlink()
    assert _labels_error(root, art) == (
        f"1 of 8 ids of split 'train' ({root}/ImageSets/Segmentation/train.txt) have no mask in {art}/masks_train: "
        f"{ids[3]}; export them (seco export-masks --split train --out {art}) or train on the split the labels "
        "were exported for"
    )
    # and through the CLI: exit 1, nothing trained
    res = CliRunner().invoke(cli, ["fit-segmenter", "--arch", "unet", "--encoder", "resnet18", "--labels", str(art),
                                   "--split", "train", "--out", str(tmp_path / "run"), "--encoder-weights", "random"])
    assert res.exit_code == 1 and f"have no mask in {art}/masks_train: {ids[3]}" in res.output
    assert not (tmp_path / "run" / "last.pt").exists()
    msg = _labels_error(root, art_h5, data__split="val")
    assert msg.startswith(f"label folder {art_h5} holds no labels for split 'val' (no cams_val.h5 or masks_val/); "
                          "it holds split(s) train: export this split (seco export-masks --split val")


def test_wrong_size_mask_is_named(root, art_png, tmp_path):
    art = _copy(art_png, tmp_path)
    ident = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[5]
    save_mask_png(art / "masks_train" / f"{ident}.png", np.zeros((8, 10), np.uint8))
    w, h = Image.open(root / "JPEGImages" / f"{ident}.jpg").size
    assert _labels_error(root, art) == (
        f"mask {art}/masks_train/{ident}.png of {ident} is 10x8 (WxH) but its image {root}/JPEGImages/{ident}.jpg is "
        f"{w}x{h}; masks must have their image's size: export the labels again from this dataset or pass the "
        "--data-root they were exported from"
    )


def test_wrong_classes_are_named(root, art_png, tmp_path):
    art = _copy(art_png, tmp_path)
    manifest = json.loads(manifest_path(art, "train").read_text())
    manifest_path(art, "train").write_text(json.dumps({**manifest, "num_classes": 81}))
    assert _labels_error(root, art, data__layout="voc") == (
        f"labels in {art} were exported for 81 classes ({art}/manifest_train.json) but the dataset has 21 (layout "
        "'voc'); pass the --layout/--num-classes of the dataset they were exported from, or export the labels again "
        "for this dataset"
    )
    # without a recorded number of classes the values are checked up front
    del manifest["num_classes"]
    manifest_path(art, "train").write_text(json.dumps(manifest))
    ident = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[2]
    mask = np.asarray(Image.open(art / "masks_train" / f"{ident}.png")).copy()
    mask[:4, :4] = 30
    save_mask_png(art / "masks_train" / f"{ident}.png", mask)
    assert _labels_error(root, art) == (
        f"mask {art}/masks_train/{ident}.png of {ident} has values [30] outside 0..20 and 255; the labels were made "
        "for another number of classes: export them again or pass the matching --num-classes/--layout"
    )


def test_gt_labels_need_a_data_root(tmp_path):
    cfg = SegmenterConfig()
    cfg.data.labels = "gt"
    with pytest.raises(ConfigError, match="--labels gt trains on the GT masks of --split: pass --data-root DIR"):
        open_labels(cfg.data)
    cfg.data.labels = str(tmp_path / "nope")
    with pytest.raises(DataError, match="label folder .*nope not found; pass an export folder"):
        open_labels(cfg.data)


# -- sizes, loss, augmentation ---------------------------------------------------------------------------------
def test_small_crop_or_single_image_batch_fails_early_with_advice():
    pan = build_segmenter("pan", encoder="resnet18", classes=21)
    with pytest.raises(ConfigError, match=r"pan with encoder resnet18 cannot train on 64x64 crops in batches of 2: "
                                          r".*; use a larger --crop-size"):
        preflight(pan, batch_size=2, crop_size=64, device=torch.device("cpu"), what="pan with encoder resnet18")
    model = build_segmenter("deeplabv3plus", encoder="tu-mobilenetv3_small_050", classes=21)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    preflight(model, batch_size=2, crop_size=64, device=torch.device("cpu"), what="x")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics restored
    with pytest.raises(ConfigError, match="use --batch-size 2 or more"):
        preflight(model, batch_size=1, crop_size=64, device=torch.device("cpu"), what="x")


def test_eval_pads_to_the_multiple_and_crops_back():
    model = build_segmenter("dpt", encoder="tu-vit_tiny_patch16_224", classes=3,
                            decoder_intermediate_channels=[16, 16, 16, 16], decoder_fusion_channels=16).eval()
    assert size_multiple(model) == 32
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError):  # what the padding avoids
        model(torch.zeros(1, 3, 48, 64))
    mask = predict_mask(model, image, multiple=32)
    assert mask.shape == (37, 53) and mask.dtype == np.uint8 and mask.max() < 3


def test_ce_loss_skips_ignore_and_is_zero_on_an_empty_batch():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True)  # (1, K=2, 1, 2)
    target = torch.tensor([[[0, 255]]])
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert torch.isclose(ce_loss(logits, target), expected)
    empty = ce_loss(logits, torch.full((1, 1, 2), 255))
    assert empty.item() == 0.0  # not NaN
    empty.backward()
    assert logits.grad is not None and not logits.grad.any()


def test_joint_augment_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (20, 30)).astype(np.uint8)
    image = np.repeat((mask * 40)[..., None], 3, axis=2).astype(np.uint8)
    img, lab = joint_augment(image, mask, crop_size=40, scale_range=(1.0, 1.0), flip_p=1.0, ignore_index=255, rng=rng)
    assert img.shape == (40, 40, 3) and lab.shape == (40, 40)
    labelled = lab != 255
    assert labelled.sum() == 20 * 30  # the whole image is inside the crop, the padding is ignored
    np.testing.assert_array_equal(img[labelled][:, 0], lab[labelled] * 40)
    assert (img[~labelled] == MEAN_PIXEL).all()
    rows = np.flatnonzero(labelled.any(1))
    cols = np.flatnonzero(labelled.any(0))
    np.testing.assert_array_equal(lab[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], mask[:, ::-1])  # flipped


# -- weights, resume ---------------------------------------------------------------------------------------------
def test_local_encoder_weights_load_strictly(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    donor = build_segmenter("unet", encoder="resnet18", classes=21, **TINY_UNET)
    state = {**donor.encoder.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save({"state_dict": state}, tmp_path / "r18.pth")  # torchvision-style, with the classifier, wrapped
    torch.manual_seed(2)
    model = build_segmenter("unet", encoder="resnet18", classes=21, encoder_weights=tmp_path / "r18.pth", **TINY_UNET)
    assert torch.equal(model.encoder.conv1.weight, donor.encoder.conv1.weight)
    timm_r18 = timm.create_model("resnet18")
    save_file(timm_r18.state_dict(), str(tmp_path / "timm_r18.safetensors"))
    model = build_segmenter("unet", encoder="tu-resnet18", classes=21,
                            encoder_weights=tmp_path / "timm_r18.safetensors", **TINY_UNET)
    assert torch.equal(model.encoder.model.conv1.weight, timm_r18.conv1.weight)
    assert model.config["encoder_weights"] is None  # the saved model reloads without the file
    with pytest.raises(CheckpointError, match=r"do not fit encoder resnet34 \(missing keys: .*layer1\.2\."):
        build_segmenter("unet", encoder="resnet34", classes=21, encoder_weights=tmp_path / "r18.pth", **TINY_UNET)
    with pytest.raises(ConfigError, match="encoder weights file .*nope.pt not found; give a local file"):
        build_segmenter("unet", encoder="resnet18", classes=21, encoder_weights=tmp_path / "nope.pt")


def test_resume_after_an_interruption_matches_an_uninterrupted_run(root, art_png, tmp_path):
    def cfg():  # ASPP dropout draws from the global RNG: the checkpoint must restore it
        return tiny_cfg(root, art_png, "deeplabv3plus", "tu-mobilenetv3_small_050", {}, train__iters=4,
                        data__val_split="")

    full = SegmenterTrainer(cfg(), tmp_path / "full", quiet=True)
    full.fit()
    run = tmp_path / "run"
    first = SegmenterTrainer(cfg(), run, quiet=True)
    step = first.train_step

    def interrupted(batch):
        if first.step == 3:
            raise KeyboardInterrupt
        return step(batch)

    first.train_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert [r["step"] for r in _log(run)] == [0, 1, 2]  # step 2 ran; last.pt was written before it
    second = SegmenterTrainer(cfg(), run, quiet=True)
    assert second.resume("auto") and second.step == 2
    second.fit()
    assert [r["step"] for r in _log(run)] == [0, 1, 2, 3]
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    other = tiny_cfg(root, art_png, "unet", "tu-mobilenetv3_small_050", train__iters=4)
    with pytest.raises(CheckpointError, match=r"trained with another model \(model.arch: checkpoint 'deeplabv3plus' "
                                              r"vs requested 'unet'"):
        SegmenterTrainer(other, run, quiet=True).resume("auto")


# -- compare --------------------------------------------------------------------------------------------------
def _scored(folder: Path, mat: np.ndarray, names: list[str], split: str = "val", split_in_name: bool = False,
            **info) -> Path:
    result = EvalResult(ConfusionMatrix.from_matrix(mat), names, 2, "pred", "gt", split, info=info)
    write_reports(result, folder, split_in_name=split_in_name)
    return folder


def test_compare_writes_table_csv_and_chart(tmp_path):
    names = ["background", "cat", "dog", "bird"]
    a = np.array([[80, 10, 10, 0], [10, 30, 0, 0], [10, 0, 20, 0], [0, 0, 0, 0]])  # bird absent from both
    b = np.diag([90, 40, 40, 0])
    run_a = _scored(tmp_path / "a", a, names, arch="unet", encoder="resnet18", labels="/art")
    run_b = _scored(tmp_path / "b", b, names, arch="unet", encoder="resnet18", labels="gt")
    res = CliRunner().invoke(cli, ["compare", str(run_a), str(run_b), "--out", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "out" / "compare.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "class", "unet/resnet18 (pseudo)", "unet/resnet18 (gt)", "delta"]
    iou_a = ConfusionMatrix.from_matrix(a).iou()
    assert rows[1] == ["", "mIoU", f"{100 * np.nanmean(iou_a):.2f}", "100.00", f"{100 - 100 * np.nanmean(iou_a):.2f}"]
    assert rows[2] == ["0", "background", f"{100 * 80 / 120:.2f}", "100.00", f"{100 - 100 * 80 / 120:.2f}"]
    assert rows[5] == ["3", "bird", "", "", ""]  # no score, not 0
    md = (tmp_path / "out" / "compare.md").read_text()
    assert f"| cat | {100 * 30 / 50:.1f} | 100.0 | +{100 - 100 * 30 / 50:.1f} |" in md
    assert "| bird | - | - | - |" in md

    runs = [load_run(run_a), load_run(run_b)]
    bars = draw_bar_chart(runs, tmp_path / "chart.png", plot_width=500)
    chart = np.asarray(Image.open(tmp_path / "chart.png").convert("RGB"))
    assert {name for _, name, _ in bars} == {"mIoU", "background", "cat", "dog"}  # bird has no score anywhere
    for run, name, (x0, y0, x1, y1) in bars:
        score = runs[run].miou if name == "mIoU" else runs[run].iou[names.index(name)]
        assert x1 - x0 == round(score * 500)
        assert tuple(chart[(y0 + y1) // 2, (x0 + x1) // 2]) == PALETTE[run]


def test_compare_refuses_unscored_or_mismatched_runs(tmp_path):
    with pytest.raises(DataError, match=r"has no metrics.json or metrics_<split>.json; score it first "
                                        r"\(seco fit-segmenter with --val-split"):
        load_run(tmp_path)
    a = _scored(tmp_path / "a", np.eye(2, dtype=int), ["background", "cat"])
    b = _scored(tmp_path / "b", np.eye(3, dtype=int), ["background", "cat", "dog"])
    with pytest.raises(DataError, match="scores 3 classes .* compare runs of the same dataset"):
        compare_runs([load_run(a), load_run(b)], tmp_path / "out")
    res = CliRunner().invoke(cli, ["compare", str(a), str(b), "--name", "only-one"])
    assert res.exit_code == 2 and "1 --name value(s) for 2 run(s)" in res.output


def test_compare_defaults_to_the_runs_folder_and_prints_no_negative_zero(tmp_path, monkeypatch):
    names = ["background", "cat"]
    a = np.diag([100000, 100000])
    b = np.array([[100000, 0], [1, 99999]])  # IoUs lower by about 1e-5: differences that round to zero
    run_a = _scored(tmp_path / "seg" / "a", a, names, arch="unet", encoder="resnet18", labels="/art")
    # a seco evaluate folder: its report carries the split in its name
    run_b = _scored(tmp_path / "seg" / "b", b, names, split_in_name=True)
    res = CliRunner().invoke(cli, ["compare", str(run_a), str(run_b)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "seg"  # the folder that holds both runs, not the current folder
    assert f"wrote {out / 'compare.md'}, {out / 'compare.csv'} and {out / 'compare.png'}" in res.output
    assert "| background | 100.0 | 100.0 | 0.0 |" in res.output and "-0.0" not in res.output
    assert "| **mIoU** | 100.0 | 100.0 | 0.0 |" in (out / "compare.md").read_text()
    rows = list(csv.reader((out / "compare.csv").open()))
    assert rows[1] == ["", "mIoU", "100.00", "100.00", "0.00"] and rows[3] == ["1", "cat", "100.00", "100.00", "0.00"]
    assert not (Path.cwd() / "compare.md").exists()

    monkeypatch.chdir(tmp_path)  # inside the current folder the default is shown relative to it
    res = CliRunner().invoke(cli, ["compare", "seg/a", "seg/b", "--stem", "rel", "-q"])
    assert res.exit_code == 0 and "wrote seg/rel.md, seg/rel.csv and seg/rel.png" in res.output
    res = CliRunner().invoke(cli, ["compare", "seg/a", "--stem", "one", "-q"])  # one run: its parent
    assert res.exit_code == 0 and (tmp_path / "seg" / "one.md").is_file()

    _scored(run_b, a, names, split="train", split_in_name=True)  # now b holds two splits' reports
    res = CliRunner().invoke(cli, ["compare", "seg/a", "seg/b"])
    assert res.exit_code == 1
    assert ("seg/b holds 2 reports (metrics_train.json, metrics_val.json); pass the file to compare, e.g. "
            "seg/b/metrics_val.json") in res.output
    res = CliRunner().invoke(cli, ["compare", "seg/a", "seg/b/metrics_train.json", "-q"])
    assert res.exit_code == 0, res.output


def test_every_option_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "segmenters.md").read_text()
    for command in ("fit-segmenter", "compare"):
        for param in cli.commands[command].params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help":
                    assert f"`{opt}" in doc, f"{command} {opt} is not in docs/segmenters.md"
