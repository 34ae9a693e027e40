"""End-to-end training on real images: every loss term active, resume after a kill, checkpoint reload."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seco_labels.checkpoint import load_checkpoint
from seco_labels.config import LossTerm, config_from_dict, config_to_dict, get_preset
from seco_labels.errors import CheckpointError, ConfigError
from seco_labels.models import build_seco
from seco_labels.train import LOSS_TERMS, StepBatchSampler, Trainer


def tiny_config(root: Path, iters: int = 8):
    """Tiny ViT on 64 px crops; every loss term switches on within the first few steps."""
    cfg = get_preset("demo")
    cfg.data.root = str(root)
    cfg.data.train_split = "train"
    cfg.data.crop_size = 64
    cfg.data.batch_size = 2
    cfg.model.backbone_kwargs = {"depth": 2}
    cfg.model.aux_layer = -1
    cfg.model.proj_hidden = 32
    cfg.model.reservoir_size = 2 * 12 * 2
    cfg.model.proto_start = 1
    cfg.cam.scales = (1.0, 0.5)
    cfg.cam.roi_final_cam_from = 3
    cfg.decompose.local_crop_size = 16
    cfg.loss.ptc = LossTerm(0.3, 0)
    cfg.loss.lig = LossTerm(0.5, 2)
    cfg.loss.lil = LossTerm(0.5, 2)
    cfg.loss.seg = LossTerm(0.12, 3)
    cfg.loss.reg = LossTerm(0.05, 3)
    cfg.optim.warmup_iters = 2
    cfg.train.iters = iters
    cfg.train.ckpt_every = 4
    cfg.train.val_every = iters
    cfg.train.val_max_images = 2
    return cfg.validate()


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_term_is_finite_and_active_after_its_start(voc_root, tmp_path):
    cfg = tiny_config(voc_root, iters=6)
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    trainer.resume(None)
    result = trainer.fit()
    log = read_log(tmp_path / "run")
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(6))
    for r in steps:
        for name in LOSS_TERMS:
            value, start = r[f"loss_{name}"], getattr(cfg.loss, name).start
            if r["step"] >= start:
                assert value is not None and math.isfinite(value), (name, r)
            else:
                assert value is None, (name, r)
    for r in steps:  # crop counts: 2 images x (2 global views + 10 crops); rectified only once LIL/LIG run
        assert 0 <= r["crops_tagged"] <= 24
        if r["step"] >= cfg.loss.lil.start:
            assert 0 <= r["crops_rectified"] <= r["crops_tagged"]
        else:
            assert r["crops_rectified"] is None
    val = [r for r in log if "seg_miou" in r]
    assert len(val) == 1 and 0.0 <= val[0]["cam_miou"] <= 1.0 and 0.0 <= val[0]["seg_miou"] <= 1.0
    assert result["seg_miou"] == val[0]["seg_miou"]
    assert (tmp_path / "run" / "config.yaml").is_file()
    # lr follows the schedule: warm-up from ~0, then poly decay
    assert steps[0]["lr"] < steps[2]["lr"] and steps[5]["lr"] < steps[2]["lr"]


def test_checkpoint_loads_into_a_fresh_model_and_rejects_other_configs(voc_root, tmp_path):
    cfg = tiny_config(voc_root, iters=4)
    cfg.train.val_every = 0
    Trainer(cfg, tmp_path / "run", quiet=True).fit()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["model"]["backbone"] == "vit_tiny_patch16_224"
    restored = config_from_dict(ckpt["config"])
    model = build_seco(restored.model, restored.data.num_classes)
    model.load_state_dict(ckpt["model"])  # strict
    torch.testing.assert_close(model.classifier.weight, ckpt["model"]["classifier.weight"])

    other_model_cfg = tiny_config(voc_root)
    other_model_cfg.model.proj_hidden = 64
    t = Trainer(other_model_cfg, tmp_path / "run", quiet=True)
    with pytest.raises(CheckpointError, match="model.proj_hidden: checkpoint 32 vs requested 64"):
        t.resume("auto")


def test_refuses_to_overwrite_a_run_without_resume(voc_root, tmp_path):
    cfg = tiny_config(voc_root, iters=4)
    cfg.train.val_every = 0
    Trainer(cfg, tmp_path / "run", quiet=True).fit()
    with pytest.raises(ConfigError, match="--resume auto"):
        Trainer(cfg, tmp_path / "run", quiet=True).resume(None)


def test_batch_sampler_resumes_mid_epoch():
    full = StepBatchSampler(10, 3, seed=5)
    it = iter(full)
    first = [next(it) for _ in range(7)]
    resumed = iter(StepBatchSampler(10, 3, seed=5, start_step=4))
    assert [next(resumed) for _ in range(3)] == first[4:]
    assert first[0][0][0] == 0 and first[3][0][0] == 1  # 3 batches per epoch, then epoch 1


def _train_cmd(root: Path, run_dir: Path, cfg_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "seco_labels.cli", "train", "--config", str(cfg_file), "--out", str(run_dir),
            "--data-root", str(root), "--quiet", *extra]


@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_one(voc_root, tmp_path):
    import yaml

    cfg = tiny_config(voc_root, iters=10)
    cfg.train.val_every = 0
    cfg.train.ckpt_every = 3
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    subprocess.run(_train_cmd(voc_root, tmp_path / "full", cfg_file), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_train_cmd(voc_root, tmp_path / "killed", cfg_file), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), proc.stderr.read().decode()
    done_before = load_checkpoint(ckpt)["step"]
    assert done_before < 10

    res = subprocess.run(_train_cmd(voc_root, tmp_path / "killed", cfg_file, "--resume", "auto"), env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"resuming {tmp_path / 'killed'} at step {done_before}" in res.stderr

    full, resumed = read_log(tmp_path / "full"), read_log(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(10))
    for a, b in zip(full, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)
    sa = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    sb = load_checkpoint(ckpt)["model"]
    for key in ("classifier.weight", "reservoir.keys", "prototypes.vectors"):
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6)


def test_classification_loss_falls(voc_root, tmp_path):
    cfg = tiny_config(voc_root, iters=24)
    cfg.train.val_every = 0
    cfg.optim.lr = 5e-4
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    trainer.fit()
    cls = [r["loss_cls"] for r in read_log(tmp_path / "run")]
    first, last = sum(cls[:6]) / 6, sum(cls[-6:]) / 6
    assert last < first - 0.1, cls


def test_precision_and_device_resolution():
    from seco_labels.train import resolve_amp, resolve_device

    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert all(resolve_amp(mode, cpu) is None for mode in ("auto", "bf16", "fp16", "off"))  # fp32 on CPU
    cuda = torch.device("cuda")
    assert resolve_amp("fp16", cuda) is torch.float16 and resolve_amp("off", cuda) is None
    assert resolve_amp("bf16", cuda) is torch.bfloat16
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("tpu:0")
