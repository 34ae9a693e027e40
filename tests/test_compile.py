"""``train.compile``: the ViT blocks under torch.compile (inductor, C++ on this CPU) train the same step as eager, one
graph per calling state serves every block, checkpoints keep eager parameter names, and a machine where
torch.compile cannot work gets a ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from test_train import tiny_config  # tests/ is on sys.path (pytest prepend mode)
from torch._dynamo.utils import counters

from seco_labels.errors import ConfigError
from seco_labels.method.objective import LOSS_TERMS
from seco_labels.models import build_seco
from seco_labels.runtime.checkpoint import load_checkpoint
from seco_labels.training.compiling import compile_errors
from seco_labels.training.trainer import Trainer


def _trainer(voc_root: Path, run_dir: Path, compile: bool, depth: int = 2) -> Trainer:
    """The tiny test config with a ``depth``-block ViT."""
    cfg = tiny_config(voc_root)
    cfg.model.backbone_kwargs = {"depth": depth}
    cfg.train.compile, cfg.train.device, cfg.data.num_workers = compile, "cpu", 0
    trainer = Trainer(cfg, run_dir, quiet=True)  # same seed: both trainers start from the same weights
    trainer.step = 4  # every term on
    return trainer


def test_compiled_step_matches_eager_and_saves_eager_names(voc_root, tmp_path, monkeypatch):
    from torch._inductor import config as inductor_config

    from benchmarks.step_ops import count_step

    monkeypatch.setattr(inductor_config.cpp, "enable_kernel_profile", True)  # the twin's count below sees kernels
    eager = _trainer(voc_root, tmp_path / "eager", compile=False)
    compiled = _trainer(voc_root, tmp_path / "compiled", compile=True)
    encoders = (compiled.model.encoder, compiled.model.teacher["encoder"])
    assert all(b._compiled_call_impl is not None for e in encoders for b in e.vit.blocks)  # regional: the blocks,
    assert all(e._compiled_call_impl is None for e in encoders)  # not the whole encoder
    batch = next(iter(eager.train_loader()))
    torch._dynamo.reset()  # count this test's graphs only
    counters.clear()
    out_c = compiled.train_step(batch)
    # the student with and without gradients, the teacher: one graph each for both blocks (6 if each block had its
    # own), so the compiled path ran and the blocks share it
    assert 1 <= counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
    out_e = eager.train_step(batch)
    for name in LOSS_TERMS:
        assert out_c.terms[name] == pytest.approx(out_e.terms[name], rel=1e-4, abs=1e-6), name
    assert out_c.counts == out_e.counts
    # the same gradients (AdamW's first update is about lr * sign(grad), so the weights after it would compare the
    # signs of gradients that are 0 up to rounding)
    for (name, p_c), p_e in zip(compiled.model.named_parameters(), eager.model.parameters()):
        if p_e.grad is not None:
            assert (p_c.grad - p_e.grad).norm() <= 1e-4 * p_e.grad.norm() + 1e-9, name
    # benchmarks/step_ops.py --compile: the profiled step runs the graphs compiled above (its torch-function mode
    # would make dynamo compile anew) and counts their generated kernels as launches
    counters.clear()
    call = compiled.model.encoder.vit.blocks[0]._compiled_call_impl
    ops = count_step(compiled, batch)
    assert counters["stats"]["unique_graphs"] == 0, dict(counters["stats"])  # nothing compiled again
    assert compiled.model.encoder.vit.blocks[0]._compiled_call_impl is call  # the block's own call is put back
    assert 0 < ops.compiled < ops.launches <= ops.top_level + ops.compiled
    assert ops.backward_launches > 0 and ops.syncs <= 5, ops.sync_sites
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
    from torch._inductor.utils import clear_inductor_caches

    torch._dynamo.reset()  # compile afresh, not from this process's earlier graphs
    clear_inductor_caches()  # nor from its kernels already built: every block runs the same code
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)  # nor from the on-disk kernel cache
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    trainer = _trainer(voc_root, tmp_path / "run", compile=True)
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
