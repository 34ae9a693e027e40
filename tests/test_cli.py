"""The `seco` command line: exit codes, messages naming the fault, and a short real training run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from seco_labels.cli import cli
from seco_labels.cli.options import classes_option

FAST = ["--set", "data.crop_size=64", "--set", "decompose.local_crop_size=16", "--set", "model.backbone_kwargs={depth: 2}",
        "--set", "model.aux_layer=-1", "--set", "cam.scales=1.0", "--set", "train.val_max_images=2"]


def test_help_lists_the_commands():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    assert "train" in res.output and "demo" in res.output


def test_unknown_preset_is_a_usage_error():
    res = CliRunner().invoke(cli, ["train", "--preset", "nope", "--out", "x"])
    assert res.exit_code == 2 and "'nope' is not one of" in res.output


def test_bad_override_is_a_usage_error_naming_the_key(tmp_path):
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--out", str(tmp_path / "r"), "--set", "loss.lgi.weight=0"])
    assert res.exit_code == 2 and "unknown config key 'loss.lgi'" in res.output


def test_missing_data_root_is_a_runtime_error_naming_the_folder(tmp_path):
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--data-root", str(tmp_path / "nowhere"),
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "nowhere is not a folder" in res.output


def test_config_key_options_override_set_and_reach_the_config(tmp_path):
    """A named option (--iters, --seed, --classes) is the config key it names, over --set; a bad value names it."""
    from seco_labels.cli.options import config_key_option, config_values, resolve_config

    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")

    @click.command()
    @config_key_option("train.iters", "--iters", type=int)
    @config_key_option("train.seed", "--seed", type=int)
    @click.option("--set", "overrides", multiple=True)
    @classes_option
    def probe(overrides):
        cfg = resolve_config("demo", None, overrides)
        click.echo(f"{sorted(config_values())} {cfg.train.iters} {cfg.train.seed} {cfg.data.num_classes} "
                   f"{list(cfg.data.class_names)}")

    res = CliRunner().invoke(probe, ["--iters", "7", "--set", "train.iters=3", "--set", "train.seed=5", "--classes",
                                     str(classes)])
    assert res.exit_code == 0, res.output
    assert res.output.split(" ", 4) == ["['data.class_names',", "'data.num_classes',", "'train.iters']", "7",
                                        "5 3 ['background', 'cat', 'dog']\n"]
    bad = CliRunner().invoke(cli, ["fit-segmenter", "--model-kwargs", "[1, 2]", "--out", str(tmp_path / "s")])
    assert bad.exit_code == 2 and "--model-kwargs" in bad.output and "is not a YAML mapping" in bad.output


def test_cuda_without_a_gpu_is_explained(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--device", "cuda", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "CUDA is not available" in res.output


def test_train_runs_and_writes_the_run_folder(voc_root, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"preset": "demo", "train": {"iters": 3, "val_every": 3, "ckpt_every": 2}}))
    out = tmp_path / "run"
    args = ["train", "--config", str(cfg_file), "--data-root", str(voc_root), "--split", "train", "--out", str(out),
            "--batch-size", "2", "--set", "model.reservoir_size=48", "--quiet", *FAST]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "trained 3 steps" in res.output and "seg_miou" in res.output
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["iters"] == 3 and resolved["data"]["root"] == str(voc_root)
    assert resolved["data"]["batch_size"] == 2 and resolved["preset"] == "demo"
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [0, 1, 2]
    assert (out / "last.pt").is_file()
    # a second plain run refuses to clobber it; --resume auto finds it finished and says so, with the last records
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--resume auto" in again.output
    resumed = CliRunner().invoke(cli, [*args, "--resume", "auto"])
    assert resumed.exit_code == 0 and "resuming" in resumed.stderr
    assert f"{out} already finished at step 3/3; nothing to do" in resumed.stdout
    last = resumed.stdout.strip().splitlines()[-1]
    assert last.startswith("last logged: lr ") and f"loss {log[2]['loss']:.4f}" in last and "seg_miou" in last
    assert f"crops_tagged {log[2]['crops_tagged']}," in last  # a count, printed as one
    assert [r["step"] for r in log] == [r["step"] for r in
                                        (json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines())]
    # a changed setting that alters the run is refused, naming it; --allow-changes records it
    changed = CliRunner().invoke(cli, [*args, "--resume", "auto", "--set", "optim.lr=0.001"])
    assert changed.exit_code == 2 and "optim.lr: checkpoint 0.0002, requested 0.001" in changed.output
    assert "--allow-changes" in changed.output and not (out / "config_changes.jsonl").exists()
    allowed = CliRunner().invoke(cli, [*args, "--resume", "auto", "--set", "optim.lr=0.001", "--allow-changes"])
    assert allowed.exit_code == 0, allowed.output
    assert "config changed since the checkpoint: optim.lr 0.0002 -> 0.001" in allowed.stderr
    assert json.loads((out / "config_changes.jsonl").read_text())["changes"] == {
        "optim.lr": {"old": 0.0002, "new": 0.001}}


def test_demo_help_names_its_own_default_preset():
    res = CliRunner().invoke(cli, ["demo", "--help"])
    assert res.exit_code == 0
    preset_help = res.output[res.output.index("--preset"):res.output.index("--config")]
    assert "default: demo" in " ".join(preset_help.split()) and "voc)" not in preset_help


def test_demo_runs_train_export_evaluate(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--iters", "2", "--seg-iters", "2", "--out", str(out), "--quiet",
                                   "--set", "train.val_every=0"])
    assert res.exit_code == 0, res.output
    assert "[1/5] train: 2 steps" in res.output
    from seco_labels.config import get_preset

    split_file = Path(get_preset("demo").data.root) / "ImageSets" / "Segmentation" / "train.txt"
    n = len(split_file.read_text().split())
    assert f"[2/5] export-masks: {n} image(s) of train (0 already done)" in res.output
    assert "[3/5] evaluate on train: pseudo masks mIoU" in res.output
    assert "[4/5] fit-segmenter on pseudo masks: 2 steps, val mIoU" in res.output
    assert "[4/5] fit-segmenter on GT masks: 2 steps, val mIoU" in res.output
    rows = (out / "compare.csv").read_text().splitlines()
    assert "deeplabv3plus (pseudo)" in rows[0] and "deeplabv3plus (gt)" in rows[0] and len(rows) >= 22
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = sorted((out / "artifacts" / "show_train").glob("*.png"))
    assert len(shown) == 4 and f"pictures: {out / 'artifacts' / 'show_train'}" in res.output
    metrics = json.loads((out / "artifacts" / "metrics_train.json").read_text())
    cams = json.loads((out / "artifacts" / "cams_metrics_train.json").read_text())
    assert metrics["num_images"] == cams["num_images"] == n
    assert f"mIoU {100 * metrics['miou']:.2f}" in res.output
    assert len(list((out / "artifacts" / "masks_train").glob("*.png"))) == n
    again = CliRunner().invoke(cli, ["demo", "--iters", "2", "--seg-iters", "2", "--out", str(out), "--quiet",
                                     "--set", "train.val_every=0"])
    assert again.exit_code == 0, again.output
    assert f"export-masks: 0 image(s) of train ({n} already done)" in again.output  # the rerun resumes
    assert "[1/5] train: 2 steps in" in again.output and "(already finished; nothing to do)" in again.output
    assert "loss_cls: " in again.output  # the last logged losses, not an empty summary
    assert "fit-segmenter on pseudo masks: 2 steps, val mIoU" in again.output
    fewer = CliRunner().invoke(cli, ["demo", "--iters", "1", "--seg-iters", "2", "--out", str(out), "--quiet"])
    assert fewer.exit_code == 2 and "has already trained 2 steps, more than the requested train.iters=1" in fewer.output


def _two_image_val_copy(voc_root: Path, root: Path, ids: tuple[str, ...]) -> Path:
    """voc-demo with its train split and a val split of ``ids`` only (PAR on full-size images is the slow part
    of an export on a CPU)."""
    splits = root / "ImageSets" / "Segmentation"
    splits.mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (root / name).symlink_to(voc_root / name)
    (splits / "train.txt").symlink_to(voc_root / "ImageSets" / "Segmentation" / "train.txt")
    (splits / "val.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.mark.slow
def test_crop_224_with_the_published_scales_trains_validates_and_exports(voc_root, tmp_path):
    """Issue 12: 0.75 x 224 = 168, 1.25 x 224 = 280 and 1.75 x 224 = 392 px are no multiples of 16; the published
    stride-16 patch embedding drops the remainder and trains on them. So does this run, with every loss term on
    from step 0, validation at crop 224 with the same scales, and an export of images of 500 x 333 and 448 x 336
    (resized to 224, and to 200 = 12.5 patches) whose masks come back at the images' own sizes."""
    from PIL import Image

    ids = ("coco_000000000260", "coco_000000000536")
    data = _two_image_val_copy(voc_root, tmp_path / "data", ids)
    run = tmp_path / "run"
    scales = "[1.0,0.5,0.75,1.25,1.5,1.75,2.0]"
    res = CliRunner().invoke(cli, [
        "train", "--preset", "demo", "--data-root", str(data), "--split", "train", "--val-split", "val",
        "--out", str(run), "--iters", "2", "--batch-size", "2", "--quiet",
        "--set", "data.crop_size=224", "--set", f"cam.scales={scales}", "--set", "model.reservoir_size=48",
        "--set", "model.backbone_kwargs={depth: 2}", "--set", "model.aux_layer=-1", "--set", "model.proto_start=0",
        "--set", "train.val_every=2", "--set", "train.val_max_images=2", "--set", "optim.warmup_iters=1",
        *[a for term in ("lig", "lil", "seg", "reg") for a in ("--set", f"loss.{term}.start=0")],
    ])
    assert res.exit_code == 0, res.output
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [0, 1]
    for r in steps:
        terms = [r[f"loss_{t}"] for t in ("cls", "aux", "ptc", "lil", "lig", "seg", "reg")]  # all on, all finite
        assert all(v is not None and math.isfinite(v) for v in terms), r
    val = [r for r in log if "seg_miou" in r]
    assert len(val) == 1 and all(0 <= val[0][k] <= 1 for k in ("cam_miou", "cam_aux_miou", "seg_miou"))
    for extra, out in ((["--scales", "published-ms"], tmp_path / "art"),  # input size 224, the crop size
                       (["--scales", "1.0,0.75", "--input-size", "200"], tmp_path / "art200")):
        exported = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(run / "last.pt"), "--split", "val",
                                            "--out", str(out), "--num-workers", "0", "--quiet", *extra])
        assert exported.exit_code == 0, exported.output
        report = json.loads((out / "export_val.json").read_text())
        assert report["exported"] == 2 and report["bad"] == []
        for i in ids:
            with Image.open(data / "JPEGImages" / f"{i}.jpg") as img, Image.open(out / "masks_val" / f"{i}.png") as m:
                assert m.size == img.size  # (500, 333) and (448, 336): sides that are no multiples of 16


def test_a_runs_config_yaml_is_accepted_as_the_defaults_of_export_masks(tiny_checkpoint, tmp_path):
    """``--config RUN/config.yaml`` (sections, not option names) gives the export its dataset root, layout, device
    and workers; a file of option names still works, and a wrong option name is still refused."""
    run_cfg = yaml.safe_load((tiny_checkpoint.parent / "config.yaml").read_text())
    run_cfg["data"]["root"] = str(tmp_path / "moved-dataset")
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(run_cfg))
    args = ["export-masks", "--checkpoint", str(tiny_checkpoint), "--split", "val", "--out", str(tmp_path / "art")]
    res = CliRunner().invoke(cli, [*args, "--config", str(cfg_file)])
    assert res.exit_code != 0 and "moved-dataset" in res.output, res.output  # the file's data.root was used
    assert "unknown key" not in res.output
    options_file = tmp_path / "options.yaml"
    options_file.write_text(yaml.safe_dump({"data-root": str(tmp_path / "elsewhere")}))
    res = CliRunner().invoke(cli, [*args, "--config", str(options_file)])
    assert res.exit_code != 0 and "elsewhere" in res.output, res.output
    options_file.write_text(yaml.safe_dump({"data-rot": "x"}))
    res = CliRunner().invoke(cli, [*args, "--config", str(options_file)])
    assert res.exit_code == 2 and "unknown key 'data-rot'" in res.output
