"""The skip policy of tests/skip_policy.py, run on a throwaway suite in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SUITE = '''
import pytest

def test_runs():
    assert True

def test_listed_skip():
    pytest.skip("needs CUDA")

def test_unlisted_skip():
    pytest.skip("no Chromium/Chrome installed")
'''


def _run(tmp_path: Path, strict: str, suite: str = SUITE) -> subprocess.CompletedProcess:
    (tmp_path / "test_throwaway.py").write_text(suite)
    (tmp_path / "conftest.py").write_text("from skip_policy import pytest_runtest_logreport, pytest_sessionfinish, "
                                          "pytest_terminal_summary  # noqa: F401\n")
    env = {**os.environ, "SECO_STRICT_SKIPS": strict, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_an_unlisted_skip_fails_the_run_when_strict(tmp_path):
    run = _run(tmp_path, "1")
    assert run.returncode == 1, run.stdout
    assert "test_unlisted_skip: no Chromium/Chrome installed" in run.stdout
    assert "test_listed_skip" not in run.stdout.split("unexpected skips")[1]


def test_skips_pass_when_not_strict(tmp_path):
    run = _run(tmp_path, "0")
    assert run.returncode == 0, run.stdout
    assert "unexpected skips" not in run.stdout


def test_only_listed_skips_pass_when_strict(tmp_path):
    run = _run(tmp_path, "1", SUITE.split("def test_unlisted_skip")[0])
    assert run.returncode == 0, run.stdout


def test_a_failure_keeps_its_own_exit_code(tmp_path):
    run = _run(tmp_path, "1", SUITE + "\ndef test_fails():\n    assert False\n")
    assert run.returncode == 1 and "1 failed" in run.stdout
