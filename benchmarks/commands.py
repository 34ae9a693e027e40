"""How the benchmarks start the real ``seco`` commands: a fresh Python process each, as a user would run them,
output appended to a log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def seco_command(*args: str) -> list[str]:
    """The command line of ``seco ARGS`` with this interpreter (``python -m seco_labels.cli ARGS``)."""
    return [sys.executable, "-m", "seco_labels.cli", *args]


def run_logged(cmd: list[str], threads: int, log: Path) -> None:
    """Run ``cmd`` offline (``HF_HUB_OFFLINE=1``) with ``threads`` OpenMP threads, appending the command line and its
    output to ``log``.

    Raises:
        RuntimeError: the command failed; the message names it and the log to read.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed (exit {res.returncode}); see {log}")
