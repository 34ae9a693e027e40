"""`seco show` on a real export: panel count, strip size, that every panel shows something, captions that fit
narrow portrait panels, and the colour legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from seco_labels.artifacts import ArtifactFile
from seco_labels.cli import cli
from seco_labels.data import build_reader
from seco_labels.evaluation.plots import font
from seco_labels.evaluation.show import (
    ERROR_COLORS,
    UNCERTAIN_COLOR,
    ShowPanel,
    draw_strip,
    fit_text,
    heat_colors,
    layout_strip,
    panels_for,
)
from seco_labels.inference.export import ExportOptions, export_split

HEIGHT, GAP, BAND = 120, 6, 22  # draw_strip's layout: a title band of 22 px, a caption band of at least 22 px


@pytest.fixture(scope="module")
def art(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("show_art")
    export_split(tiny_checkpoint, "val", out, options=ExportOptions(input_size=64, num_workers=0, scales=(1.0,)),
                 quiet=True)
    return out


@pytest.fixture(scope="module")
def val(voc_root):
    """The val reader, and its first landscape and first portrait image ids."""
    reader = build_reader("voc", voc_root, "val", require_tags=False)
    sizes = {i: reader.image_size(i) for i in reader.ids}
    landscape = next(i for i in reader.ids if sizes[i][1] > sizes[i][0])
    portrait = next(i for i in reader.ids if sizes[i][0] > sizes[i][1])
    return reader, landscape, portrait


def _strip_panels(art: Path, reader, image_id: str) -> list[ShowPanel]:
    """The panels `seco show` draws for image_id (same artifact, same reader)."""
    h5 = ArtifactFile(art / "cams_val.h5")
    image = reader.load_image(image_id)
    cam, keys = h5.load_cam(image_id)
    return panels_for(image, h5.load_mask(image_id), reader.class_names, cams=cam, keys=keys,
                      gt=reader.load_mask(image_id, image.shape[:2]))


def _assert_captions_fit(strip: Image.Image, lay) -> None:
    """Every caption line, measured with PIL's textbbox where it is drawn, lies within its panel's columns, and
    no ink of the caption band falls in the gaps between panels."""
    draw = ImageDraw.Draw(strip)
    for (x0, _, x1, _), (lines, size), xys in zip(lay.boxes, lay.captions, lay.caption_xy):
        assert lines, "empty caption"
        for line, xy in zip(lines, xys):
            left, _, right, _ = draw.textbbox(xy, line, font=font(size))
            assert x0 <= left and right <= x1, (line, size, left, right, x0, x1)
    band = np.asarray(strip.convert("L"))[lay.caption_y : lay.boxes[0][1]]
    for (_, _, x1, _), (x0_next, _, _, _) in zip(lay.boxes, lay.boxes[1:]):
        assert (band[:, x1:x0_next] == 255).all(), f"caption ink in the gap at x {x1}..{x0_next}"


def test_show_draws_every_panel(art, val, tmp_path):
    reader, landscape, portrait = val
    ids = [landscape, portrait]
    res = CliRunner().invoke(cli, ["show", "--pred", str(art), "--split", "val", "--ids", ",".join(ids),
                                   "--out", str(tmp_path), "--height", str(HEIGHT), "-q"])
    assert res.exit_code == 0, res.output
    assert f"wrote 2 image(s) to {tmp_path}" in res.output
    for image_id in ids:
        strip = Image.open(tmp_path / f"{image_id}.png").convert("RGB")
        panels = _strip_panels(art, reader, image_id)
        n = len(panels)
        assert n == 1 + len(ArtifactFile(art / "cams_val.h5").load_cam(image_id)[1]) + 1 + 2  # image, CAMs, mask, GT, errors
        h, w = reader.image_size(image_id)
        pw = max(1, round(w * HEIGHT / h))
        lay = layout_strip(panels, height=HEIGHT, title=f"{image_id} (val)")
        assert strip.size == (n * pw + GAP * (n + 1), lay.height), image_id
        assert lay.boxes[0][1] >= 2 * BAND and lay.legend_y == lay.boxes[0][3] + GAP
        a = np.asarray(strip)
        pics = [a[y0:y1, x0:x1] for x0, y0, x1, y1 in lay.boxes]
        for i, pic in enumerate(pics):
            assert pic.shape[:2] == (HEIGHT, pw) and pic.std() > 5, f"{image_id}: panel {i} of {n} is blank"
        assert (pics[n - 2] == 0).all(axis=-1).mean() > 0.05  # VOC black background in the GT panel
        _assert_captions_fit(strip, lay)
        # the legend says what beige, green, red, yellow and grey mean, each with a swatch of that very colour
        texts = {text for row in lay.legend_rows for _, text, _ in row}
        assert {"pseudo mask:", "uncertain (255)", "ground truth:", "no label (255)", "errors:", "right", "wrong",
                "uncertain", "no GT label"} <= texts
        legend = a[lay.legend_y :].reshape(-1, 3)
        for color in (UNCERTAIN_COLOR, *ERROR_COLORS.values()):
            assert (legend == color).all(axis=-1).sum() >= 64, f"{image_id}: no {color} swatch in the legend"


def test_captions_fit_narrow_portrait_panels(val):
    """A portrait image cropped to a narrow strip: long captions shrink, wrap, and only then get cut, but always
    fit their panel."""
    reader, _, portrait = val
    image = reader.load_image(portrait)
    h = image.shape[0]
    crop = np.ascontiguousarray(image[:, : h // 3])  # a 1:3 portrait: panels HEIGHT / 3 = 40 px wide
    mask = np.zeros(crop.shape[:2], np.uint8)
    long_captions = ["CAM: pottedplant", "ground truth", "errors: green right, red wrong, yellow uncertain",
                     "diningtable", "x"]  # "x" overhangs its box by a pixel on the left: drawn a pixel right
    panels = [ShowPanel(c, crop) for c in long_captions] + panels_for(crop, mask, ["background"], gt=mask)
    lay = layout_strip(panels, height=HEIGHT, title=f"{portrait} (val)")
    assert lay.boxes[0][2] - lay.boxes[0][0] == round(crop.shape[1] * HEIGHT / h)
    strip = draw_strip(panels, height=HEIGHT, title=f"{portrait} (val)")
    assert strip.size == (lay.width, lay.height)
    _assert_captions_fit(strip, lay)
    assert all(len(lines) <= 2 for lines, _ in lay.captions)
    assert lay.captions[1][0] == ["ground", "truth"]  # wrapped (at a smaller size) rather than cut
    assert lay.captions[2][0][-1].endswith("…")  # too long even on 2 lines at the smallest size: cut
    # the strip widens to the widest legend entry, and the title fits it
    widest = max(x + ImageDraw.Draw(strip).textbbox((0, 0), text, font=font(11))[2]
                 + (14 if color is not None else 0) for row in lay.legend_rows for x, text, color in row)
    assert lay.width >= widest + 2 * GAP
    title, size = lay.title
    left, _, right, _ = ImageDraw.Draw(strip).textbbox(lay.title_xy, title, font=font(size))
    assert GAP <= left and right <= lay.width - GAP
    assert fit_text(ImageDraw.Draw(strip), "errors", 3) == ([], 9)  # nothing fits 3 px: no text, not overflow


def test_show_first_n_from_png_masks_without_gt(art, tmp_path):
    res = CliRunner().invoke(cli, ["show", "--pred", str(art / "masks_val"), "--split", "val", "-n", "3", "--no-gt",
                                   "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_show_names_unknown_ids_and_missing_dataset(art, val, tmp_path):
    res = CliRunner().invoke(cli, ["show", "--pred", str(art), "--split", "val", "--ids", f"{val[1]},nope_1",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 2 and "nope_1 not in the predictions of split 'val'" in res.output
    lonely = tmp_path / "pngs"
    lonely.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(lonely / "x.png")
    res = CliRunner().invoke(cli, ["show", "--pred", str(lonely), "--split", "val"])
    assert res.exit_code == 2 and "pass --data-root DIR" in res.output


def test_error_map_colours_and_heat_ramp():
    image = np.full((4, 4, 3), 100, np.uint8)
    gt = np.array([[0, 0, 1, 1]] * 3 + [[255, 255, 1, 1]], np.uint8)
    mask = np.array([[0, 1, 1, 255]] * 4, np.uint8)
    panels = panels_for(image, mask, ["background", "aeroplane"], gt=gt)
    assert [p.caption for p in panels][:3] == ["image", "pseudo mask", "ground truth"] and len(panels) == 4
    err = panels[-1].pixels.astype(int)
    expect = {(0, 0): "right", (0, 1): "wrong", (0, 2): "right", (0, 3): "uncertain", (3, 0): "ignored"}
    for (y, x), kind in expect.items():
        blended = np.round(100 * 0.3 + np.array(ERROR_COLORS[kind]) * 0.7)
        assert (np.abs(err[y, x] - blended) <= 1).all(), (y, x, kind, err[y, x])
    ramp = heat_colors(np.array([[0.0, 0.5, 1.0]]))[0]
    assert tuple(ramp[0]) == (0, 0, 128) and tuple(ramp[2]) == (128, 0, 0) and ramp[1][0] > 0 and ramp[1][1] > 0
    with pytest.raises(ValueError, match="gt is 3x4 but the image is 4x4"):
        panels_for(image, mask, ["background", "aeroplane"], gt=gt[:3])
    with pytest.raises(ValueError, match="no panels"):
        draw_strip([])
