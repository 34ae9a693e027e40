"""``seco report``: one static HTML page of an exported split (:func:`seco_labels.evaluation.report.write_report`)."""

from __future__ import annotations

import sys

import click

from . import cli
from .options import data_root_option, layout_option, library_default, option, out_option, quiet_option


@cli.command("report")
@click.argument("art", type=click.Path(exists=True))
@click.option("--split", required=True, help="The exported split.")
@out_option("--out", "out_dir", default=None, help="Folder of the page and its thumbnails (default: ART/report_<split>).")
@data_root_option("Images (and GT) root (default: the exported dataset's).")
@layout_option("Dataset layout (default: the exported dataset's).")
@option("--thumb-height", type=click.IntRange(min=32),
        default=library_default("evaluation.report", "write_report", "thumb_height"), show_default=True,
        help="Thumbnail height, pixels.")
@quiet_option()
def report_cmd(art, split, out_dir, data_root, layout, thumb_height, quiet):
    """Write one self-contained HTML page (no server, nothing fetched) to judge the pseudo masks of a split: the
    export's settings and provenance, mIoU, FP/TP and the per-class table where the dataset has GT masks, and every
    image with its mask over it, sorted worst first (IoU, else uncertain pixels), filterable by class; each
    thumbnail links to the seco show strip when there is one. Open ART/report_<split>/index.html in a browser."""
    from ..evaluation.report import write_report

    index = write_report(art, split, out_dir=out_dir, data_root=data_root, layout=layout, thumb_height=thumb_height,
                         progress=not quiet and sys.stderr.isatty())
    click.echo(f"wrote {index}")
