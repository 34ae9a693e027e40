"""Pretrained weights by name (seco_labels.runtime.pretrained): resolution, the offline message, and what a run records.

Fully offline: the hub is a fake Hugging Face cache in tmp (``fake_hub``) holding tiny models under the real repo
ids; nothing here opens a connection to the hub (``HF_HUB_OFFLINE=1``, or an endpoint on a closed local port).
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import h5py
import pytest
import timm
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save

from seco_labels.cli import cli
from seco_labels.errors import ConfigError
from seco_labels.runtime.pretrained import (
    PAPER_BACKBONE_WEIGHTS,
    WeightsUnavailableError,
    hub_cache_dir,
    resolve_weights,
)

PAPER_REPO = f"timm/{PAPER_BACKBONE_WEIGHTS}"
#: a ViT-B/16 built this small stands in for the real one under its name: same keys, tiny shapes
TINY_KW = {"depth": 3, "embed_dim": 32, "num_heads": 2}
TINY_SET = "model.backbone_kwargs={depth: 3, embed_dim: 32, num_heads: 2}"


def tiny_vit_b_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of a ViT-B/16 architecture at depth 3 and width 32, with its 1000-class head, as timm's hub
    files hold it (the loader drops the head)."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_base_patch16_224", **TINY_KW)
    return {k: v.contiguous() for k, v in vit.state_dict().items()}


def safetensors_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    return save(sd)


def train_args(voc_root, out, *extra: str) -> list[str]:
    """``seco train --preset voc`` on the demo images, made tiny by --set (the weights option left to the caller);
    learning rate 0, so the checkpoint still holds the starting weights after its one step."""
    sets = [TINY_SET, "data.crop_size=96", "decompose.local_crop_size=32", "data.batch_size=2",
            "model.reservoir_size=48", "model.proj_hidden=32", "data.num_workers=0", "optim.lr=0",
            "cam.scales=[1.0, 0.5]", "train.val_every=0"]
    return ["train", "--preset", "voc", "--data-root", str(voc_root), "--split", "train", "--val-split", "",
            "--iters", "1", "--out", str(out), *[a for s in sets for a in ("--set", s)], *extra]


# -- resolution -----------------------------------------------------------------------------------------------------
def test_random_none_and_a_local_file_resolve_without_the_hub(tmp_path):
    assert resolve_weights(None).is_random and resolve_weights("random").is_random and resolve_weights("").is_random
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(tiny_vit_b_weights()))
    w = resolve_weights(str(path))
    assert w.path == path and w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and w.repo_id is None
    assert w.describe() == f"{path} (sha256 {w.sha256[:12]})"


@pytest.mark.parametrize("spec, message", [
    ("vit_base_patch16_224", r"is an architecture, not weights.*vit_base_patch16_224\.augreg2_in21k_ft_in1k"),
    ("missing/w.pth", r"missing/w\.pth: no such file.*vit_base_patch16_224\.orig_in21k_ft_in1k.*random"),
    ("vit_base_patch16_224.no_such_tag", r"neither a file nor a timm pretrained tag.*tags: vit_base_patch16_224\."),
    ("hf-hub:nameonly", r"hf-hub:ORG/NAME"),
])
def test_names_that_are_no_weights_say_what_would_be(spec, message):
    with pytest.raises(ConfigError, match=message):
        resolve_weights(spec)


def test_a_folder_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path} is a folder"):
        resolve_weights(str(tmp_path))


def test_a_timm_tag_resolves_to_its_repo_in_the_cache(fake_hub):
    snapshot = fake_hub(PAPER_REPO, {"model.safetensors": safetensors_bytes(tiny_vit_b_weights())})
    w = resolve_weights(PAPER_BACKBONE_WEIGHTS)
    assert w.path == snapshot / "model.safetensors" and w.repo_id == PAPER_REPO
    assert w.architecture == "vit_base_patch16_224" and hub_cache_dir() == fake_hub.cache
    assert w.sha256 == hashlib.sha256(w.path.read_bytes()).hexdigest()


def test_a_repo_with_only_the_torch_file_is_read_too(fake_hub):
    buf = io.BytesIO()
    torch.save(tiny_vit_b_weights(), buf)
    snapshot = fake_hub(PAPER_REPO, {"pytorch_model.bin": buf.getvalue()})
    assert resolve_weights(PAPER_BACKBONE_WEIGHTS).path == snapshot / "pytorch_model.bin"


def test_an_hf_hub_id_reads_its_config_architecture(fake_hub):
    config = {"architecture": "vit_base_patch16_224", "num_classes": 1000}
    snapshot = fake_hub("someone/my-vit", {"model.safetensors": safetensors_bytes(tiny_vit_b_weights()),
                                           "config.json": json.dumps(config).encode()})
    w = resolve_weights("hf-hub:someone/my-vit")
    assert (w.path, w.repo_id, w.architecture) == (snapshot / "model.safetensors", "someone/my-vit",
                                                   "vit_base_patch16_224")


def test_an_empty_offline_cache_fails_in_one_line_naming_repo_cache_and_command(fake_hub):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as e:
        resolve_weights(PAPER_BACKBONE_WEIGHTS)
    assert time.perf_counter() - start < 5
    text = str(e.value)
    assert "\n" not in text and "HF_HUB_OFFLINE is set" in text
    assert f"{PAPER_REPO} is not in the Hugging Face cache ({fake_hub.cache})" in text
    assert f"`hf download {PAPER_REPO} model.safetensors`" in text
    assert "--backbone-weights FILE" in text and "--backbone-weights random" in text


def test_an_unreachable_hub_fails_fast_instead_of_retrying(tmp_path, monkeypatch):
    # not offline, but the endpoint is a closed local port: huggingface_hub alone would retry for ~25 s
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"127\.0\.0\.1 cannot be reached.*`hf download timm/"):
        resolve_weights(PAPER_BACKBONE_WEIGHTS)
    assert time.perf_counter() - start < 5


# -- a run: the voc preset loads the paper's weights by name ---------------------------------------------------------
def test_voc_preset_loads_the_papers_weights_by_name_and_records_them(voc_root, tmp_path, fake_hub):
    sd = tiny_vit_b_weights(seed=1)
    snapshot = fake_hub(PAPER_REPO, {"model.safetensors": safetensors_bytes(sd)})
    sha = hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, train_args(voc_root, run))
    assert res.exit_code == 0, res.output
    assert f"backbone vit_base_patch16_224: {PAPER_BACKBONE_WEIGHTS} ({PAPER_REPO}, sha256 {sha[:12]})" in res.stderr
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert (model["backbone_weights"], model["backbone_weights_sha256"]) == (PAPER_BACKBONE_WEIGHTS, sha)
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["config"]["model"]["backbone_weights_sha256"] == sha
    # exactly those tensors in the student (lr 0: its one step changes nothing), and in its EMA teacher up to the
    # rounding of m * w + (1 - m) * w
    loaded = [k for k in sd if not k.startswith("head.")]
    assert len(loaded) == len(sd) - 2
    assert all(torch.equal(ckpt["model"]["encoder.vit." + k], sd[k]) for k in loaded)
    assert all(torch.allclose(ckpt["model"]["teacher.encoder.vit." + k], sd[k], rtol=1e-6, atol=1e-7) for k in loaded)
    # every export's provenance says what the run started from
    art = tmp_path / "art"
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(run / "last.pt"), "--split", "val", "--out",
                                   str(art), "--format", "h5", "--scales", "1.0", "--no-flip", "--num-workers", "0",
                                   "-q"])
    assert res.exit_code == 0, res.output
    with h5py.File(art / "cams_val.h5") as f:
        assert (f.attrs["backbone_weights"], f.attrs["backbone_weights_sha256"]) == (PAPER_BACKBONE_WEIGHTS, sha)


def test_voc_preset_with_an_empty_offline_cache_exits_1_in_seconds(voc_root, tmp_path, fake_hub):
    start = time.perf_counter()
    res = CliRunner().invoke(cli, train_args(voc_root, tmp_path / "run"))
    assert time.perf_counter() - start < 5
    assert res.exit_code == 1, res.output
    assert f"`hf download {PAPER_REPO} model.safetensors`" in res.stderr and str(fake_hub.cache) in res.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_random_is_said_at_the_start_and_recorded(voc_root, tmp_path, fake_hub):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, train_args(voc_root, run, "--backbone-weights", "random"))
    assert res.exit_code == 0, res.output
    assert "backbone vit_base_patch16_224: random init (no pretrained weights)" in res.stderr
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert (model["backbone_weights"], model["backbone_weights_sha256"]) == ("random", "")


def test_weights_of_another_architecture_are_refused_before_loading(voc_root, tmp_path, fake_hub):
    fake_hub(PAPER_REPO, {"model.safetensors": safetensors_bytes(tiny_vit_b_weights())})
    res = CliRunner().invoke(cli, train_args(voc_root, tmp_path / "run", "--set",
                                             "model.backbone=vit_small_patch16_224"))
    assert res.exit_code == 2  # a usage error: the config asks for two things that do not fit
    assert (f"--backbone-weights {PAPER_BACKBONE_WEIGHTS} holds weights of vit_base_patch16_224, but the backbone is "
            "vit_small_patch16_224") in res.stderr


def test_a_pinned_hash_refuses_other_weights(voc_root, tmp_path, fake_hub):
    fake_hub(PAPER_REPO, {"model.safetensors": safetensors_bytes(tiny_vit_b_weights())})
    res = CliRunner().invoke(cli, train_args(voc_root, tmp_path / "run", "--set",
                                             "model.backbone_weights_sha256=00ff"))
    assert res.exit_code == 2
    assert "not the pinned model.backbone_weights_sha256=00ff" in res.stderr


def test_a_resume_with_other_weights_is_refused_naming_both_even_with_allow_changes(voc_root, tmp_path, fake_hub):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, train_args(voc_root, run, "--backbone-weights", "random"))
    assert res.exit_code == 0, res.output
    fake_hub(PAPER_REPO, {"model.safetensors": safetensors_bytes(tiny_vit_b_weights())})
    for extra in ((), ("--allow-changes",)):
        res = CliRunner().invoke(cli, train_args(voc_root, run, "--resume", "auto", "--iters", "2", *extra))
        assert res.exit_code == 2, res.output
        assert (f"checkpoint {run / 'last.pt'} was trained from random init, not the requested "
                f"{PAPER_BACKBONE_WEIGHTS}" in res.stderr and "--backbone-weights random to continue" in res.stderr
                and "another --out" in res.stderr), res.stderr
    # the same weights again: the run continues
    res = CliRunner().invoke(cli, train_args(voc_root, run, "--resume", "auto", "--iters", "2",
                                             "--backbone-weights", "random"))
    assert res.exit_code == 0, res.output
    assert torch.load(run / "last.pt", map_location="cpu", weights_only=False)["step"] == 2


def test_a_resume_reads_no_weights_and_a_changed_file_is_refused(voc_root, tmp_path, fake_hub):
    snapshot = fake_hub(PAPER_REPO, {"model.safetensors": safetensors_bytes(tiny_vit_b_weights())})
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, train_args(voc_root, run)).exit_code == 0
    # the cache is gone (another machine, offline): the checkpoint holds the model, the name is checked, not read
    (snapshot / "model.safetensors").unlink()
    res = CliRunner().invoke(cli, train_args(voc_root, run, "--resume", "auto", "--iters", "2"))
    assert res.exit_code == 0, res.output
    assert "(not read again: the checkpoint holds the trained model)" in res.stderr
    # a local file whose bytes differ from the run's start, under any name: refused by its sha256
    other = tmp_path / "other.safetensors"
    other.write_bytes(safetensors_bytes(tiny_vit_b_weights(seed=5)))
    res = CliRunner().invoke(cli, train_args(voc_root, run, "--resume", "auto", "--iters", "3",
                                             "--backbone-weights", str(other)))
    assert res.exit_code == 2 and f"not the requested {other} (sha256 " in res.stderr, res.output
