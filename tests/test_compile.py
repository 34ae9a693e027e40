"""``train.compile``: the ViT encoders under torch.compile (inductor, C++ on this CPU) train the same step as eager,
checkpoints keep eager parameter names, and a machine where torch.compile cannot work gets a ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from seco_labels.runtime.checkpoint import load_checkpoint
from test_train import tiny_config  # tests/ is on sys.path (pytest prepend mode)
from torch._dynamo.utils import counters

from seco_labels.errors import ConfigError
from seco_labels.method.objective import LOSS_TERMS
from seco_labels.models import build_seco
from seco_labels.training.compiling import compile_errors
from seco_labels.training.trainer import Trainer


def _trainer(voc_root: Path, run_dir: Path, compile: bool, depth: int = 1) -> Trainer:
    """The tiny test config with a ``depth``-block ViT (compiling on 2 CPU cores: about 100 s for 1 block, 130 s
    for 2)."""
    cfg = tiny_config(voc_root)
    cfg.model.backbone_kwargs = {"depth": depth}
    cfg.train.compile, cfg.train.device, cfg.data.num_workers = compile, "cpu", 0
    trainer = Trainer(cfg, run_dir, quiet=True)  # same seed: both trainers start from the same weights
    trainer.step = 4  # every term on
    return trainer


def test_compiled_step_matches_eager_and_saves_eager_names(voc_root, tmp_path):
    eager = _trainer(voc_root, tmp_path / "eager", compile=False)
    compiled = _trainer(voc_root, tmp_path / "compiled", compile=True)
    batch = next(iter(eager.train_loader()))
    counters.clear()
    out_c = compiled.train_step(batch)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo compiled the encoder: the compiled path ran
    out_e = eager.train_step(batch)
    for name in LOSS_TERMS:
        assert out_c.terms[name] == pytest.approx(out_e.terms[name], rel=1e-4, abs=1e-6), name
    assert out_c.counts == out_e.counts
    # the same gradients (AdamW's first update is about lr * sign(grad), so the weights after it would compare the
    # signs of gradients that are 0 up to rounding)
    for (name, p_c), p_e in zip(compiled.model.named_parameters(), eager.model.parameters()):
        if p_e.grad is not None:
            assert (p_c.grad - p_e.grad).norm() <= 1e-4 * p_e.grad.norm() + 1e-9, name
    state = load_checkpoint(compiled.save())["model"]
    assert not [k for k in state if "_orig_mod" in k]
    fresh = build_seco(compiled.cfg.model, compiled.cfg.data.num_classes)
    fresh.load_state_dict(state, strict=True)  # an eager model reads the compiled run's checkpoint
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, compiled.model.state_dict()[name], rtol=0, atol=0, msg=name)


def test_torch_compile_failing_on_the_machine_is_a_config_error(voc_root, tmp_path, monkeypatch):
    """No working C++ compiler (what inductor needs on a CPU): the first step says to set train.compile=false."""
    import torch._functorch.config
    import torch._inductor.config

    torch._dynamo.reset()  # compile afresh, not from this process's earlier graphs
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)  # nor from the on-disk kernel cache
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    trainer = _trainer(voc_root, tmp_path / "run", compile=True, depth=2)  # not the graph the test above compiled
    try:
        with pytest.raises(ConfigError, match=r"train\.compile=true: torch\.compile failed .*C\+\+ compiler.*"
                                              r"set train\.compile=false"):
            trainer.train_step(next(iter(trainer.train_loader())))
    finally:
        torch._dynamo.reset()


def test_unsupported_torch_compile_is_refused_before_training(voc_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(ConfigError, match=r"train\.compile=true: torch\.compile does not support Python"):
        _trainer(voc_root, tmp_path / "run", compile=True)
    _trainer(voc_root, tmp_path / "eager", compile=False)  # the default never asks


def test_compile_errors_pass_other_errors_through():
    with pytest.raises(ConfigError, match="InternalTorchDynamoError: boom"):
        with compile_errors(True):
            raise torch._dynamo.exc.InternalTorchDynamoError("boom")
    with pytest.raises(torch._dynamo.exc.InternalTorchDynamoError):
        with compile_errors(False):  # train.compile off: not ours to explain
            raise torch._dynamo.exc.InternalTorchDynamoError("boom")
    with pytest.raises(ValueError):
        with compile_errors(True):
            raise ValueError("a bug of ours stays a bug")
