"""Checkpoint files: short messages for files that are not checkpoints, and the config-change rules of a resume."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner
from seco_labels.runtime.checkpoint import (
    CHANGES_FILE,
    ConfigChange,
    check_changes,
    diff_configs,
    load_checkpoint,
    load_seco,
    record_changes,
    save_checkpoint,
)

from seco_labels.cli import cli
from seco_labels.config import get_preset
from seco_labels.config_io import config_to_dict
from seco_labels.errors import CheckpointError, ConfigError


@pytest.fixture()
def real_checkpoint(tmp_path):
    """A small file in the exact format of seco train's last.pt (no training needed to test reading it)."""
    cfg = config_to_dict(get_preset("demo"))
    return save_checkpoint(tmp_path / "last.pt", {"step": 3, "config": cfg, "model": {"w": torch.randn(64, 64)}})


def test_a_real_checkpoint_loads(real_checkpoint):
    ckpt = load_checkpoint(real_checkpoint)
    assert ckpt["step"] == 3 and ckpt["model"]["w"].shape == (64, 64)


def test_load_seco_names_the_file_that_does_not_fit_its_config_or_is_the_other_trainers(real_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(real_checkpoint))} does not match its own "
                                              "config: "):
        load_seco(real_checkpoint, torch.device("cpu"))
    seg = save_checkpoint(tmp_path / "seg.pt", {"kind": "segmenter", "step": 1, "model": {},
                                                "config": {"model": {"arch": "unet", "encoder": "resnet18"}}})
    with pytest.raises(CheckpointError, match=re.escape(f"{seg} is a seco fit-segmenter checkpoint (unet/resnet18, "
                                                        "step 1); pass the RUN_DIR/last.pt written by seco train")):
        load_seco(seg, torch.device("cpu"))


def test_a_config_file_given_as_checkpoint_is_named_not_a_checkpoint(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("preset: demo\ntrain:\n  iters: 3\n")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"{path} is not a seco checkpoint") and "weights_only" not in msg
    assert len(msg) - len(str(path)) < 200  # one line, not torch's paragraph


def test_a_foreign_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save({"blocks.0.weight": torch.zeros(2)}, path)  # a bare state dict: readable, but not ours
    with pytest.raises(CheckpointError, match="is not a seco checkpoint.*--backbone-weights"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_called_corrupt(real_checkpoint, tmp_path):
    data = real_checkpoint.read_bytes()
    for n in (len(data) // 2, 100):
        cut = tmp_path / f"cut{n}.pt"
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(cut)
        assert str(e.value).startswith(f"checkpoint {cut} is corrupt or truncated"), str(e.value)
        assert "miniz" not in str(e.value) and "weights_only" not in str(e.value)  # no hint at unsafe loading
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(empty)


def test_export_masks_with_a_config_file_as_checkpoint_prints_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("preset: demo\n")
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(path), "--split", "train",
                                   "--out", str(tmp_path / "art")])
    assert res.exit_code == 1, res.output
    assert f"{path} is not a seco checkpoint" in res.output and "weights_only" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_config_diff_uses_dotted_keys_and_compares_kwargs_whole():
    a = config_to_dict(get_preset("demo"))
    b = config_to_dict(get_preset("demo"))
    b["optim"]["lr"] = 1e-3
    b["loss"]["lig"]["weight"] = 0.0
    b["model"]["backbone_kwargs"] = {"depth": 2}
    assert diff_configs(a, b) == [
        ConfigChange("loss.lig.weight", 0.5, 0.0),
        ConfigChange("model.backbone_kwargs", {}, {"depth": 2}),
        ConfigChange("optim.lr", 2e-4, 1e-3),
    ]
    older = config_to_dict(get_preset("demo"))  # a checkpoint written before data.class_names existed
    del older["data"]["class_names"]
    assert diff_configs(older, a) == []  # the new key at its default is no change
    a["data"]["class_names"] = ["background", "person"]
    assert diff_configs(older, a) == [ConfigChange("data.class_names", None, ["background", "person"])]


def test_keys_added_since_compare_as_what_older_versions_did():
    new = config_to_dict(get_preset("coco"))
    older = config_to_dict(get_preset("coco"))  # a checkpoint from before the published optimiser and groups
    del older["loss"]["norm_group_size"], older["optim"]["unstarted_grads"], older["loss"]["energy_filter"]
    assert diff_configs(older, new) == [ConfigChange("loss.energy_filter", "exact", "lattice"),
                                        ConfigChange("loss.norm_group_size", 0, 4),
                                        ConfigChange("optim.unstarted_grads", "none", "zero")]
    new["loss"]["norm_group_size"], new["optim"]["unstarted_grads"] = 0, "none"  # the older behaviour: no change
    new["loss"]["energy_filter"] = "exact"
    assert diff_configs(older, new) == []


def test_change_rules_refuse_allow_and_record(tmp_path):
    old = config_to_dict(get_preset("demo"))
    rules = dict(step=100, silent=("train.device",), allowed=("train.iters",))
    new = json.loads(json.dumps(old))
    new["train"]["device"] = "cuda"
    assert check_changes(old, new, "ck.pt", **rules) == []  # silent
    new["train"]["iters"] = 600
    assert check_changes(old, new, "ck.pt", **rules) == [ConfigChange("train.iters", 300, 600)]
    new["train"]["iters"] = 50
    with pytest.raises(ConfigError, match="already trained 100 steps, more than the requested train.iters=50"):
        check_changes(old, new, "ck.pt", **rules, allow_changes=True)  # no flag makes trained steps untrained
    new["train"]["iters"] = 300
    new["train"]["seed"] = 7
    with pytest.raises(ConfigError, match=r"train.seed: checkpoint 0, requested 7.*--allow-changes"):
        check_changes(old, new, "ck.pt", **rules)
    changes = check_changes(old, new, "ck.pt", **rules, allow_changes=True)
    assert changes == [ConfigChange("train.seed", 0, 7)]
    path = record_changes(tmp_path, changes, step=100, source="ck.pt", allowed_by="--allow-changes")
    assert path == tmp_path / CHANGES_FILE
    entry = json.loads(path.read_text())
    assert entry["changes"] == {"train.seed": {"old": 0, "new": 7}} and entry["step"] == 100
    assert entry["allowed_by"] == "--allow-changes" and entry["time"].endswith("+00:00")


def test_a_checkpoint_of_the_other_trainer_is_named(voc_root, tiny_checkpoint, tmp_path):
    """A fit-segmenter last.pt given where a seco train one is needed, and the reverse: one line naming the file,
    what it is, and what to pass."""
    seg = tmp_path / "seg"
    res = CliRunner().invoke(cli, ["fit-segmenter", "--arch", "unet", "--encoder", "resnet18", "--model-kwargs",
                                   "{encoder_depth: 3, decoder_channels: [32, 16, 8]}", "--labels", "gt",
                                   "--data-root", str(voc_root), "--split", "val", "--val-split", "", "--out", str(seg),
                                   "--iters", "1", "--batch-size", "2", "--crop-size", "64", "--num-workers", "0",
                                   "--device", "cpu", "--quiet", "--encoder-weights", "random"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(seg / "last.pt"), "--split", "val", "--out",
                                   str(tmp_path / "art"), "--data-root", str(voc_root)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert (f"{seg / 'last.pt'} is a seco fit-segmenter checkpoint (unet/resnet18, step 1); pass the RUN_DIR/last.pt "
            "written by seco train") in " ".join(res.output.split())
    assert not (tmp_path / "art").exists()  # refused before anything was written

    assert torch.load(tiny_checkpoint, weights_only=True)["kind"] == "seco"
    res = CliRunner().invoke(cli, ["fit-segmenter", "--arch", "unet", "--encoder", "resnet18", "--labels", "gt",
                                   "--data-root", str(voc_root), "--split", "val", "--val-split", "", "--out",
                                   str(tmp_path / "seg2"), "--resume", str(tiny_checkpoint), "--iters", "1",
                                   "--num-workers", "0", "--device", "cpu", "--quiet", "--encoder-weights", "random"])
    assert res.exit_code == 1
    assert (f"{tiny_checkpoint} is a seco train checkpoint (backbone vit_tiny_patch16_224, step 4); pass the "
            "SEG_DIR/last.pt of a seco fit-segmenter run") in " ".join(res.output.split())
