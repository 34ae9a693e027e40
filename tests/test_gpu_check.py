"""benchmarks/gpu_check.py, the script run first on any GPU: its CPU smoke version runs end to end here, so that
it cannot rot before a GPU arrives."""

from __future__ import annotations

import re

import pytest


@pytest.fixture(scope="module")
def gpu_check():
    from benchmarks import gpu_check  # imports torch and the trainer: only when a test of this file runs

    return gpu_check


def _row(table: str, label: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith(label):
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{table}")


def test_cpu_tiny_check_prints_every_row(gpu_check, capsys):
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--steps", "1", "--images", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("# gpu_check: CPU")
    fp32, bf16 = (float(v) for v in _row(out, "training step, s/iter"))
    assert fp32 > 0 and bf16 > 0
    assert all(float(v) > 0 for v in _row(out, "peak memory, GiB"))
    assert all(float(v) > 0 for v in _row(out, "model TFLOP per step"))  # the FLOP counter saw the matmuls
    assert _row(out, "MFU")[0].startswith("—")  # no peak known for a CPU
    assert re.fullmatch(r"[\d.]+ h", _row(out, "300 iterations, projected")[0])
    for col in range(2):  # the CPU twin's counts (benchmarks/step_ops.py), in each precision
        assert 0 < int(_row(out, "top-level operations per step")[col].replace(",", "")) < 3000
        assert int(_row(out, "sync-forcing operations per step")[col]) <= 5
        assert 0 < int(_row(out, "kernels per step, the CPU twin's estimate")[col].replace(",", "")) < 6000
    assert _row(out, "GPU kernels per step")[:2] == ["—", "—"]
    for scales in ("1 scale", "7 scales"):
        assert all(float(v) > 0 for v in _row(out, f"export, {scales} + flip, images/s"))
        ratios = _row(out, "export / per-image fp32 loop")  # the 1-scale row comes first
        assert all(re.fullmatch(r"\d+\.\d\dx", v) and float(v[:-1]) > 0 for v in ratios), ratios
    assert len([ln for ln in out.splitlines() if "export / per-image fp32 loop" in ln]) == 2
    assert _row(out, "torchrun, 1 process, 3 steps")[0].startswith("ok (gloo")
    assert re.match(r"loss_\w+ [\d.]+%; (crops_tagged|local_crops_\w+|\w+_rectified|lil_pairs|lig_positives) "
                    r"[\d.]+%", _row(out, "bf16 vs fp32")[1])


def test_peaks_come_from_the_option_or_the_table(gpu_check):
    import torch

    assert gpu_check.peak_tflops(torch.device("cpu"), None) is None
    assert gpu_check.peak_tflops(torch.device("cpu"), "100,10") == (100.0, 10.0)
    assert gpu_check.PEAK_TFLOPS["H200"] == (989.0, 67.0)


def test_without_cuda_the_gpu_default_says_what_to_run(gpu_check, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main([]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err
