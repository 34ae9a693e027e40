"""export-masks --format cvat: the archive read back as CVAT documents its "Segmentation mask 1.1" import (a zip of
labelmap.txt, ImageSets/Segmentation/<subset>.txt and SegmentationClass/<id>.png; every mask colour declared)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from seco_labels.artifacts import cvat_path, open_split, write_cvat_zip
from seco_labels.artifacts.cvat import annotation_labels
from seco_labels.cli import cli
from seco_labels.data import VOC_CLASSES, voc_palette
from seco_labels.errors import ConfigError

# a wide uncertain band (foreground under 0.05 but not under 0.95 is ignored): the masks have uncertain pixels
EXPORT = ["--split", "val", "--scales", "1.0", "--no-flip", "--num-workers", "0", "--low-thre", "0.05",
          "--high-thre", "0.95", "--quiet"]


@pytest.fixture(scope="module")
def art(tiny_checkpoint, voc_root, tmp_path_factory):
    """A real export of the demo val images: HDF5 masks (the source of the archive) and the archive."""
    out = tmp_path_factory.mktemp("cvat") / "art"
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                                   "--data-root", str(voc_root), "--format", "h5,cvat", *EXPORT])
    assert res.exit_code == 0, res.output
    return out


def _labelmap(text: str) -> list[tuple[str, tuple[int, int, int]]]:
    """labelmap.txt as CVAT's docs give it: ``# label:color_rgb:parts:actions`` comments, then one
    ``name:r,g,b:parts:actions`` line per label."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, color, _parts, _actions = line.split(":")
        r, g, b = (int(c) for c in color.split(","))
        out.append((name, (r, g, b)))
    return out


def _read_archive(path):
    """(labelmap, ids of the subset list, {id: (H, W, 3) RGB mask}, {id: (H, W) palette indices})."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        labelmap = _labelmap(zf.read("labelmap.txt").decode())
        ids = zf.read("ImageSets/Segmentation/default.txt").decode().split()
        rgb, index = {}, {}
        for i in ids:
            with Image.open(io.BytesIO(zf.read(f"SegmentationClass/{i}.png"))) as png:
                index[i] = np.asarray(png)
                rgb[i] = np.asarray(png.convert("RGB"))
    assert names == {"labelmap.txt", "ImageSets/Segmentation/default.txt"} | {f"SegmentationClass/{i}.png"
                                                                              for i in ids}
    return labelmap, ids, rgb, index


def test_cvat_archive_declares_every_colour_and_gives_back_the_masks(art):
    labelmap, ids, rgb, index = _read_archive(cvat_path(art, "val"))
    split = open_split(art, "val")
    assert sorted(split.ids()) == ids and len(ids) == 12
    palette = voc_palette()
    # the VOC classes in VOC colours (background black, as CVAT writes it), then the uncertain label
    assert [name for name, _ in labelmap] == [*VOC_CLASSES, "uncertain"]
    assert labelmap[0][1] == (0, 0, 0)
    assert [c for _, c in labelmap[:21]] == [tuple(palette[3 * k: 3 * k + 3]) for k in range(21)]
    assert len({c for _, c in labelmap}) == len(labelmap)  # one label per colour
    colour_to_line = {c: k for k, (_, c) in enumerate(labelmap)}
    uncertain_seen = 0
    for i in ids:
        mask = split.masks.load_mask(i)
        colours = {tuple(c) for c in np.unique(rgb[i].reshape(-1, 3), axis=0).tolist()}
        assert colours <= set(colour_to_line), f"{i}: colours {colours - set(colour_to_line)} not in labelmap.txt"
        # read by colour, as CVAT does: the line of each pixel's colour is the mask value (uncertain = line 21)
        lines = np.zeros(mask.shape, np.int64)
        for colour, k in colour_to_line.items():
            lines[(rgb[i] == colour).all(-1)] = k
        expected = np.where(mask == 255, 21, mask)
        np.testing.assert_array_equal(lines, expected)
        np.testing.assert_array_equal(index[i], expected)  # and by palette index (1-channel reading)
        uncertain_seen += int((mask == 255).sum())
    assert uncertain_seen > 0  # the export has uncertain pixels: the option below changes something


def test_uncertain_as_background_and_the_bytes_are_reproducible(art, tmp_path):
    first = cvat_path(art, "val").read_bytes()
    assert write_cvat_zip(art, "val").read_bytes() == first  # same masks, same archive
    write_cvat_zip(art, "val", uncertain_as="background")
    labelmap, ids, rgb, _ = _read_archive(cvat_path(art, "val"))
    assert [name for name, _ in labelmap] == list(VOC_CLASSES)
    split = open_split(art, "val")
    for i in ids:
        mask = split.masks.load_mask(i)
        assert (rgb[i][mask == 255] == 0).all()  # uncertain pixels are background, black
        assert (rgb[i][(mask != 255) & (mask != 0)] != 0).any(-1).all()
    write_cvat_zip(art, "val")  # the fixture's archive again, for any test after this one


def test_png_masks_resumed_export_and_overwrite(tiny_checkpoint, voc_root, tmp_path):
    out = tmp_path / "art"
    args = ["export-masks", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--data-root", str(voc_root),
            *EXPORT]
    res = CliRunner().invoke(cli, [*args, "--format", "png,cvat", "--uncertain-as", "background"])
    assert res.exit_code == 0, res.output
    labelmap, ids, _, index = _read_archive(cvat_path(out, "val"))
    assert len(ids) == 12 and "uncertain" not in [n for n, _ in labelmap]
    for i in ids:
        with Image.open(out / "masks_val" / f"{i}.png") as png:
            np.testing.assert_array_equal(index[i], np.where(np.asarray(png) == 255, 0, np.asarray(png)))
    # a resumed export (nothing left to do) builds the archive again from every finished mask
    cvat_path(out, "val").unlink()
    again = CliRunner().invoke(cli, [*args, "--format", "png,cvat"])
    assert again.exit_code == 0 and "exported 0 image(s)" in again.output, again.output
    assert len(_read_archive(cvat_path(out, "val"))[1]) == 12
    # --overwrite without cvat leaves no archive of the earlier masks behind
    over = CliRunner().invoke(cli, [*args, "--format", "png", "--overwrite"])
    assert over.exit_code == 0, over.output
    assert not cvat_path(out, "val").exists()
    alone = CliRunner().invoke(cli, [*args, "--format", "cvat"])
    assert alone.exit_code == 2 and "cvat is built from the exported masks; add h5 or png" in alone.output


def test_class_names_a_labelmap_cannot_hold():
    names = ["background", "car", "traffic:light"]
    with pytest.raises(ConfigError, match="class 2 'traffic:light': a CVAT labelmap line cannot hold"):
        annotation_labels(names)
    with pytest.raises(ConfigError, match="class 1 is named 'Uncertain'.*--uncertain-as background"):
        annotation_labels(["background", "Uncertain"])
    assert [n for n, _ in annotation_labels(["background", "Uncertain"], "background")] == ["background", "Uncertain"]
    with pytest.raises(ConfigError, match="--uncertain-as 'both': choose label or background"):
        annotation_labels(["background", "car"], "both")  # type: ignore[arg-type]


def test_using_pseudo_labels_cvat_snippet_writes_the_task_labels(art, tmp_path, monkeypatch):
    """The CVAT section of docs/using-pseudo-labels.md: its labels JSON are the archive's labels, background out."""
    import json

    from test_docs import DOCS, _python_blocks, _run_snippet, _section

    blocks = _python_blocks(_section((DOCS / "using-pseudo-labels.md").read_text(),
                                     "## Correcting them by hand in CVAT"))
    monkeypatch.chdir(tmp_path)
    _run_snippet(blocks[0], art, "val")
    labels = json.loads((tmp_path / "labels.json").read_text())
    palette = voc_palette()
    assert [lab["name"] for lab in labels] == [*VOC_CLASSES[1:], "uncertain"]
    assert labels[0]["color"] == "#%02x%02x%02x" % tuple(palette[3:6]) and labels[-1]["color"] == "#e0e0c0"
