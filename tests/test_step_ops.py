"""benchmarks/step_ops.py, the CPU twin of a GPU step's launches and syncs (issue 28): it must see every kind of
sync, leave out what a GPU run does on host tensors, and hold the step to its budget of sync-forcing operations."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def step_ops():
    from benchmarks import step_ops  # imports the trainer: only when a test of this file runs

    return step_ops


def test_every_kind_of_sync_is_counted_once(step_ops):
    x = torch.arange(12.0)

    def syncs():
        x.sum().item()  # _local_scalar_dense
        float(x[0])  # the same, through __float__
        x[x > 5].sum()  # boolean index: nonzero
        torch.unique(x)  # _unique2
        x.tolist()  # no aten event on a CPU: seen as a host read
        x.cpu()  # a device-to-host copy on a GPU

    ops = step_ops.count_ops(syncs)
    assert ops.syncs == 6, ops.sync_sites
    kinds = " ".join(ops.sync_sites)
    for kind in ("_local_scalar_dense", "nonzero", "_unique2", "tolist", "cpu"):
        assert kind in kinds, ops.sync_sites


def test_work_on_host_tensors_is_not_a_sync(step_ops):
    """What a GPU run does on the CPU (a host copy, CPU generators' draws, the batch's host keys) syncs nothing."""
    x = torch.arange(12.0)
    seeds = torch.tensor([3, 4])

    def host_work():
        mask = (x > 5).cpu()  # the one real sync: the copy to the host
        mask.nonzero()  # on the host copy: no sync
        torch.randperm(7, generator=torch.Generator().manual_seed(0))[0].item()  # a factory without device
        seeds.tolist()  # a host key
        picked = torch.arange(3).to(x.device)  # back to the device: a copy, no sync
        picked.sum()

    ops = step_ops.count_ops(host_work, host=[seeds])
    assert ops.syncs == 1, ops.sync_sites
    assert list(ops.sync_sites) == ["outside seco_labels (cpu)"]


def test_views_run_no_kernel_and_copies_do(step_ops):
    """``launches`` counts the top-level operations that run a kernel: a view runs none, a reshape that has to copy
    and a dtype conversion run one through the operation they call."""
    x = torch.arange(12.0).reshape(3, 4)

    def work():
        x.view(4, 3), x.t(), x[0], x.unsqueeze(0)  # views: 4 operations, no kernel
        x.t().reshape(12)  # a view, then a reshape that copies
        x + 1
        x.to(torch.float64)

    ops = step_ops.count_ops(work)
    assert (ops.top_level, ops.launches, ops.compiled) == (8, 3, 0), ops.top_ops


def test_demo_step_holds_the_sync_budget(step_ops, tmp_path):
    """One demo-preset step with every term on: the five host reads it is allowed, each at its known place, and
    the per-parameter work (dropout at p=0, the teacher's detach, PAR's per-neighbour loop) gone."""
    trainer, batch = step_ops.step_trainer("demo", tmp_path, depth=3)  # the preset's step, fewer blocks
    ops = step_ops.count_step(trainer, batch, top=50, warmup=1)
    assert trainer.par.gather is None  # the form is restored: a CPU run keeps its faster one
    assert ops.syncs <= 5, ops.sync_sites
    places = {site.split("(")[0] for site in ops.sync_sites}
    assert places == {"seco_labels/method/decompose.py", "seco_labels/method/refine.py",
                      "seco_labels/method/lattice.py", "seco_labels/method/objective.py"}, ops.sync_sites
    assert "aten::dropout" not in ops.top_ops
    assert "aten::addcmul_" not in ops.top_ops  # PAR gathers its neighbours instead of one multiply-add each
    assert ops.optimizer < 20  # the fused AdamW: a few operations for every parameter together
    assert 0 < ops.top_level < 2000 and ops.backward > 0  # 2,638 with the preset's 12 blocks
    assert 0 < ops.launches < ops.top_level and ops.compiled == 0  # eager: views launch nothing
    assert ops.backward_launches <= ops.backward
    bare = step_ops.count_step(trainer, batch, stack=False)  # gpu_check's cheaper profile: the same counts
    assert (bare.top_level, bare.launches, bare.syncs, bare.backward, bare.optimizer) == \
        (ops.top_level, ops.launches, ops.syncs, ops.backward, ops.optimizer)
    table = step_ops.format_ops(ops, "demo")
    assert "| sync-forcing operations (target <= 5) |" in table
