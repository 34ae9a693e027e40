"""CI's skip policy: with ``SECO_STRICT_SKIPS=1`` (set by ``.ci/run``) a test that skips for a reason not listed in
:data:`EXPECTED_SKIPS` fails the run, so a missing browser or extra cannot hide a test from CI.

The hooks are imported into ``tests/conftest.py``; ``tests/test_skip_policy.py`` runs them on a throwaway suite.
"""

from __future__ import annotations

import os

import pytest

#: the skips CI accepts, by a phrase of their reason: each is a case this machine cannot or should not run
EXPECTED_SKIPS = (
    "extended fuzzing",  # the long reader fuzzing runs with pytest -m slow (tests/conftest.py)
    "running as root",  # chmod does not stop root from writing (tests/test_out_dir.py)
    "needs CUDA",  # GPU-only checks: benchmarks/gpu_check.py runs them where a GPU is lent
    "a GPU is present",  # the CPU-only message of gpu_check, on a machine with a GPU
)

_unexpected: list[tuple[str, str]] = []


def _strict() -> bool:
    return os.environ.get("SECO_STRICT_SKIPS", "") not in ("", "0")


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if not any(phrase in reason for phrase in EXPECTED_SKIPS):
            _unexpected.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _strict() and _unexpected and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _strict() and _unexpected:
        terminalreporter.section("unexpected skips (SECO_STRICT_SKIPS=1)", red=True)
        for nodeid, reason in _unexpected:
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line("install what these tests need (.ci/run does), or list the reason in "
                              "tests/skip_policy.py EXPECTED_SKIPS if skipping is intended")
