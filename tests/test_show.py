"""`seco show` on a real export: panel count, strip size, and that every panel shows something."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from seco_labels.artifacts import ArtifactFile
from seco_labels.cli import cli
from seco_labels.export import ExportOptions, export_split
from seco_labels.show import ERROR_COLORS, draw_strip, heat_colors, panels_for


HEIGHT, GAP, BAND = 120, 6, 22  # draw_strip's layout: caption band 22 px, plus a title band of 22 px


@pytest.fixture(scope="module")
def art(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("show_art")
    export_split(tiny_checkpoint, "val", out, options=ExportOptions(input_size=64, num_workers=0, scales=(1.0,)),
                 quiet=True)
    return out


def _panel_boxes(strip: Image.Image, n: int, top: int) -> list[np.ndarray]:
    pw = (strip.width - GAP * (n + 1)) // n
    a = np.asarray(strip)
    return [a[top : top + HEIGHT, GAP + i * (pw + GAP) : GAP + i * (pw + GAP) + pw] for i in range(n)]


def test_show_draws_every_panel(art, voc_root, tmp_path):
    ids = ["coco_000000000036", "coco_000000000071"]
    h5 = ArtifactFile(art / "cams_val.h5")
    res = CliRunner().invoke(cli, ["show", "--pred", str(art), "--split", "val", "--ids", ",".join(ids),
                                   "--out", str(tmp_path), "--height", str(HEIGHT), "-q"])
    assert res.exit_code == 0, res.output
    assert f"wrote 2 image(s) to {tmp_path}" in res.output
    for image_id in ids:
        strip = Image.open(tmp_path / f"{image_id}.png")
        k = len(h5.load_cam(image_id)[1])
        n = 1 + k + 1 + 2  # image, a CAM per tagged class, pseudo mask, GT, errors
        h, w = np.asarray(Image.open(voc_root / "JPEGImages" / f"{image_id}.jpg")).shape[:2]
        pw = max(1, round(w * HEIGHT / h))
        assert strip.size == (n * pw + GAP * (n + 1), 2 * BAND + HEIGHT + GAP), (image_id, k)
        for i, panel in enumerate(_panel_boxes(strip, n, 2 * BAND)):
            assert panel.std() > 5, f"{image_id}: panel {i} of {n} is blank"
        gt_panel = _panel_boxes(strip, n, 2 * BAND)[n - 2]
        assert (gt_panel == 0).all(axis=-1).mean() > 0.05  # VOC black background in the GT panel


def test_show_first_n_from_png_masks_without_gt(art, tmp_path):
    res = CliRunner().invoke(cli, ["show", "--pred", str(art / "masks_val"), "--split", "val", "-n", "3", "--no-gt",
                                   "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_show_names_unknown_ids_and_missing_dataset(art, tmp_path):
    res = CliRunner().invoke(cli, ["show", "--pred", str(art), "--split", "val", "--ids", "coco_000000000036,nope_1",
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
