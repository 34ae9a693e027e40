"""Fixed choices of config values (``Literal`` fields), the registries they name, the torch-free config import, and
fit-segmenter's own train section (with the run folders of versions whose train section was ``seco train``'s)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, get_args, get_origin

import pytest
import yaml
from click.testing import CliRunner

import seco_labels
from seco_labels.config import (
    AmpMode,
    EnergyFilter,
    LogKind,
    SecoConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    get_preset,
)
from seco_labels.config_io import config_to_dict, either, field_types, load_config_file
from seco_labels.errors import ConfigError
from seco_labels.segmenters.config import RETIRED_KEYS, SegmenterConfig, SegTrainConfig, segmenter_config

REPO = Path(seco_labels.__file__).resolve().parents[1]


def _choice_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, tuple[Any, ...]]]:
    """``(dotted key, choices)`` of every ``Literal`` field of a config dataclass and its sections."""
    hints = field_types(cls)
    for f in fields(cls):
        target = hints[f.name]
        if is_dataclass(target):
            yield from _choice_keys(target, f"{prefix}{f.name}.")
        elif get_origin(target) is Literal:
            yield f"{prefix}{f.name}", get_args(target)


SECO_CHOICES = dict(_choice_keys(SecoConfig))
SEG_CHOICES = dict(_choice_keys(SegmenterConfig))


def test_the_fixed_choices_are_literal_fields():
    assert set(SECO_CHOICES) == {"decompose.area_rule", "loss.lil_variant", "loss.energy_filter",
                                 "optim.unstarted_grads", "train.amp", "train.log"}
    assert set(SEG_CHOICES) == {"optim.name", "train.amp", "train.log"}
    assert SECO_CHOICES["decompose.area_rule"] == ("label_sum", "fraction")
    assert SEG_CHOICES["optim.name"] == ("sgd", "adamw")


def test_choice_literals_agree_with_the_registries_they_name():
    """The Literals are written out in config (which must not import torch); the registries are the code."""
    from seco_labels.method.energy import GAUSSIAN_FILTERS
    from seco_labels.runtime.precision import AMP_MODES
    from seco_labels.training.sinks import LOG_KINDS, SINKS

    assert set(get_args(EnergyFilter)) == set(GAUSSIAN_FILTERS)
    assert set(get_args(AmpMode)) == set(AMP_MODES)
    assert set(get_args(LogKind)) == set(SINKS) == set(LOG_KINDS)


def test_config_imports_without_torch():
    """``seco_labels.config`` and ``config_io`` (and what they import: errors, io, runtime.pretrained) load without
    torch, so reading, checking and writing configs costs no torch import."""
    code = ("import sys; import seco_labels.config, seco_labels.config_io; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('seco_labels')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # a printed list of module names
    assert "seco_labels.config" in loaded
    assert "torch" not in loaded, loaded


@pytest.mark.parametrize("key", sorted(SECO_CHOICES))
def test_seco_choices_are_checked_where_values_are_coerced(key):
    allowed = SECO_CHOICES[key]
    for value in allowed:  # each choice is taken, from --set and from a config file alike
        assert getattr(apply_overrides(SecoConfig(), [f"{key}={value}"]).validate(), key.split(".")[0]) is not None
        section, name = key.split(".")
        assert getattr(getattr(config_from_dict({section: {name: value}}), section), name) == value
    message = re.escape(f"{key}='bogus': choose {either(allowed)}")
    with pytest.raises(ConfigError, match=message):
        apply_overrides(SecoConfig(), [f"{key}=bogus"])
    with pytest.raises(ConfigError, match=message):
        config_from_dict({key.split(".")[0]: {key.split(".")[1]: "bogus"}})
    cfg = get_preset("demo")  # a value set in code, which no coercion saw: validate() refuses it the same way
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, "bogus")
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


@pytest.mark.parametrize("key", sorted(SEG_CHOICES))
def test_segmenter_choices_are_checked_where_values_are_coerced(key):
    allowed = SEG_CHOICES[key]
    for value in allowed:
        cfg = segmenter_config(overrides=["data.labels=gt", f"{key}={value}"])
        assert getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) == value
    message = re.escape(f"{key}='bogus': choose {either(allowed)}")
    with pytest.raises(ConfigError, match=message):
        segmenter_config(overrides=["data.labels=gt", f"{key}=bogus"])
    cfg = SegmenterConfig()
    cfg.data.labels = "gt"
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, "bogus")
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_choice_messages_name_key_value_and_choices():
    with pytest.raises(ConfigError, match=r"^train.amp='fp8': choose auto, bf16, fp16 or off$"):
        apply_overrides(SecoConfig(), ["train.amp=fp8"])
    with pytest.raises(ConfigError, match=r"^loss.energy_filter=3: choose lattice or exact$"):
        apply_overrides(SecoConfig(), ["loss.energy_filter=3"])  # a number is no choice of strings
    with pytest.raises(ConfigError, match=r"^train.log=None: choose jsonl or tensorboard$"):
        apply_overrides(SecoConfig(), ["train.log=null"])
    with pytest.raises(ConfigError, match=r"^optim.unstarted_grads=True: choose zero or none$"):
        apply_overrides(SecoConfig(), ["optim.unstarted_grads=yes"])


def test_a_bare_yaml_off_is_the_choice_off():
    """YAML 1.1 reads a bare ``off`` as False; where "off" is a choice, that is what it meant."""
    cfg = config_from_dict(yaml.safe_load("train: {amp: off}"))
    assert cfg.train.amp == "off"
    assert apply_overrides(SecoConfig(), ["train.amp=off"]).train.amp == "off"
    assert segmenter_config(overrides=["data.labels=gt", "train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="train.log=False: choose jsonl or tensorboard"):
        apply_overrides(SecoConfig(), ["train.log=off"])  # no "off" among these choices


def test_export_options_choices_are_checked_before_anything_loads(tmp_path):
    from seco_labels.inference.export import ExportOptions, export_split

    missing = tmp_path / "nope.pt"  # never opened: the options are refused first
    cases = {"cam_source": ("x", "final or aux"), "tags": ("y", "given or predicted"),
             "amp": ("fp8", "auto, bf16, fp16 or off"),
             "formats": (("h5", "pdf"), "h5, png, coco-json, hf-dataset, cvat or label-studio"),
             "uncertain_as": ("maybe", "label or background")}
    for name, (value, choices) in cases.items():
        bad = value[-1] if isinstance(value, tuple) else value
        with pytest.raises(ConfigError, match=re.escape(f"ExportOptions.{name}={bad!r}: choose {choices}")):
            export_split(missing, "val", tmp_path / "out", options=ExportOptions(**{name: value}))
    assert not (tmp_path / "out").exists()


# -- fit-segmenter's train section -------------------------------------------------------------------------------
def test_segmenter_train_section_holds_what_the_segmenter_reads():
    names = [f.name for f in fields(SegTrainConfig)]
    assert names == ["iters", "seed", "device", "amp", "ckpt_every", "val_every", "log_every", "val_max_images", "log"]
    assert "compile" in {f.name for f in fields(TrainConfig)}
    assert set(config_to_dict(SegmenterConfig())["train"]) == set(names)
    assert {k.split(".", 1)[1] for k in RETIRED_KEYS} == {f.name for f in fields(TrainConfig)} - set(names)


def test_segmenter_train_defaults_are_the_documented_ones():
    """docs/segmenters.md's option table gives the defaults fit-segmenter used when its train section was
    ``seco train``'s; its own section keeps them."""
    doc = (REPO / "docs" / "segmenters.md").read_text()
    options = {"--iters": "iters", "--seed": "seed", "--device": "device", "--amp": "amp", "--val-every": "val_every",
               "--ckpt-every": "ckpt_every", "--val-max-images": "val_max_images", "--log jsonl\\|tensorboard": "log"}
    seg = SegTrainConfig()
    for option, name in options.items():
        row = re.search(rf"^\| `{re.escape(option)}` \| `?([^ `|]+)", doc, re.M)
        assert row, f"{option} is not in docs/segmenters.md's table"
        assert row.group(1) == str(getattr(seg, name)), (option, row.group(1), getattr(seg, name))


def test_fit_segmenter_refuses_seco_only_train_keys(tmp_path):
    from seco_labels.cli import cli

    res = CliRunner().invoke(cli, ["fit-segmenter", "--labels", "gt", "--set", "train.compile=true",
                                   "--out", str(tmp_path / "seg")])
    assert res.exit_code == 2, res.output
    assert "unknown config key 'train.compile'" in res.output
    with pytest.raises(ConfigError, match="unknown config key 'train.compile'"):
        segmenter_config(overrides=["data.labels=gt"], **{"train.compile": True})


def _write_old_config(cfg: SegmenterConfig, path: Path, compile_value: bool) -> dict:
    """config.yaml as fit-segmenter wrote it while its train section was TrainConfig (compile after amp)."""
    data = config_to_dict(cfg)
    train = {}
    for key, value in data["train"].items():
        train[key] = value
        if key == "amp":
            train["compile"] = compile_value
    data["train"] = train
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def test_a_config_file_of_an_older_segmenter_run_loads_without_its_seco_only_keys(tmp_path, caplog):
    old = tmp_path / "config.yaml"
    _write_old_config(segmenter_config(overrides=["data.labels=gt", "train.iters=7"]), old, compile_value=True)
    with caplog.at_level(logging.WARNING, logger="seco_labels.segmenters.config"):
        cfg = segmenter_config(str(old))
    assert cfg.train.iters == 7 and not hasattr(cfg.train, "compile")
    assert f"{old}: ignoring train.compile=True, recorded by fit-segmenter runs of older versions" in caplog.text
    assert "compile" in load_config_file(old)["train"]  # the file itself is left as it is


@pytest.mark.usefixtures("one_torch_thread")
def test_an_older_segmenter_run_resumes_and_predicts(voc_root, tmp_path, caplog):
    """A run whose config.yaml and last.pt record train.compile (as SeCo's train section made every fit-segmenter
    run do) resumes from its own config.yaml, and its model folder predicts."""
    import torch

    from seco_labels.inference.predictors import load_predictor
    from seco_labels.segmenters import SegmenterTrainer

    run = tmp_path / "seg"
    over = {"data.labels": "gt", "data.root": str(voc_root), "data.split": "train", "data.val_split": "",
            "data.crop_size": 64, "data.batch_size": 2, "data.num_workers": 0, "model.arch": "unet",
            "model.encoder": "tu-mobilenetv3_small_050", "model.encoder_weights": "random",
            "model.kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}, "train.iters": 2,
            "train.ckpt_every": 2, "train.device": "cpu"}
    SegmenterTrainer(segmenter_config(**over), run, quiet=True).fit()
    _write_old_config(segmenter_config(str(run / "config.yaml")), run / "config.yaml", compile_value=False)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["config"]["train"]["compile"] = True  # recorded, never read: its value does not matter either
    torch.save(ckpt, run / "last.pt")

    by_options = SegmenterTrainer(segmenter_config(**{**over, "train.iters": 3}), run, quiet=True)
    assert by_options.resume("auto") and by_options.step == 2  # the checkpoint's train.compile is no change
    with caplog.at_level(logging.WARNING, logger="seco_labels.segmenters.config"):
        cfg = segmenter_config(str(run / "config.yaml"), **{"train.iters": 3})
    assert "ignoring train.compile=False" in caplog.text
    trainer = SegmenterTrainer(cfg, run, quiet=True)
    assert trainer.resume("auto") and trainer.step == 2
    assert [c.key for c in trainer.config_changes] == ["train.iters"]
    trainer.fit()
    assert trainer.step == 3
    assert "compile" not in load_config_file(run / "config.yaml")["train"]  # the run's config.yaml, rewritten

    predictor = load_predictor(run, device="cpu")
    assert predictor.kind == "smp" and predictor.num_classes == 21
