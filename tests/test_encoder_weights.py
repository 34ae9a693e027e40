"""`seco fit-segmenter --encoder-weights` by name (smp's own names, timm tags for tu- encoders), a file, or random.

Fully offline: the weights come from a fake Hugging Face cache built in tmp_path (``HF_HUB_CACHE``, with
``HF_HUB_OFFLINE=1``) in huggingface_hub's layout (``models--ORG--NAME/snapshots/<commit>/<file>`` and ``refs/main``),
holding random tensors saved as the repos smp and timm name would hold them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp  # imported up front: the timings below are not import times
import timm
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from seco_labels.cli import cli
from seco_labels.errors import CheckpointError, ConfigError
from seco_labels.io import sha256_file
from seco_labels.runtime.pretrained import WeightsUnavailableError
from seco_labels.segmenters import build_segmenter
from seco_labels.segmenters.config import SegmenterConfig
from seco_labels.segmenters.weights import encoder_weights_name, resolve_encoder_weights

TINY_UNET = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
SMP_REPO = "smp-hub/resnet18.imagenet"
REVISION = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]["revision"]
TU_ENCODER = "tu-mobilenetv3_small_050"
TU_TAG = "mobilenetv3_small_050.lamb_in1k"  # timm's default tag of the model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomised(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The same keys and shapes, other values (so a model that loaded them differs from any random init)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var") else
                torch.randn(v.shape, generator=g)).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def _put(cache: Path, repo_id: str, files: dict[str, bytes | dict], commit: str = "0" * 40) -> Path:
    """A repo in huggingface_hub's cache layout: snapshots/<commit>/<file> and refs/main -> commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, content in files.items():
        if isinstance(content, dict):
            save_file(content, str(snap / name))
        else:
            (snap / name).write_bytes(content)
    return snap


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def smp_r18(hf_cache) -> dict:
    """smp's resnet18 ``imagenet`` repo at smp's pinned revision: config.json and model.safetensors (the encoder's
    keys plus the classifier, which smp drops when loading)."""
    encoder = smp.encoders.get_encoder("resnet18", weights=None)
    state = _randomised({**encoder.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, 1)
    snap = _put(hf_cache, SMP_REPO, {"config.json": json.dumps({"mean": [0.485, 0.456, 0.406]}).encode(),
                                     "model.safetensors": state}, commit=REVISION)
    file = snap / "model.safetensors"
    return {"state": load_file(str(file)), "file": file, "sha": sha256_file(file)}


@pytest.fixture
def timm_mnv3(hf_cache) -> dict:
    """timm's hub repo of the default tag of mobilenetv3_small_050, as timm names it (``timm/<arch>.<tag>``)."""
    state = _randomised(timm.create_model("mobilenetv3_small_050").state_dict(), 2)
    snap = _put(hf_cache, f"timm/{TU_TAG}", {"model.safetensors": state, "config.json": b"{}"}, commit="1" * 40)
    file = snap / "model.safetensors"
    return {"state": state, "file": file, "sha": sha256_file(file)}


def _fit(voc_root: Path, out: Path, *extra: str, encoder: str = "resnet18", quiet: bool = True):
    args = ["fit-segmenter", "--arch", "unet", "--encoder", encoder, "--model-kwargs",
            "{encoder_depth: 3, decoder_channels: [32, 16, 8]}", "--labels", "gt", "--data-root", str(voc_root),
            "--split", "train", "--val-split", "", "--iters", "1", "--batch-size", "2", "--crop-size", "64",
            "--num-workers", "0", "--device", "cpu", "--out", str(out), *extra]
    return CliRunner().invoke(cli, [*args, "--quiet"] if quiet else args)


def _recorded(run: Path) -> tuple[dict, dict]:
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    return yaml.safe_load((run / "config.yaml").read_text())["model"], ckpt


# -- smp's own names ------------------------------------------------------------------------------------------
def test_imagenet_loads_smp_hub_file_from_the_cache_and_records_name_and_sha(smp_r18, voc_root, tmp_path):
    run = tmp_path / "run"
    # lr 1e-30: the one step leaves every parameter as loaded (float32 cannot hold the change)
    res = _fit(voc_root, run, "--encoder-weights", "imagenet", "--lr", "1e-30",
               "--set", f"model.encoder_weights_sha256={smp_r18['sha'][:12]}", quiet=False)
    assert res.exit_code == 0, res.output
    assert f"encoder resnet18: imagenet ({SMP_REPO}, sha256 {smp_r18['sha'][:12]})" in res.output
    model_cfg, ckpt = _recorded(run)
    assert model_cfg["encoder_weights"] == "imagenet" and model_cfg["encoder_weights_sha256"] == smp_r18["sha"]
    assert ckpt["config"]["model"]["encoder_weights_sha256"] == smp_r18["sha"]
    encoder = smp.encoders.get_encoder("resnet18", weights=None)
    for name, _ in encoder.named_parameters():
        assert torch.equal(ckpt["model"][f"encoder.{name}"], smp_r18["state"][name]), name

    # the library entry point the trainer uses: every encoder tensor, buffers included, is the file's
    model = build_segmenter("unet", encoder="resnet18", classes=21, encoder_weights="imagenet", **TINY_UNET)
    mine = model.encoder.state_dict()
    assert set(mine) == set(smp_r18["state"]) - {"fc.weight", "fc.bias"}
    for name, tensor in mine.items():
        assert torch.equal(tensor, smp_r18["state"][name]), name
    # one input channel: smp's adaptation of the first convolution, as smp does it after its own download
    gray = build_segmenter("unet", encoder="resnet18", classes=21, encoder_weights="imagenet", in_channels=1,
                           **TINY_UNET)
    assert torch.allclose(gray.encoder.conv1.weight, smp_r18["state"]["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(gray.encoder.layer4[1].conv2.weight, smp_r18["state"]["layer4.1.conv2.weight"])


def test_imagenet_is_the_default_and_an_empty_cache_exits_1_at_once(hf_cache, voc_root, tmp_path):
    out = tmp_path / "run"
    start = time.perf_counter()
    res = _fit(voc_root, out)  # no --encoder-weights: the default is imagenet
    assert time.perf_counter() - start < 5
    assert res.exit_code == 1, res.output
    msg = " ".join(res.output.split())
    assert "Usage:" not in msg and "Traceback" not in msg
    assert (f"Error: --encoder-weights imagenet (encoder resnet18, smp's {SMP_REPO}): {SMP_REPO} is not in the "
            f"Hugging Face cache ({hf_cache}) and cannot be downloaded now: HF_HUB_OFFLINE is set.") in msg
    assert f"run `hf download {SMP_REPO} model.safetensors --revision {REVISION}`" in msg
    assert msg.endswith("or pass --encoder-weights FILE (a local state dict), or --encoder-weights random to train "
                        "from random init")
    assert not (out / "last.pt").exists() and not (out / "config.yaml").exists()
    with pytest.raises(WeightsUnavailableError, match=f"hf download {SMP_REPO}"):
        build_segmenter("unet", encoder="resnet18", classes=21, encoder_weights="imagenet")


def test_random_is_said_and_recorded(hf_cache, voc_root, tmp_path):
    res = _fit(voc_root, tmp_path / "run", "--encoder-weights", "random", quiet=False)
    assert res.exit_code == 0, res.output
    assert "encoder resnet18: random init (no pretrained weights)" in res.output
    model_cfg, _ = _recorded(tmp_path / "run")
    assert (model_cfg["encoder_weights"], model_cfg["encoder_weights_sha256"]) == ("random", "")


def test_names_smp_does_not_list_are_refused_with_the_choices(hf_cache, voc_root, tmp_path):
    with pytest.raises(ConfigError, match=r"encoder dpn68b has no ImageNet weights in smp \(its weights: "
                                          r"imagenet\+5k\); pass --encoder-weights imagenet\+5k, a local weights "
                                          r"file, or --encoder-weights random to train from random init"):
        encoder_weights_name("imagenet", "dpn68b")
    assert encoder_weights_name("imagenet+5k", "dpn68b") == "imagenet+5k"
    assert encoder_weights_name(None, "resnet18") == "random"  # configs of older runs: random init
    res = _fit(voc_root, tmp_path / "run", "--encoder-weights", "imagnet")
    assert res.exit_code == 2
    assert ("--encoder-weights imagnet is neither a weights file nor one of encoder resnet18's weights in smp "
            "(imagenet, ssl, swsl); did you mean imagenet? pass one of those, a local weights file, or random"
            ) in " ".join(res.output.split())


def test_a_pinned_sha_must_match(smp_r18, voc_root, tmp_path):
    res = _fit(voc_root, tmp_path / "run", "--encoder-weights", "imagenet", "--set",
               "model.encoder_weights_sha256=deadbeef")
    assert res.exit_code == 2
    assert (f"--encoder-weights imagenet resolves to {smp_r18['file']} with sha256 {smp_r18['sha']}, not the pinned "
            "model.encoder_weights_sha256=deadbeef") in " ".join(res.output.split())
    assert not (tmp_path / "run" / "last.pt").exists()


# -- tu- encoders: timm tags ----------------------------------------------------------------------------------
def test_tu_encoder_imagenet_is_timms_default_tag_loaded_strictly(timm_mnv3, voc_root, tmp_path):
    assert encoder_weights_name("imagenet", TU_ENCODER) == TU_TAG
    assert encoder_weights_name("lamb_in1k", TU_ENCODER) == TU_TAG  # a bare tag of the model
    weights = resolve_encoder_weights("imagenet", TU_ENCODER)
    assert (weights.spec, weights.path, weights.sha256) == (TU_TAG, timm_mnv3["file"], timm_mnv3["sha"])
    model = build_segmenter("unet", encoder=TU_ENCODER, classes=21, encoder_weights="imagenet", **TINY_UNET)
    mine = model.encoder.model.state_dict()
    assert len(mine) > 200
    for name, tensor in mine.items():
        assert torch.equal(tensor, timm_mnv3["state"][name]), name

    run = tmp_path / "run"
    res = _fit(voc_root, run, encoder=TU_ENCODER, quiet=False)  # the default, imagenet
    assert res.exit_code == 0, res.output
    assert f"encoder {TU_ENCODER}: {TU_TAG} (timm/{TU_TAG}, sha256 {timm_mnv3['sha'][:12]})" in res.output
    model_cfg, _ = _recorded(run)
    assert (model_cfg["encoder_weights"], model_cfg["encoder_weights_sha256"]) == (TU_TAG, timm_mnv3["sha"])

    # strict: a file that lacks a key of the model does not load
    state = dict(timm_mnv3["state"])
    del state["blocks.1.0.conv_pw.weight"]
    timm_mnv3["file"].unlink()
    save_file(state, str(timm_mnv3["file"]))
    with pytest.raises(CheckpointError, match="blocks.1.0.conv_pw.weight"):
        build_segmenter("unet", encoder=TU_ENCODER, classes=21, encoder_weights="imagenet", **TINY_UNET)
    # weights of another timm model are named as such
    with pytest.raises(ConfigError, match=r"--encoder-weights resnet18.a1_in1k names timm weights of resnet18, but "
                                          r"encoder tu-mobilenetv3_small_050 is timm's mobilenetv3_small_050"):
        resolve_encoder_weights("resnet18.a1_in1k", TU_ENCODER)  # refused before any lookup


# -- resume -----------------------------------------------------------------------------------------------------
def test_resume_keeps_the_weights_and_does_not_need_them_again(smp_r18, hf_cache, voc_root, tmp_path):
    run = tmp_path / "run"
    assert _fit(voc_root, run, "--encoder-weights", "imagenet").exit_code == 0
    more = ["--iters", "2", "--resume", "auto", "--allow-changes"]
    res = _fit(voc_root, run, *more, "--encoder-weights", "random")
    assert res.exit_code == 2
    assert (f"checkpoint {run / 'last.pt'} was trained from imagenet (sha256 "
            f"{smp_r18['sha'][:12]}), not the requested random init; a resume continues the model trained from the "
            "checkpoint's weights, so other weights are refused even with --allow-changes: pass --encoder-weights "
            "imagenet to continue this run, or another --out to train a new run from random") in " ".join(res.output.split())
    res = _fit(voc_root, run, *more, "--encoder-weights", "ssl")
    assert res.exit_code == 2 and "not the requested ssl;" in res.output

    shutil.rmtree(hf_cache / f"models--{SMP_REPO.replace('/', '--')}")  # the weights are gone, offline
    res = _fit(voc_root, run, *more, quiet=False)  # the default, imagenet: the checkpoint's
    assert res.exit_code == 0, res.output
    assert f"encoder resnet18: imagenet (sha256 {smp_r18['sha'][:12]}), as checkpoint" in res.output
    model_cfg, ckpt = _recorded(run)
    assert ckpt["step"] == 2 and model_cfg["encoder_weights_sha256"] == smp_r18["sha"]


def test_resume_of_a_run_from_before_weights_by_name(hf_cache, voc_root, tmp_path):
    """Older runs recorded ``encoder_weights: null`` (random init) and no sha256: random continues them, the new
    default imagenet is refused with the way to continue."""
    run = tmp_path / "run"
    assert _fit(voc_root, run, "--encoder-weights", "random").exit_code == 0
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    ckpt["config"]["model"]["encoder_weights"] = None
    del ckpt["config"]["model"]["encoder_weights_sha256"]
    torch.save(ckpt, run / "last.pt")
    res = _fit(voc_root, run, "--iters", "2", "--resume", "auto")
    assert res.exit_code == 2 and "pass --encoder-weights random to continue this run" in res.output
    res = _fit(voc_root, run, "--iters", "2", "--resume", "auto", "--encoder-weights", "random")
    assert res.exit_code == 0, res.output


def test_the_default_is_imagenet_and_the_demo_trains_from_random_init():
    import inspect

    from seco_labels.demo import pipeline as demo

    assert SegmenterConfig().model.encoder_weights == "imagenet"
    assert '"model.encoder_weights": "random"' in inspect.getsource(demo.run_demo)
