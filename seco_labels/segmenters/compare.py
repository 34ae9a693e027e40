"""``seco compare``: per-class IoU of several scored runs side by side (Markdown + CSV) and as a bar chart (PNG).

A run is any folder holding the ``metrics.json`` of ``seco fit-segmenter`` or the ``metrics_<split>.json`` of
``seco evaluate`` (its ``per_class`` rows), or that file itself, so a segmenter trained on pseudo masks, one trained on GT (the upper bound) and the pseudo masks themselves
can sit in one table. The chart is drawn with PIL alone (no matplotlib needed).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, DataError
from ..evaluation.plots import draw_grouped_bars
from ..io import atomic_path, atomic_write_text

__all__ = ["RunScores", "load_run", "default_out_dir", "compare_runs", "format_markdown", "format_csv",
           "draw_bar_chart"]


@dataclass
class RunScores:
    """The scores of one run: mIoU and per-class IoU as fractions (None where a class has no score)."""

    name: str
    path: Path
    miou: float | None
    class_names: list[str]
    iou: list[float | None]
    info: dict[str, Any] = field(default_factory=dict)  #: the rest of metrics.json (split, num_images, arch, ...)

    def describe(self) -> str:
        i = self.info
        if "arch" in i:
            what = f"{i['arch']}/{i['encoder']}, labels {i['labels']}, "
        else:
            what = f"predictions {i.get('pred')}, "
        return f"{self.path} ({what}scored on {i.get('num_images')} images of {i.get('split')!r})"


def _default_name(info: dict[str, Any], path: Path) -> str:
    if "arch" in info:
        return f"{info['arch']}/{info['encoder']} ({'gt' if info.get('labels') == 'gt' else 'pseudo'})"
    return path.name


def _metrics_file(path: Path) -> Path:
    """``path`` itself when it is a file, else the one ``metrics.json`` or ``metrics_<split>.json`` in it."""
    if path.is_file():
        return path
    found = sorted(p for p in (path / "metrics.json", *path.glob("metrics_*.json")) if p.is_file())
    if len(found) > 1:  # seco evaluate wrote several splits (or a segmenter run was also evaluated) here
        raise DataError(f"{path} holds {len(found)} reports ({', '.join(p.name for p in found)}); pass the file to "
                        f"compare, e.g. {found[-1]}")
    if not found:
        raise DataError(f"{path} has no metrics.json or metrics_<split>.json; score it first (seco fit-segmenter "
                        "with --val-split, or seco evaluate --out)")
    return found[0]


def load_run(path: str | Path, name: str | None = None) -> RunScores:
    """Read the scores of a run: ``PATH`` when it is a metrics file, else the one ``PATH/metrics.json`` (of
    ``seco fit-segmenter``) or ``PATH/metrics_<split>.json`` (of ``seco evaluate``). The run's ``path`` is the
    folder holding the file.

    Raises:
        DataError: no such file, several (names them: pass one), or one without per-class rows (names the file
            and what to run).
    """
    file = _metrics_file(Path(path))
    folder = file.parent
    try:
        doc = json.loads(file.read_text())
        rows = doc["per_class"]
        names = [str(r["name"]) for r in rows]
        iou = [None if r["iou"] is None else float(r["iou"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{file} is not a metrics.json of seco evaluate/fit-segmenter ({e!r}); score the run "
                        "again") from None
    info = {k: v for k, v in doc.items() if k not in ("per_class", "conventions")}
    miou = doc.get("miou")
    return RunScores(name or _default_name(info, folder), folder, None if miou is None else float(miou), names, iou,
                     info)


def _check_same_classes(runs: Sequence[RunScores]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.class_names != first.class_names:
            raise DataError(f"{run.path} scores {len(run.class_names)} classes ({', '.join(run.class_names[:4])}, "
                            f"...) but {first.path} scores {len(first.class_names)} "
                            f"({', '.join(first.class_names[:4])}, ...); compare runs of the same dataset")


def _unique_names(runs: Sequence[RunScores]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
    for run in runs:
        if seen[run.name] > 1:
            run.name = f"{run.name} [{run.path.name}]"


def _pct(x: float | None, digits: int, *, signed: bool = False) -> str:
    """``x`` in percent with ``digits`` decimals ("" for None). A value that rounds to zero prints as an unsigned
    zero (``0.0``, never ``-0.0`` or ``+0.0``); ``signed`` puts ``+`` before the other positive values."""
    if x is None:
        return ""
    v = round(100 * x, digits) + 0.0  # + 0.0 turns the -0.0 of a tiny negative difference into 0.0
    return f"{v:+.{digits}f}" if signed and v != 0 else f"{v:.{digits}f}"


def _rows(runs: Sequence[RunScores]) -> list[tuple[str, str, list[float | None]]]:
    """(index, name, scores per run): the mIoU row first, then every class."""
    rows = [("", "mIoU", [r.miou for r in runs])]
    for c, name in enumerate(runs[0].class_names):
        rows.append((str(c), name, [r.iou[c] for r in runs]))
    return rows


def _delta(scores: list[float | None]) -> float | None:
    return None if scores[0] is None or scores[1] is None else scores[1] - scores[0]


def format_markdown(runs: Sequence[RunScores]) -> str:
    """The table in percent (1 decimal; ``-`` where a class has no score), plus ``B - A`` for two runs."""
    two = len(runs) == 2
    head = ["class", *(r.name.replace("|", "\\|") for r in runs)] + (["B − A"] if two else [])
    lines = ["| " + " | ".join(head) + " |", "|:--" + "|--:" * (len(head) - 1) + "|"]
    for index, name, scores in _rows(runs):
        cells = [f"**{name}**" if not index else name] + [_pct(s, 1) or "-" for s in scores]
        if two:
            d = _delta(scores)
            cells.append(_pct(d, 1, signed=True) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("IoU in percent; mIoU over the classes present in the GT or the prediction (`seco evaluate`).")
    for label, run in zip("AB" if two else [""] * len(runs), runs):
        lines.append(f"- {label + ' = ' if label else ''}**{run.name}**: {run.describe()}")
    splits = {(r.info.get("split"), r.info.get("num_images")) for r in runs}
    if len(splits) > 1:
        lines.append("")
        lines.append("Note: the runs were scored on different images ("
                     + "; ".join(f"{r.name}: {r.info.get('num_images')} of {r.info.get('split')!r}" for r in runs)
                     + "), so their numbers are not directly comparable.")
    return "\n".join(lines) + "\n"


def format_csv(runs: Sequence[RunScores]) -> str:
    """Columns ``index, class, <run name>...`` (``, delta`` for two runs); IoU in percent with 2 decimals, empty
    where a class has no score; the first row is the mIoU (empty index)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    two = len(runs) == 2
    writer.writerow(["index", "class", *(r.name for r in runs)] + (["delta"] if two else []))
    for index, name, scores in _rows(runs):
        row = [index, name, *(_pct(s, 2) for s in scores)]
        if two:
            row.append(_pct(_delta(scores), 2))
        writer.writerow(row)
    return buf.getvalue()


def draw_bar_chart(runs: Sequence[RunScores], path: str | Path, *, title: str = "IoU per class (%)",
                   plot_width: int = 600) -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """Horizontal grouped bars, one group per class (mIoU first) and one bar per run, 0-100 % on the x axis.

    Classes without a score in every run are left out. Writes the PNG atomically and returns the bars as
    ``(run index, group name, (x0, y0, x1, y1))``; a bar's width is ``IoU x plot_width`` pixels.
    """
    groups = [(n, scores) for index, n, scores in _rows(runs) if any(s is not None for s in scores)]
    img, bars = draw_grouped_bars(groups, [r.name for r in runs], title=title, plot_width=plot_width)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return bars


def default_out_dir(runs: Sequence[RunScores]) -> Path:
    """Where ``seco compare`` writes without ``--out``: the deepest folder that holds every run's folder (``seg``
    for ``seg/a`` and ``seg/b``; the parent of a single run), relative to the current folder when inside it.

    Raises:
        ConfigError: the runs share no folder but the filesystem root (pass ``--out``).
    """
    if not runs:
        raise DataError("nothing to compare: give one or more run folders")
    common = Path(os.path.commonpath([os.path.abspath(r.path.parent) for r in runs]))
    if common == Path(common.anchor):
        raise ConfigError(f"the runs ({', '.join(str(r.path) for r in runs)}) share no folder but {common}; "
                          "pass --out DIR")
    cwd = Path.cwd()
    return common.relative_to(cwd) if common.is_relative_to(cwd) else common


def compare_runs(runs: Sequence[RunScores], out_dir: str | Path, *, stem: str = "compare",
                 title: str = "IoU per class (%)") -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.png`` into ``out_dir``; returns their paths.

    Raises:
        DataError: fewer than one run, or runs over different class lists.
    """
    if not runs:
        raise DataError("nothing to compare: give one or more run folders")
    _check_same_classes(runs)
    _unique_names(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    atomic_write_text(paths["md"], format_markdown(runs))
    atomic_write_text(paths["csv"], format_csv(runs))
    draw_bar_chart(runs, paths["png"], title=title)
    return paths
