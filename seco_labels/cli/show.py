"""``seco show``: a PNG strip per image (image, CAM per tagged class, pseudo mask, GT, error map)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..artifacts import open_split, show_dir
from ..io import check_writable_dir
from . import cli
from .options import data_root_option, layout_option, library_default, option, out_option, quiet_option


@cli.command("show")
@click.option("--pred", type=click.Path(), required=True,
              help="Artifact folder of seco export-masks (CAM panels need its cams_<split>.h5), a cams_<split>.h5 "
                   "file, or a folder of <id>.png masks.")
@click.option("--split", required=True, help="The exported split.")
@click.option("--ids", default=None, help="Comma-separated image ids (default: the first --n of the split).")
@click.option("-n", "--n", "count", type=click.IntRange(min=1), default=16, show_default=True,
              help="How many images when --ids is not given.")
@out_option("--out", "out_dir", default=None, help="Folder of the PNGs (default: ART/show_<split>).")
@data_root_option("Images (and GT) root (default: the exported dataset's).")
@layout_option("Dataset layout (default: the exported dataset's, else voc).")
@option("--height", type=click.IntRange(min=32), default=library_default("evaluation.show", "write_strips", "height"),
        show_default=True, help="Panel height, pixels.")
@click.option("--no-gt", is_flag=True, help="Leave out the ground-truth and error panels.")
@quiet_option()
def show_cmd(pred, split, ids, count, out_dir, data_root, layout, height, no_gt, quiet):
    """Draw one PNG per image: the image, the CAM of each tagged class, the pseudo mask (beige: uncertain), the GT
    and an error map (green right, red wrong, yellow uncertain, grey ignored in the GT), with a colour legend
    under the panels, to judge pseudo labels at a glance."""
    from ..evaluation.show import write_strips

    source = open_split(pred, split)
    out = Path(out_dir) if out_dir else check_writable_dir(show_dir(source.folder, split))
    reader = source.open_images(root=data_root, layout=layout, root_option="--data-root DIR (the images' root)")
    have = source.ids()
    if ids:
        wanted = [i.strip() for i in ids.split(",") if i.strip()]
        unknown = [i for i in wanted if i not in have]
        if unknown:
            raise click.BadParameter(f"{', '.join(unknown[:5])} not in the predictions of split {split!r} ({pred})",
                                     param_hint="--ids")
    else:
        wanted = [i for i in reader.ids if i in have][:count]
        if not wanted:
            raise click.ClickException(f"no image of split {split!r} of {reader.root} has a prediction in {pred}")
    write_strips(wanted, reader, source.masks, out, cams=source.cams, with_gt=not no_gt, height=height, split=split,
                 progress=not quiet and sys.stderr.isatty())
    click.echo(f"wrote {len(wanted)} image(s) to {out}")
