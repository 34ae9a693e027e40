"""What the training commands (``seco train``, ``seco fit-segmenter``, ``seco demo``) print about a run: its
resume, its summary, a run that had already finished, and the exit after SIGINT/SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["exit_interrupted", "format_summary", "report_finished", "report_resume"]

def format_summary(result: dict[str, Any]) -> str:
    """``key value`` pairs of a trainer's result: counts (the integers) as they are, the lr in scientific notation,
    other numbers to 4 decimals; the step index, the step time and None values are left out."""
    parts = []
    for k, v in result.items():
        if k in ("step", "time") or v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, int):
            parts.append(f"{k} {v}")
        elif k == "lr":
            parts.append(f"lr {v:.3e}")
        else:
            parts.append(f"{k} {v:.4f}")
    return ", ".join(parts)


def report_resume(trainer: Any, run_dir: str | Path, spec: str | None) -> None:
    """Say on stderr what :func:`seco_labels.training.resume.resume_run` did: the step it continues at and the
    recorded config changes, or that ``--resume auto`` found no checkpoint and the run starts at step 0."""
    if trainer.resumed_from is not None:
        click.echo(f"resuming {run_dir} at step {trainer.step}", err=True)
        if trainer.config_changes:
            listed = ", ".join(str(c) for c in trainer.config_changes)
            click.echo(f"config changed since the checkpoint: {listed} (recorded in "
                       f"{Path(run_dir) / 'config_changes.jsonl'})", err=True)
    elif spec == "auto":
        click.echo(f"no checkpoint in {run_dir}: starting at step 0", err=True)


def report_finished(trainer: Any, run_dir: str | Path, result: dict[str, Any]) -> None:
    """For a run that had already finished: say so, with the last logged losses and validation."""
    click.echo(f"{run_dir} already finished at step {trainer.step}/{trainer.cfg.train.iters}; nothing to do")
    summary = format_summary(result)
    if summary:
        click.echo(f"last logged: {summary}")


def exit_interrupted(e: Any, hint: str, *, echo: bool = True) -> None:
    """Print the :class:`~seco_labels.training.signals.TrainingInterrupted` message with ``hint`` (how to continue) and exit
    with its code (130 after SIGINT, 143 after SIGTERM)."""
    if echo:
        click.echo(f"{e}; {hint}", err=True)
    raise click.exceptions.Exit(e.exit_code)
