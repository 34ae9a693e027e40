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
from seco_labels.runtime.checkpoint import load_checkpoint
from seco_labels.runtime.device import StepBatchSampler

from seco_labels.config import LossTerm, config_from_dict, get_preset
from seco_labels.config_io import config_to_dict
from seco_labels.errors import CheckpointError, ConfigError
from seco_labels.method.objective import LOSS_TERMS
from seco_labels.models import build_seco
from seco_labels.training.trainer import Trainer


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
    for r in steps:  # crop counts: 2 images x (2 global views + 10 crops); LIL/LIG's only once they run
        assert 0 <= r["crops_tagged"] <= 24
        local = [r[f"local_crops_{tag}"] for tag in ("class", "background", "uncertain")]
        assert sum(local) == 20 and min(local) >= 0, r  # every local crop gets one of the three tags
        # the two global views of an image share its tag: its class when it has one, else uncertain
        assert r["crops_tagged"] - local[0] - local[1] in (0, 2, 4), r
        if r["step"] >= cfg.loss.lil.start:
            assert 0 <= r["crops_rectified"] + r["background_rectified"] <= r["crops_tagged"]
            assert 0 <= r["lig_positives"] <= r["crops_tagged"] and isinstance(r["lil_pairs"], int), r
            # a certain crop is at least paired with its own teacher key, pushed this step
            assert r["lil_pairs"] >= r["crops_tagged"], r
        else:
            assert {r[k] for k in ("crops_rectified", "background_rectified", "lil_pairs", "lig_positives")} == {None}
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


# -- terms that have not started: zero gradients, as the published 0 x term ----------------------------------------
def _train_steps(cfg, run_dir: Path, steps: int) -> Trainer:
    trainer = Trainer(cfg, run_dir, quiet=True)
    loader = iter(trainer.train_loader())
    for _ in range(steps):
        trainer.train_step(next(loader))
        trainer.step += 1
    return trainer


def _adam_state(trainer: Trainer, module: torch.nn.Module) -> list[dict]:
    return [trainer.optimizer.state[p] for p in module.parameters()]


def test_unstarted_terms_step_the_optimiser_as_the_published_zero_times_term(voc_root, tmp_path, monkeypatch):
    import functools

    import seco_labels.method.objective as objective_module

    cfg = tiny_config(voc_root, iters=6)  # LIL/LIG start at step 2, seg/reg at step 3
    cfg.data.num_workers = 0
    ours = _train_steps(cfg, tmp_path / "ours", 5)

    # the reference: the published graph, every term computed from step 0 and added times 0 before its start, so
    # the gradients of the projection head and decoder are zero tensors that autograd itself produced
    reference_cfg = tiny_config(voc_root, iters=6)
    reference_cfg.data.num_workers = 0
    reference_cfg.optim.unstarted_grads = "none"  # no filling: the graph alone
    with monkeypatch.context() as m:
        m.setattr(objective_module, "seco_step", functools.partial(objective_module.seco_step, times_zero=True))
        reference = _train_steps(reference_cfg, tmp_path / "reference", 5)

    for (name, a), b in zip(ours.model.state_dict().items(), reference.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)
    for module in (ours.model.proj_head, ours.model.decoder):
        for st in _adam_state(ours, module):
            assert float(st["step"]) == 5  # stepped at every step, before its terms started too
    for module in ("proj_head", "decoder"):
        pairs = zip(_adam_state(ours, getattr(ours.model, module)),
                    _adam_state(reference, getattr(reference.model, module)))
        for a, b in pairs:
            assert float(a["step"]) == float(b["step"])
            torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=0, atol=1e-10)
            torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=1e-12)

    # the former behaviour stays an option: those parameters were not stepped before their terms started
    cfg.optim.unstarted_grads = "none"
    skipped = _train_steps(cfg, tmp_path / "none", 5)
    assert [float(st["step"]) for st in _adam_state(skipped, skipped.model.proj_head)][:1] == [3.0]
    assert [float(st["step"]) for st in _adam_state(skipped, skipped.model.decoder)][:1] == [2.0]
    first = skipped.model.proj_head.mlp[0].weight
    assert (first - ours.model.proj_head.mlp[0].weight).abs().max() > 1e-5


# -- loss normalisation groups: the coco preset normalises as the published 2 GPUs x 4 images --------------------
def _record_calls(monkeypatch, module, names: tuple[str, ...]) -> dict[str, list]:
    """Wrap ``module``'s loss functions so that every call's arguments are recorded; the results are unchanged."""
    calls: dict[str, list] = {name: [] for name in names}
    for name in names:
        def wrapped(*args, _fn=getattr(module, name), _name=name, **kwargs):
            calls[_name].append((args, kwargs))
            return _fn(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)
    return calls


def _published_group_terms(calls: dict[str, list], groups: int, views: int) -> dict[str, float]:
    """The published per-GPU losses from the whole-batch calls of a step: each group of images computes PTC, seg,
    LIL and LIG alone (LIL keyed by the group's own step keys, then the reservoir), and the groups are averaged."""
    from seco_labels.method.losses import lig_loss, lil_loss, ptc_loss, seg_loss

    (ptc_args, ptc_kw), = calls["ptc_loss"]
    (seg_args, seg_kw), = calls["seg_loss"]
    (lil_args, lil_kw), = calls["lil_loss"]
    (lig_args, _), = calls["lig_loss"]
    q, keys, q_tags, key_tags, tau = lil_args
    rows = q.shape[0] // groups  # views of one group's images
    step = rows * groups  # this step's keys come first
    out: dict[str, list[float]] = {"ptc": [], "seg": [], "lil": [], "lig": []}
    for g in range(groups):
        own = slice(g * rows, (g + 1) * rows)
        half = lambda t: t.chunk(groups)[g]  # noqa: E731 - images of group g
        out["ptc"].append(float(ptc_loss(*map(half, ptc_args), **ptc_kw).detach()))
        out["seg"].append(float(seg_loss(*map(half, seg_args[:2]), *seg_args[2:], **seg_kw).detach()))
        lil, revised, *_ = lil_loss(q[own], torch.cat([keys[own], keys[step:]]), q_tags[own],
                                    torch.cat([key_tags[own], key_tags[step:]]), tau, **lil_kw)
        out["lil"].append(float(lil.detach()))
        out["lig"].append(float(lig_loss(q[own], lig_args[1], revised, lig_args[3]).detach()))
    assert rows % views == 0
    return {name: sum(v) / groups for name, v in out.items()}


def test_coco_preset_normalises_losses_as_the_published_two_gpus_of_four_images(coco_root, tmp_path, monkeypatch):
    import copy

    from seco_labels.runtime.device import batch_to_device

    import seco_labels.method.objective as objective_module
    from seco_labels.method.objective import seco_step

    coco = get_preset("coco")
    cfg = tiny_config(coco_root)
    cfg.data.layout, cfg.data.num_classes, cfg.data.num_workers = "coco", 81, 0
    cfg.data.batch_size = coco.data.batch_size  # 8: the published 2 GPUs x 4 images
    cfg.model.reservoir_size = 8 * 12 * 2
    cfg.loss = copy.deepcopy(coco.loss)  # the preset's normalisation, weights and temperatures
    for name in LOSS_TERMS:
        getattr(cfg.loss, name).start = 0  # every term at step 0
    cfg.validate()
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    batch = batch_to_device(next(iter(trainer.train_loader())), trainer.device)
    model = copy.deepcopy(trainer.model)  # the step updates the memories: each run starts from the same ones

    whole_batch = copy.deepcopy(cfg)
    whole_batch.loss.norm_group_size = 0  # one group of 8: the losses of one GPU with all 8 images
    with monkeypatch.context() as m:
        calls = _record_calls(m, objective_module, ("ptc_loss", "seg_loss", "lil_loss", "lig_loss"))
        one_group = seco_step(trainer.model, batch, 0, whole_batch, trainer.par)
    published = _published_group_terms(calls, groups=2, views=12)
    # the grouping matters: LIL divides by rows x positives, so over one group of 8 it is about half as strong
    # (0.59x here, where the 96 step keys are a third of the 288 columns; 0.50x with the real reservoir of 4608)
    assert one_group.terms["lil"] < 0.7 * published["lil"]

    out = seco_step(model, batch, 0, cfg, trainer.par)
    for name, value in published.items():
        assert out.terms[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    for name in ("cls", "aux", "reg"):  # means over images: no group counts
        assert out.terms[name] == pytest.approx(one_group.terms[name], rel=1e-5, abs=1e-9), name


def test_cam_flip_false_crops_from_the_cams_of_the_unflipped_image_alone(voc_root, tmp_path, monkeypatch):
    """cam.flip=False (data.flip_p=0: a mirrored class is another) keeps the flipped image out of training's CAMs."""
    import copy

    from seco_labels.runtime.device import batch_to_device

    import seco_labels.method.objective as objective_module
    from seco_labels.method.cams import cam_to_roi_mask, multi_scale_cams
    from seco_labels.method.objective import seco_step

    cfg = tiny_config(voc_root)
    cfg.data.num_workers = 0
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    batch = batch_to_device(next(iter(trainer.train_loader())), trainer.device)
    x = batch["image"]
    with torch.no_grad():  # step 0 crops from the aux CAM (cam.roi_final_cam_from = 3)
        expected = {flip: multi_scale_cams(trainer.model.cams, x, cfg.cam.scales, flip=flip)[1]
                    for flip in (True, False)}
    assert not torch.allclose(expected[True], expected[False], atol=1e-3)
    for flip in (True, False):
        seen = []
        monkeypatch.setattr(objective_module, "cam_to_roi_mask",
                            lambda cam, *a, **k: seen.append(cam) or cam_to_roi_mask(cam, *a, **k))
        cfg.cam.flip = flip
        seco_step(copy.deepcopy(trainer.model), batch, 0, cfg, trainer.par)
        torch.testing.assert_close(seen[0], expected[flip], rtol=1e-4, atol=1e-5)


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
    from seco_labels.runtime.device import resolve_device
    from seco_labels.runtime.precision import resolve_amp

    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None  # fp32 on CPU unless asked
    assert resolve_amp("bf16", cpu) is torch.bfloat16 and resolve_amp("fp16", cpu) is torch.float16
    cuda = torch.device("cuda")
    assert resolve_amp("fp16", cuda) is torch.float16 and resolve_amp("off", cuda) is None
    assert resolve_amp("bf16", cuda) is torch.bfloat16
    with pytest.raises(ConfigError, match="cuda and cpu, not mps"):
        resolve_amp("bf16", torch.device("mps"))
    with pytest.raises(ConfigError, match="choose auto"):
        resolve_amp("fp8", cpu)
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("tpu:0")


def _cfg_file(root: Path, tmp_path: Path, iters: int, **train) -> Path:
    import yaml

    cfg = tiny_config(root, iters=iters)
    cfg.train.val_every = 0
    for key, value in train.items():
        setattr(cfg.train, key, value)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path


def _wait_for_first_step(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"no step logged in {log}; exit {proc.poll()}")


@pytest.mark.slow
def test_sigint_saves_the_step_and_resume_logs_each_step_once(voc_root, tmp_path):
    iters = 40  # far more than run before the signal lands; ckpt_every above iters: only the signal saves
    cfg_file = _cfg_file(voc_root, tmp_path, iters, ckpt_every=1000)
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(voc_root, run, cfg_file), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_first_step(proc, run / "metrics.jsonl")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = load_checkpoint(run / "last.pt")["step"]
    assert 0 < step < iters
    assert f"stopped by SIGINT after step {step}/{iters}; saved {run / 'last.pt'}; to continue, run the same " \
           "command with --resume auto" in err
    assert "Traceback" not in err
    assert [r["step"] for r in read_log(run)] == list(range(step))  # the log ends where the checkpoint does

    res = subprocess.run(_train_cmd(voc_root, run, cfg_file, "--resume", "auto"), env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run} at step {step}" in res.stderr
    assert [r["step"] for r in read_log(run)] == list(range(iters))
    assert load_checkpoint(run / "last.pt")["step"] == iters


def test_resume_auto_without_checkpoint_replaces_the_dead_attempts_log_and_logs_plain_lines(voc_root, tmp_path):
    from click.testing import CliRunner

    from seco_labels.cli import cli

    iters = 5
    cfg_file = _cfg_file(voc_root, tmp_path, iters, log_every=2)
    run = tmp_path / "run"
    run.mkdir()
    # an attempt that died before its first checkpoint left 7 steps in the log and no last.pt
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 9.0}) + "\n" for i in range(7)))
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg_file), "--out", str(run), "--data-root",
                                   str(voc_root), "--resume", "auto"])
    assert res.exit_code == 0, res.output
    assert f"no checkpoint in {run}: starting at step 0" in res.stderr
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(iters)) and all(r["loss"] != 9.0 for r in log)
    # not a terminal: a plain line every train.log_every steps and at the end, the bar's content and more
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("step ")]
    assert [ln.split(" | ")[0] for ln in lines] == ["step 2/5", "step 4/5", "step 5/5"], res.stderr
    pattern = (r"step 4/5 \| loss \d+\.\d{4} \(cls \d+\.\d{4}, aux \d+\.\d{4}, ptc \d+\.\d{4}, lig -?\d+\.\d{4}, "
               r"lil -?\d+\.\d{4}, seg -?\d+\.\d{4}, reg -?\d+\.\d{4}\) \| lr \d\.\d{3}e-\d\d \| \d+\.\d{3} s/it \| "
               r"eta \d+:\d\d:\d\d \| peak mem \d+ MB")
    import re

    assert re.fullmatch(pattern, lines[1]), lines[1]
    assert f"{log[3]['loss']:.4f}" in lines[1] and f"lr {log[3]['lr']:.3e}" in lines[1]
    assert lines[2].split(" | ")[4] == "eta 0:00:00"
    # the summary prints counts as integers
    summary = res.stdout.strip().splitlines()[-1]
    assert f"crops_tagged {log[-1]['crops_tagged']}," in summary and isinstance(log[-1]["crops_tagged"], int)
    # --quiet: no lines
    again = CliRunner().invoke(cli, ["train", "--config", str(cfg_file), "--out", str(tmp_path / "q"),
                                     "--data-root", str(voc_root), "--quiet"])
    assert again.exit_code == 0 and not [ln for ln in again.stderr.splitlines() if ln.startswith("step ")]


def test_resuming_with_changed_settings_is_refused_or_recorded(voc_root, tmp_path):
    from seco_labels.runtime.checkpoint import CHANGES_FILE

    run = tmp_path / "run"
    cfg = tiny_config(voc_root, iters=2)
    cfg.train.val_every = 0
    Trainer(cfg, run, quiet=True).fit()
    changes = run / CHANGES_FILE

    def resumed(allow: bool = False, **values) -> Trainer:
        from seco_labels.config import set_values

        t = Trainer(set_values(tiny_config(voc_root, iters=2), {"train.val_every": 0, **values}), run, quiet=True)
        t.resume("auto", allow_changes=allow)
        return t

    # where and how verbosely it runs: fine, not recorded
    assert resumed(**{"data.num_workers": 1, "train.log_every": 7}).config_changes == []
    assert not changes.exists()
    # the run's settings: refused, naming key, old and new value and what to do; nothing is recorded
    with pytest.raises(ConfigError, match=r"optim.lr: checkpoint 0.0002, requested 0.001.*another --out.*"
                                          r"--allow-changes"):
        resumed(**{"optim.lr": 1e-3})
    with pytest.raises(ConfigError, match="already trained 2 steps, more than the requested train.iters=1"):
        resumed(**{"train.iters": 1})
    assert not changes.exists()
    # extending the run: allowed and recorded; other changes with the flag: recorded as such
    t = resumed(**{"train.iters": 4})
    assert [str(c) for c in t.config_changes] == ["train.iters 2 -> 4"] and t.step == 2
    t = resumed(True, **{"train.iters": 4, "optim.lr": 1e-3, "train.seed": 3})
    entries = [json.loads(ln) for ln in changes.read_text().splitlines()]
    assert [e["changes"] for e in entries] == [
        {"train.iters": {"old": 2, "new": 4}},
        {"optim.lr": {"old": 2e-4, "new": 1e-3}, "train.iters": {"old": 2, "new": 4}, "train.seed": {"old": 0, "new": 3}},
    ]
    assert [e["allowed_by"] for e in entries] == ["allowed without a flag", "--allow-changes"]
    assert all(e["step"] == 2 and e["checkpoint"] == str(run / "last.pt") for e in entries)


@pytest.mark.slow
def test_fit_segmenter_sigterm_saves_resumes_logs_plain_lines_and_refuses_changes(voc_root, tmp_path):
    """The segmenter trainer shares the loop's behaviour: SIGTERM (a cluster's preemption), progress lines, changes."""
    import re

    iters, run = 30, tmp_path / "seg"
    cmd = [sys.executable, "-m", "seco_labels.cli", "fit-segmenter", "--arch", "unet", "--encoder",
           "tu-mobilenetv3_small_050", "--model-kwargs", "{encoder_depth: 3, decoder_channels: [32, 16, 8]}",
           "--labels", "gt", "--data-root", str(voc_root), "--layout", "voc", "--split", "train", "--val-split", "",
           "--out", str(run), "--iters", str(iters), "--batch-size", "2", "--crop-size", "64", "--num-workers", "1",
           "--ckpt-every", "1000", "--device", "cpu", "--set", "train.log_every=1", "--encoder-weights", "random"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for_first_step(proc, run / "metrics.jsonl")
    # to the whole process group, DataLoader worker included, as timeout and SLURM send it: the worker must not die
    # of it before the main process saves
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    step = load_checkpoint(run / "last.pt")["step"]
    assert 0 < step < iters
    assert f"stopped by SIGTERM after step {step}/{iters}; saved {run / 'last.pt'}" in err
    lines = [ln for ln in err.splitlines() if ln.startswith("step ")]
    assert lines and re.fullmatch(r"step 1/30 \| loss \d+\.\d{4} \| lr \d\.\d{3}e-\d\d \| \d+\.\d{3} s/it \| "
                                  r"eta \d+:\d\d:\d\d \| peak mem \d+ MB", lines[0]), err

    refused = subprocess.run([*cmd, "--resume", "auto", "--lr", "0.5"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "optim.lr: checkpoint 0.01, requested 0.5" in refused.stderr, refused.stderr
    res = subprocess.run([*cmd, "--resume", "auto", "--quiet"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run} at step {step}" in res.stderr and "step 1/" not in res.stderr  # --quiet: no lines
    assert [r["step"] for r in read_log(run)] == list(range(iters))
    done = subprocess.run([*cmd, "--resume", "auto", "--quiet"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{run} already finished at step {iters}/{iters}; nothing to do" in done.stdout
    assert "last logged: lr " in done.stdout and "steps 30" in done.stdout


def _torchrun_workers(pid: int) -> dict[int, int]:
    """{RANK: pid} of the processes below ``pid`` that torchrun started (read from /proc)."""
    found: dict[int, int] = {}
    children = [pid]
    while children:
        parent = children.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            for child in (task / "children").read_text().split():
                children.append(int(child))
                try:
                    env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
                if rank is not None:
                    found.setdefault(rank, int(child))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers in /proc (Linux)")
def test_a_signal_to_one_torchrun_process_stops_every_process_after_the_same_step(voc_root, tmp_path):
    import yaml

    iters, run = 40, tmp_path / "run"
    cfg = tiny_config(voc_root, iters=iters)
    cfg.data.batch_size, cfg.data.num_workers = 4, 0  # the global batch: 2 images per process
    cfg.model.reservoir_size = 4 * 12 * 2
    cfg.train.val_every, cfg.train.ckpt_every = 0, 1000
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "seco_labels.cli", "train", "--config", str(cfg_file), "--out", str(run), "--device", "cpu", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_first_step(proc, run / "metrics.jsonl")
    workers = _torchrun_workers(proc.pid)
    assert sorted(workers) == [0, 1], workers
    os.kill(workers[1], signal.SIGTERM)  # rank 1 alone: rank 0 must learn it from the per-step all-reduce
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err  # torchrun reports its workers' non-zero exit
    step = load_checkpoint(run / "last.pt")["step"]
    assert 0 < step < iters
    assert f"stopped by SIGTERM after step {step}/{iters}; saved {run / 'last.pt'}" in err, err[-3000:]
    log = read_log(run)
    assert [r["step"] for r in log if "loss" in r] == list(range(step))
    # the stop checkpoint checked that both processes hold the same memories after that same step
    digests = [r for r in log if "memory_digests" in r]
    assert [r["step"] for r in digests] == [step - 1] and len(set(digests[0]["memory_digests"])) == 1


# -- a loss that diverges or goes non-finite ---------------------------------------------------------------------
def test_exploding_loss_warns_then_non_finite_loss_stops_with_our_error(voc_root, tmp_path, capfd):
    from seco_labels.training.loss_monitor import NonFiniteLossError

    cfg = tiny_config(voc_root, iters=12)
    cfg.train.val_every, cfg.data.num_workers, cfg.train.ckpt_every = 0, 0, 3
    cfg.optim.lr = 2.0  # 10^4 x the demo preset's: the loss grows from 1.5 to ~1e7 within 12 steps, still finite
    Trainer(cfg, tmp_path / "big", quiet=True).fit()
    err = capfd.readouterr().err
    assert "warning: step 3: loss " in err and "training may be diverging" in err, err
    assert err.count("training may be diverging") == 1  # once per 100 steps, not at every step

    cfg.optim.lr = 1e4  # the loss goes NaN at step 3, after the checkpoint of step 3
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg, run, quiet=True).fit()
    message = str(info.value)
    assert message.startswith("loss term cls = nan at step 3 with learning rate ")
    assert f"the last good checkpoint is {run / 'last.pt'} (saved before this step)" in message
    assert "Lower the learning rate (--set optim.lr=...) and continue with --resume auto --allow-changes" in message
    assert [r["step"] for r in read_log(run)] == [0, 1, 2]  # the bad step is neither logged nor applied
    from click.testing import CliRunner

    from seco_labels.cli import cli

    cfg_file = _cfg_file(voc_root, tmp_path, 12, ckpt_every=3)
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg_file), "--set", "optim.lr=10000",
                                   "--set", "data.num_workers=0", "--out", str(tmp_path / "c"), "--quiet"])
    assert res.exit_code == 1 and "Error: loss term cls = nan at step 3" in res.output
    assert "Traceback" not in res.output
