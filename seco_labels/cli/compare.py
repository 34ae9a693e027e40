"""``seco compare``: per-class IoU of scored runs side by side (Markdown + CSV) and as a bar chart (PNG)."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from ..io import check_writable_dir
from .options import defaults_file_option, library_default, option, out_option, quiet_option


@cli.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@out_option("--out", "out_dir", default=None,
            help="Folder for compare.md, compare.csv and compare.png (default: the folder that holds the runs' "
                 "folders, e.g. seg for seg/a and seg/b).")
@click.option("--name", "names", multiple=True,
              help="Column name of each run, in order (repeatable; default arch/encoder (gt|pseudo) or the folder).")
@option("--stem", default=library_default("segmenters.compare", "compare_runs", "stem"), show_default=True,
        help="File name stem of the three outputs.")
@option("--title", default=library_default("segmenters.compare", "compare_runs", "title"), show_default=True,
        help="Chart title.")
@quiet_option("Do not print the table.")
@defaults_file_option
def compare_cmd(runs, out_dir, names, stem, title, quiet):
    """Compare the mIoU and per-class IoU of RUN_DIR... (folders holding the metrics.json of seco fit-segmenter
    or the metrics_<split>.json of seco evaluate, or those files): pseudo masks vs the GT upper bound, one
    architecture vs another. Writes STEM.md, .csv, .png into --out, by default the folder holding the runs."""
    from ..segmenters.compare import compare_runs, default_out_dir, format_markdown, load_run

    if names and len(names) != len(runs):
        raise click.UsageError(f"{len(names)} --name value(s) for {len(runs)} run(s); give one per run or none")
    scores = [load_run(Path(r), names[i] if names else None) for i, r in enumerate(runs)]
    out = out_dir or check_writable_dir(default_out_dir(scores))
    paths = compare_runs(scores, out, stem=stem, title=title)
    if not quiet:
        click.echo(format_markdown(scores), nl=False)
    click.echo(f"wrote {paths['md']}, {paths['csv']} and {paths['png']}", err=True)
