"""Multi-process training and export under torchrun: 2 CPU processes with gloo, launched as a user would.

Every run is a real ``torchrun --standalone --nproc_per_node 2 -m seco_labels.cli ...`` subprocess on the real
VOC-layout images; the single-process runs they are compared with use one thread too (torchrun's default), so
that the comparison sees the distribution, not a different thread count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import VOC_DEMO
from seco_labels.runtime.checkpoint import load_checkpoint
from seco_labels.runtime.device import StepBatchSampler
from seco_labels.runtime.distributed import LOCAL, DistributedError, NormGroups, init_distributed, norm_groups
from test_train import read_log, tiny_config

from seco_labels.config import get_preset
from seco_labels.config_io import config_to_dict
from seco_labels.data import build_reader
from seco_labels.errors import ConfigError
from seco_labels.method.losses import label_to_affinity
from seco_labels.method.objective import LOSS_TERMS
from seco_labels.training.trainer import Trainer

N_TRAIN = len(build_reader("voc", VOC_DEMO, "train"))

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not Path("/proc/self/stat").exists(),
                                reason="needs torch.distributed and /proc (Linux)")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SOURCE_DATE_EPOCH": "1700000000"}
#: The losses of a 2-process run equal the 1-process run's on the same global batch up to float summation order.
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-6
# Unit-norm keys and prototypes (entries ~0.1) after 6 steps of 2-process vs 1-process float reductions: up to
# 6e-5 apart since the loss groups and the crop-then-resize view (1e-5 before); the losses agree to LOSS_RTOL
KEY_ATOL = 1e-4


def _cli(*args: str, procs: int = 1) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "seco_labels.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
            "-m", "seco_labels.cli", *args]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _config_file(root: Path, tmp_path: Path, iters: int, ckpt_every: int) -> Path:
    cfg = tiny_config(root, iters=iters)
    cfg.data.batch_size = 4  # the global batch: 2 images per process
    cfg.data.num_workers = 0
    cfg.model.reservoir_size = 4 * 12 * 2
    cfg.train.ckpt_every = ckpt_every
    cfg.train.val_every = iters
    path = tmp_path / f"cfg_{iters}_{ckpt_every}.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path


def _train(cfg_file: Path, run: Path, procs: int, *extra: str) -> subprocess.CompletedProcess:
    return _run(_cli("train", "--config", str(cfg_file), "--out", str(run), "--device", "cpu", "--quiet", *extra,
                     procs=procs))


def _steps(run: Path) -> list[dict]:
    return [r for r in read_log(run) if "loss" in r]


def _assert_same_losses(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ["loss", "crops_tagged", "crops_rectified"] + [f"loss_{t}" for t in LOSS_TERMS]:
            if ra[key] is None:
                assert rb[key] is None, (key, ra, rb)
            else:
                assert rb[key] == pytest.approx(ra[key], rel=LOSS_RTOL, abs=LOSS_ATOL), (key, ra["step"], ra, rb)


@pytest.fixture(scope="module")
def one_process_run(voc_root, tmp_path_factory):
    """The reference: 6 steps in one process, every loss term active from step 3 on."""
    tmp = tmp_path_factory.mktemp("ddp_ref")
    cfg_file = _config_file(voc_root, tmp, iters=6, ckpt_every=3)
    _train(cfg_file, tmp / "run", procs=1)
    return cfg_file, tmp / "run"


def test_two_processes_train_like_one(one_process_run, tmp_path):
    cfg_file, ref = one_process_run
    res = _train(cfg_file, tmp_path / "run", procs=2)
    assert f"trained 6 steps into {tmp_path / 'run'} with 2 processes" in res.stdout
    assert res.stdout.count("trained 6 steps") == 1  # rank 0 alone reports

    one, two = _steps(ref), _steps(tmp_path / "run")
    assert all(r[f"loss_{t}"] is not None for t in LOSS_TERMS for r in one[3:])  # the whole objective ran
    _assert_same_losses(one, two)

    # every process kept the same memories: their digests are logged at each checkpoint
    digests = [r for r in read_log(tmp_path / "run") if "memory_digests" in r]
    assert [r["step"] for r in digests] == [2, 5]
    for r in digests:
        assert len(r["memory_digests"]) == 2 and len(set(r["memory_digests"])) == 1, r
    # ... and they equal the single process's memories on the same global batches
    a, b = load_checkpoint(ref / "last.pt")["model"], load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert torch.equal(a["reservoir.tags"], b["reservoir.tags"]) and int(a["reservoir.ptr"]) == int(b["reservoir.ptr"])
    torch.testing.assert_close(a["reservoir.keys"], b["reservoir.keys"], rtol=1e-4, atol=KEY_ATOL)
    torch.testing.assert_close(a["prototypes.vectors"], b["prototypes.vectors"], rtol=1e-4, atol=KEY_ATOL)
    torch.testing.assert_close(a["classifier.weight"], b["classifier.weight"], rtol=1e-4, atol=1e-6)
    # validation was sharded over the processes and its counts summed: same scores
    val_one = [r for r in read_log(ref) if "cam_miou" in r]
    val_two = [r for r in read_log(tmp_path / "run") if "cam_miou" in r]
    assert val_two[0]["cam_miou"] == pytest.approx(val_one[0]["cam_miou"], abs=1e-3)
    assert (tmp_path / "run" / "config.yaml").is_file()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so no killpg)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_when(cmd: list[str], ready) -> subprocess.Popen:
    """Start ``cmd``; once ``ready()`` holds, SIGKILL it and every process below it, as a crashed node would."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    return proc


def _kill_after_first_checkpoint(cmd: list[str], run: Path) -> int:
    """Kill the job of ``cmd`` once ``run/last.pt`` exists; the step that checkpoint holds."""
    ckpt = run / "last.pt"
    proc = _kill_when(cmd, ckpt.exists)
    assert ckpt.exists(), proc.stderr.read().decode()[-3000:]
    return int(load_checkpoint(ckpt)["step"])


@pytest.mark.parametrize("procs_before, procs_after", [(2, 2), (2, 1), (1, 2)])
def test_killed_run_resumes_with_any_number_of_processes(one_process_run, tmp_path, procs_before, procs_after):
    cfg_file, ref = one_process_run
    run = tmp_path / "run"
    cfg_every_2 = tmp_path / "cfg.yaml"  # the reference's config with a checkpoint every 2 steps
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["train"]["ckpt_every"] = 2
    cfg_every_2.write_text(yaml.safe_dump(cfg))
    cmd = _cli("train", "--config", str(cfg_every_2), "--out", str(run), "--device", "cpu", "--quiet",
               procs=procs_before)
    done = _kill_after_first_checkpoint(cmd, run)
    assert 2 <= done < 6, "the run finished before it was killed; the test needs a slower run"

    res = _train(cfg_every_2, run, procs_after, "--resume", "auto")
    assert f"resuming {run} at step {done}" in res.stderr
    _assert_same_losses(_steps(ref), _steps(run))  # each step logged once, as in an uninterrupted run
    a, b = load_checkpoint(ref / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    torch.testing.assert_close(a["reservoir.keys"], b["reservoir.keys"], rtol=1e-4, atol=KEY_ATOL)


def test_two_process_export_is_byte_identical(one_process_run, voc_root, tmp_path):
    _, ref = one_process_run
    args = ["--checkpoint", str(ref / "last.pt"), "--split", "train", "--data-root", str(voc_root), "--device", "cpu",
            "--num-workers", "0", "--quiet"]
    _run(_cli("export-masks", *args, "--out", str(tmp_path / "one"), procs=1))
    res = _run(_cli("export-masks", *args, "--out", str(tmp_path / "two"), procs=2))
    assert res.stdout.count(f"exported {N_TRAIN} image(s) of train") == 1

    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "cams_train.h5").read_bytes() == (two / "cams_train.h5").read_bytes()
    pngs = sorted(p.name for p in (one / "masks_train").glob("*.png"))
    assert len(pngs) == N_TRAIN and pngs == sorted(p.name for p in (two / "masks_train").glob("*.png"))
    for name in pngs:
        assert (one / "masks_train" / name).read_bytes() == (two / "masks_train" / name).read_bytes(), name
    assert (one / "manifest_train.json").read_text() == (two / "manifest_train.json").read_text()
    summary = json.loads((two / "export_train.json").read_text())
    assert summary["processes"] == 2 and summary["exported"] == N_TRAIN and summary["bad"] == []
    assert not (two / ".parts_train").exists() and not list((two / "masks_train").glob(".*"))

    # a killed 2-process export, resumed by 2 processes, ends with the same files
    killed = tmp_path / "killed"
    _kill_when(_cli("export-masks", *args, "--out", str(killed), procs=2),
               lambda: len(list((killed / "masks_train").glob("*.png"))) >= 8)
    finished = len(list((killed / "masks_train").glob("*.png")))
    assert 8 <= finished < N_TRAIN and not (killed / "cams_train.h5").exists()
    _run(_cli("export-masks", *args, "--out", str(killed), procs=2))
    assert json.loads((killed / "export_train.json").read_text())["skipped_done"] >= finished  # a PNG is written after its part
    assert (killed / "cams_train.h5").read_bytes() == (one / "cams_train.h5").read_bytes()
    for name in pngs:
        assert (killed / "masks_train" / name).read_bytes() == (one / "masks_train" / name).read_bytes(), name


# -- loss normalisation groups over 4 processes ------------------------------------------------------------------
#: Each process computes the group-normalised PTC, seg, LIL and LIG of its 2 images of a fixed 8-image batch, for
#: every group size, and saves the values and the gradients of their sum w.r.t. its inputs.
GROUPS_SCRIPT = """
import sys
import torch
from seco_labels.runtime.distributed import all_gather_cat, init_distributed, norm_groups, shutdown_distributed
from test_distributed import group_inputs, group_terms, rank_share

ctx = init_distributed(torch.device("cpu"))
b = 8 // ctx.world_size
mine = rank_share(group_inputs(), ctx.rank, b)
mine["keys"] = tuple(all_gather_cat(t) for t in mine["keys"])  # every process's step keys, as the reservoir gives
results = {g: group_terms(mine, norm_groups(g, b)) for g in (0, 1, 2, 4, 8)}
torch.save(results, f"{sys.argv[1]}/rank{ctx.rank}.pt")
shutdown_distributed()
"""


def group_inputs(views: int = 12, dim: int = 8, classes: int = 4) -> dict:
    """A fixed batch of 8 images: tokens and affinities (PTC), logits and labels (seg), projected views, their
    tags and keys (LIL, LIG), a reservoir and prototypes; image-major along dim 0."""
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (8, 4, 4), generator=g)
    label[label == 2] = 255
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    return {
        "tokens": torch.randn(8, dim, 4, 4, generator=g),
        "affinity": label_to_affinity(label),
        "logits": torch.randn(8, classes + 1, 4, 4, generator=g),
        "label": torch.randint(0, classes + 1, (8, 4, 4), generator=g),
        "q": unit(8 * views, dim),
        "tags": torch.randint(-1, classes + 1, (8 * views,), generator=g),
        "keys": (unit(8 * views, dim), torch.randint(-1, classes + 1, (8 * views,), generator=g)),
        "memory": (unit(8 * views * 2, dim), torch.randint(-1, classes + 1, (8 * views * 2,), generator=g)),
        "prototypes": unit(classes, dim),
    }


def rank_share(inputs: dict, rank: int, b: int) -> dict:
    """The inputs of the ``rank``-th process taking ``b`` images: its slice of every per-image tensor."""
    def share(t: torch.Tensor) -> torch.Tensor:
        per_image = t.shape[0] // 8
        return t[rank * b * per_image : (rank + 1) * b * per_image]

    shared = ("memory", "prototypes")  # the same in every process
    return {k: v if k in shared else tuple(map(share, v)) if isinstance(v, tuple) else share(v)
            for k, v in inputs.items()}


def group_terms(inputs: dict, groups) -> dict:
    """The group-normalised terms of ``inputs`` as the training step computes them, the gradient of their sum
    w.r.t. tokens, logits and q, and LIL's revised tags."""
    from seco_labels.config import LossConfig
    from seco_labels.method.losses import ptc_loss, seg_loss
    from seco_labels.method.objective import _contrast_terms, _group_mean

    x = {k: inputs[k].clone().requires_grad_() for k in ("tokens", "logits", "q")}
    ptc = _group_mean(groups, ptc_loss, x["tokens"], inputs["affinity"])
    seg = _group_mean(groups, seg_loss, x["logits"], inputs["label"])
    lil, lig, revised, *_ = _contrast_terms(x["q"], inputs["tags"], inputs["keys"], inputs["memory"],
                                            inputs["prototypes"], LossConfig(), groups, views=12)
    (ptc + seg + lil + lig).backward()
    return {"terms": torch.stack([ptc, seg, lil, lig]).detach(), "revised": revised,
            **{f"grad_{k}": v.grad for k, v in x.items()}}


def test_loss_groups_give_every_process_count_the_losses_and_gradients_of_one_process(tmp_path):
    script = tmp_path / "groups.py"
    script.write_text(GROUPS_SCRIPT)
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), ENV.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", str(script),
           str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(4)]
    inputs = group_inputs()
    for size in (0, 1, 2, 4, 8):  # 4 processes x 2 images: 2 groups each, 1 each, 1 per 2 processes, 1 in all
        one = group_terms(inputs, norm_groups(size, 8))
        # DDP averages over processes: the mean of their terms and gradients is the one-process step's
        torch.testing.assert_close(torch.stack([r[size]["terms"] for r in ranks]).mean(0), one["terms"],
                                   rtol=1e-5, atol=1e-7, msg=f"norm_group_size={size}")
        for key in ("grad_tokens", "grad_logits", "grad_q"):
            torch.testing.assert_close(torch.cat([r[size][key] for r in ranks]) / 4, one[key], rtol=1e-5,
                                       atol=1e-8, msg=f"{key}, norm_group_size={size}")
        assert torch.equal(torch.cat([r[size]["revised"] for r in ranks]), one["revised"])
    # and the group size is what changes the losses: 8 groups of 1 image, 2 of 4 and 1 of 8 differ
    values = {size: group_terms(inputs, norm_groups(size, 8))["terms"] for size in (1, 4, 8)}
    assert not torch.allclose(values[1], values[4]) and not torch.allclose(values[4], values[8])


def test_two_processes_of_one_loss_group_each_train_like_one_process_of_two_groups(voc_root, tmp_path):
    # the published coco set-up in small: each process normalises its own images, as each published GPU did
    cfg_file = _config_file(voc_root, tmp_path, iters=4, ckpt_every=4)
    one = _train(cfg_file, tmp_path / "one", 1, "--set", "loss.norm_group_size=2")
    two = _train(cfg_file, tmp_path / "two", 2, "--set", "loss.norm_group_size=2")
    assert one.returncode == two.returncode == 0
    per_group, per_process = _steps(tmp_path / "one"), _steps(tmp_path / "two")
    assert all(r[f"loss_{t}"] is not None for t in LOSS_TERMS for r in per_group[3:])
    _assert_same_losses(per_group, per_process)
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["model"]["proj_head.mlp.0.weight"] for run in ("one", "two"))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_loss_groups_must_fall_on_process_boundaries():
    assert norm_groups(4, 8) == NormGroups(size=4, chunks=2, first=0, scope=LOCAL)
    assert norm_groups(0, 8) == NormGroups(size=8, chunks=1, first=0, scope=LOCAL)
    with pytest.raises(ConfigError, match="loss.norm_group_size=4 does not divide the 6 images"):
        norm_groups(4, 6)
    with pytest.raises(ConfigError, match="loss.norm_group_size=4 is not a multiple of the 3 images"):
        norm_groups(4, 3)
    cfg = get_preset("coco")  # groups of 4 images
    cfg.data.batch_size, cfg.model.reservoir_size = 10, 10 * 12 * 10
    with pytest.raises(ConfigError, match=r"loss.norm_group_size=4 must be 0 \(the whole batch\) or divide "
                                          r"data.batch_size=10"):
        cfg.validate()


# -- in-process units: no subprocess needed ---------------------------------------------------------------------
def test_rank_slices_of_the_sampler_make_up_the_global_batch():
    single = iter(StepBatchSampler(10, 4, seed=3))
    ranks = [iter(StepBatchSampler(10, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(5):  # across an epoch boundary (2 steps per epoch)
        assert next(ranks[0]) + next(ranks[1]) == next(single)
    resumed = iter(StepBatchSampler(10, 4, seed=3, start_step=3, rank=1, world_size=2))
    fresh = iter(StepBatchSampler(10, 4, seed=3, rank=1, world_size=2))
    for _ in range(3):
        next(fresh)
    assert next(resumed) == next(fresh)


def test_uneven_global_batch_is_refused():
    with pytest.raises(ConfigError, match=r"data.batch_size=3 is the global batch .* 2 processes; pick a multiple of 2"):
        StepBatchSampler(10, 3, seed=0, rank=0, world_size=2)


def test_half_a_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(DistributedError, match=r"WORLD_SIZE=2 .* RANK=None; start the command with torchrun"):
        init_distributed(torch.device("cpu"))


def test_single_process_context_is_plain(voc_root, tmp_path):
    trainer = Trainer(tiny_config(voc_root, iters=1), tmp_path / "run", quiet=True)
    assert (trainer.dist.rank, trainer.dist.world_size, trainer.dist.is_primary) == (0, 1, True)
    assert trainer.objective.__class__.__name__ == "SecoObjective"  # no DDP wrapper in one process
