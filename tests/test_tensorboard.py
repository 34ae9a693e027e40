"""``--log tensorboard`` (``train.log``): both trainers write every logged number, the validation scores and a few
validation pictures to RUN_DIR/tensorboard/, read back here with TensorBoard's own reader; a resumed run replaces
the steps it trains again; without the package the option stops at once with the install command."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from seco_labels.runtime.checkpoint import check_changes
from test_segmenters import tiny_cfg
from test_train import tiny_config

from seco_labels.cli import cli
from seco_labels.config import get_preset
from seco_labels.config_io import config_to_dict
from seco_labels.errors import ConfigError
from seco_labels.segmenters import SegmenterConfig, SegmenterTrainer
from seco_labels.training.sinks import TENSORBOARD_INSTALL, scalar_fields
from seco_labels.training.trainer import Trainer

SEG_OPTIONS = ["--arch", "unet", "--encoder", "tu-mobilenetv3_small_050", "--model-kwargs",
               "{encoder_depth: 3, decoder_channels: [32, 16, 8]}", "--labels", "gt", "--split", "train",
               "--val-split", "val", "--batch-size", "2", "--crop-size", "64", "--num-workers", "0", "--device", "cpu",
               "--quiet", "--encoder-weights", "random"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _steps(acc, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def _matches(acc, tag: str, records: list[dict], key: str) -> bool:
    """The scalar ``tag`` holds ``key`` of ``records`` at their steps (float32 in the event file)."""
    events = acc.Scalars(tag)
    return ([e.step for e in events] == [r["step"] for r in records]
            and [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6))


def test_seco_run_logs_every_term_the_val_scores_and_images(voc_root, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_config(voc_root, iters=4)
    cfg.train.val_every, cfg.train.val_max_images, cfg.train.log = 2, 2, "tensorboard"
    run = tmp_path / "run"
    Trainer(cfg, run, quiet=True).fit()
    records = _records(run)
    acc = _events(run)
    tags = set(acc.Tags()["scalars"])

    steps = [r for r in records if "loss" in r]
    numeric = {k for r in steps for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    assert {"loss_ptc", "loss_lig", "loss_seg", "lr", "crops_tagged"} <= numeric  # what the tiny run logs
    assert {f"train/{k}" for k in numeric} <= tags
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    for key in ("loss", "loss_ptc", "lr", "crops_tagged"):
        assert _matches(acc, f"train/{key}", steps, key), key

    vals = [r for r in records if "split" in r]
    assert [r["step"] for r in vals] == [1, 3]
    for key in ("cam_miou", "cam_aux_miou", "seg_miou"):
        assert _matches(acc, f"val/{key}", vals, key), key

    image_tags = sorted(acc.Tags()["images"])
    assert len(image_tags) == 2 and all(t.startswith("val_images/") for t in image_tags)  # val_max_images = 2
    for tag in image_tags:
        shots = acc.Images(tag)
        assert [s.step for s in shots] == [1, 3]
        assert shots[0].height >= 240 and shots[0].width > 4 * shots[0].height // 2  # image, CAMs, masks, GT...
        assert shots[0].encoded_image_string.startswith(b"\x89PNG")


def test_fit_segmenter_logs_loss_lr_miou_and_images_from_the_cli(voc_root, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "seg"
    res = CliRunner().invoke(cli, ["fit-segmenter", *SEG_OPTIONS, "--data-root", str(voc_root), "--iters", "2",
                                   "--val-every", "1", "--val-max-images", "1", "--log", "tensorboard",
                                   "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert "log: tensorboard" in (run / "config.yaml").read_text()
    records = _records(run)
    acc = _events(run)
    assert {"train/loss", "train/lr", "train/time", "val/miou"} <= set(acc.Tags()["scalars"])
    assert _matches(acc, "train/loss", [r for r in records if "loss" in r], "loss")
    assert _matches(acc, "train/lr", [r for r in records if "loss" in r], "lr")
    # the validation after step 0 and the final one after step 1, as in metrics.jsonl
    assert _matches(acc, "val/miou", [r for r in records if "split" in r], "miou")
    assert _steps(acc, "val/miou") == [0, 1]
    (tag,) = acc.Tags()["images"]
    assert [s.step for s in acc.Images(tag)] == [0, 1]
    assert acc.Images(tag)[0].width > 3 * acc.Images(tag)[0].height // 2  # image, prediction, GT, errors


def test_a_resumed_run_replaces_the_steps_it_trains_again(voc_root, tmp_path):
    pytest.importorskip("tensorboard")

    def cfg() -> SegmenterConfig:
        return tiny_cfg(voc_root, "gt", train__iters=4, train__ckpt_every=2, train__log="tensorboard",
                        data__val_split="")

    run = tmp_path / "run"
    first = SegmenterTrainer(cfg(), run, quiet=True)
    step = first.train_step

    def crash_at_step_3(batch):
        if first.step == 3:
            raise KeyboardInterrupt
        return step(batch)

    first.train_step = crash_at_step_3
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert _steps(_events(run), "train/loss") == [0, 1, 2]  # step 2 ran after the checkpoint of step 2
    crashed = _events(run).Scalars("train/loss")[2].value
    time.sleep(1.1)  # event files are read in name order, which starts with the second they were opened in

    second = SegmenterTrainer(cfg(), run, quiet=True)
    assert second.resume("auto") and second.step == 2
    second.fit()
    events = _events(run).Scalars("train/loss")
    assert [e.step for e in events] == [0, 1, 2, 3]  # step 2 once: the crashed attempt's is purged
    logged = [r["loss"] for r in _records(run)]
    assert [e.value for e in events] == pytest.approx(logged)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert crashed == pytest.approx(events[2].value)  # the same batch and weights: the resume is exact


def test_without_tensorboard_the_option_stops_at_once_with_the_install_command(voc_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    for command, args in (("train", ["--data-root", str(voc_root), "--preset", "demo"]),
                          ("fit-segmenter", [*SEG_OPTIONS, "--data-root", str(voc_root)])):
        out = tmp_path / command
        res = CliRunner().invoke(cli, [command, *args, "--log", "tensorboard", "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert TENSORBOARD_INSTALL in res.output and 'pip install -e ".[tensorboard]"' in res.output
        assert "--log tensorboard" in res.output
        assert not (out / "config.yaml").exists()  # nothing built or written
    # the Python API stops before the first step too
    cfg = tiny_config(voc_root, iters=2)
    cfg.train.log = "tensorboard"
    with pytest.raises(ConfigError, match=r"pip install -e \"\.\[tensorboard\]\""):
        Trainer(cfg, tmp_path / "api", quiet=True).fit()
    assert not (tmp_path / "api" / "metrics.jsonl").exists()


def test_jsonl_needs_no_tensorboard_and_writes_no_event_files(voc_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    run = tmp_path / "seg"
    res = CliRunner().invoke(cli, ["fit-segmenter", *SEG_OPTIONS, "--data-root", str(voc_root), "--iters", "1",
                                   "--val-split", "", "--log", "jsonl", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in _records(run)] == [0]
    assert not (run / "tensorboard").exists()


def test_unknown_log_kind_is_a_config_error():
    cfg = get_preset("demo")
    cfg.train.log = "wandb"
    with pytest.raises(ConfigError, match="train.log='wandb': choose jsonl or tensorboard"):
        cfg.validate()
    seg = SegmenterConfig()
    seg.data.labels, seg.train.log = "gt", "wandb"
    with pytest.raises(ConfigError, match="train.log='wandb': choose jsonl or tensorboard"):
        seg.validate()
    res = CliRunner().invoke(cli, ["train", "--log", "csv", "--out", "x"])
    assert res.exit_code == 2 and "'csv' is not one of 'jsonl', 'tensorboard'" in res.output


@pytest.mark.parametrize("trainer", [Trainer, SegmenterTrainer])
def test_switching_the_log_on_resume_needs_no_flag(trainer):
    """Runs saved before train.log existed (no such key) or with the other value resume without --allow-changes,
    and the switch is not recorded as a change of the run."""
    new = config_to_dict(get_preset("demo") if trainer is Trainer else SegmenterConfig())
    new["train"]["log"] = "tensorboard"
    older = json.loads(json.dumps(new))
    del older["train"]["log"]
    for old in (older, {**new, "train": {**new["train"], "log": "jsonl"}}):
        keys = trainer.RESUME_KEYS
        assert check_changes(old, new, "last.pt", step=1, silent=keys.silent, allowed=keys.allowed,
                             skip=keys.arch) == []


def test_scalar_fields_keep_the_finite_numbers_under_their_section():
    assert scalar_fields({"step": 3, "lr": 1e-3, "loss": 0.5, "loss_reg": None, "crops_tagged": 4, "time": 0.1,
                          "loss_seg": float("nan")}) == {"train/lr": 1e-3, "train/loss": 0.5,
                                                         "train/crops_tagged": 4.0, "train/time": 0.1}
    assert scalar_fields({"step": 3, "split": "val", "miou": 0.25, "flag": True}) == {"val/miou": 0.25}
    assert scalar_fields({"step": 3, "memory_digests": ["a", "b"]}) == {}
