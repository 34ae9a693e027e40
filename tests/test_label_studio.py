"""export-masks --format label-studio: Label Studio's brush RLE against bit streams written out from the format's
description (and against label_studio_converter's own encoder and decoder when installed), and a real export's tasks
decoded back to the masks."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from seco_labels.artifacts import label_studio_config_path, label_studio_path, open_split
from seco_labels.artifacts.label_studio import decode_brush, decode_rle, encode_rle
from seco_labels.cli import cli
from seco_labels.data import VOC_CLASSES, build_reader

EXPORT = ["--split", "val", "--scales", "1.0", "--no-flip", "--num-workers", "0", "--low-thre", "0.05",
          "--high-thre", "0.95", "--quiet"]
#: the header of an 8-bit-word stream with run-length widths 3, 4, 8, 16, after its 32-bit value count
WORDS_AND_WIDTHS = "00111" + "0010" + "0011" + "0111" + "1111"


def _bytes(bits: str) -> list[int]:
    bits += "0" * (8 - len(bits) % 8)  # label_studio_converter pads with 1 to 8 zero bits
    return [int(bits[i: i + 8], 2) for i in range(0, len(bits), 8)]


def test_encoder_writes_the_bits_the_format_describes():
    # 1x2 mask [in, out]: 8 RGBA values; a run of 4 x 255 then a run of 4 x 0, each "1" + width 0 ("00") + 3-bit
    # length - 1 ("011") + the 8-bit word
    bits = f"{8:032b}" + WORDS_AND_WIDTHS + "1" + "00" + "011" + "11111111" + "1" + "00" + "011" + "00000000"
    assert encode_rle(np.array([[True, False]])) == _bytes(bits)
    # 128x256 inside: 131072 values, two runs of 2**16 (width 3: 16 bits, length - 1 = 65535)
    bits = f"{131072:032b}" + WORDS_AND_WIDTHS + 2 * ("1" + "11" + "1" * 16 + "11111111")
    assert encode_rle(np.ones((128, 256), bool)) == _bytes(bits)
    # 10x1, the last pixel inside: 9 x 4 = 36 zeros (width 2: 8 bits), then 4 x 255
    mask = np.zeros((10, 1), bool)
    mask[9] = True
    bits = f"{40:032b}" + WORDS_AND_WIDTHS + "1" + "10" + f"{35:08b}" + "0" * 8 + "1" + "00" + "011" + "1" * 8
    assert encode_rle(mask) == _bytes(bits)


def test_decoder_reads_literal_and_repeated_chunks():
    # 3 literal words 7, 8, 9 (flag 0, width 0, length - 1 = 2), then 5 x 4 repeated (width 1: 4 bits)
    bits = f"{8:032b}" + WORDS_AND_WIDTHS + "0" + "00" + "010" + f"{7:08b}{8:08b}{9:08b}" + "1" + "01" + "0100" + \
        f"{4:08b}"
    assert decode_rle(_bytes(bits)).tolist() == [7, 8, 9, 4, 4, 4, 4, 4]
    with pytest.raises(ValueError, match="ends early"):
        decode_rle(_bytes(bits)[:8])


def _masks(voc_root):
    rng = np.random.default_rng(0)
    out = [np.zeros((5, 7), bool), np.ones((3, 4), bool), rng.random((13, 11)) > 0.5, rng.random((64, 48)) > 0.97,
           np.ones((200, 400), bool)]  # 320000 values: runs split at 2**16
    reader = build_reader("voc", voc_root, "val")
    for i in reader.ids[:4]:
        gt = reader.load_mask(i)
        out += [gt == c for c in np.unique(gt)]
    return out


def test_rle_round_trips(voc_root):
    for m in _masks(voc_root):
        np.testing.assert_array_equal(decode_brush(encode_rle(m), *m.shape), m)


def test_rle_matches_label_studio_converter(voc_root):
    """Our bytes are Label Studio's: tests/data/label_studio_converter_rle.json holds what label-studio-converter
    0.0.59's ``brush.encode_rle`` made of :func:`_masks` (RGBA-flattened, 255 inside), recorded once so that the test
    runs without that package (it pulls in 23 others: nltk, pandas, lxml...)."""
    recorded = json.loads((Path(__file__).parent / "data" / "label_studio_converter_rle.json").read_text())["rle"]
    masks = _masks(voc_root)
    assert len(recorded) == len(masks) == 20
    for m, rle in zip(masks, recorded):
        assert encode_rle(m) == rle
        np.testing.assert_array_equal(decode_brush(rle, *m.shape), m)


def _read_config(path):
    root = ET.parse(path).getroot()
    image, brush = root.find("Image"), root.find("BrushLabels")
    return image.get("name"), image.get("value"), brush.get("name"), brush.get("toName"), \
        [label.get("value") for label in brush.findall("Label")]


def test_export_tasks_decode_to_the_masks(tiny_checkpoint, voc_root, tmp_path):
    art = tmp_path / "art"
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--out", str(art),
                                   "--data-root", str(voc_root), "--format", "png,label-studio", *EXPORT])
    assert res.exit_code == 0, res.output
    tasks = json.loads(label_studio_path(art, "val").read_text())
    image_name, value, from_name, to_name, labels = _read_config(label_studio_config_path(art, "val"))
    assert (value, to_name) == ("$image", image_name) and labels == [*VOC_CLASSES[1:], "uncertain"]
    reader = build_reader("voc", voc_root, "val")
    assert [t["data"]["seco_id"] for t in tasks] == reader.ids
    uncertain_seen = 0
    for task in tasks:
        image_id = task["data"]["seco_id"]
        prefix = "/data/local-files/?d="
        assert task["data"]["image"].startswith(prefix)
        assert (voc_root / unquote(task["data"]["image"][len(prefix):])) == reader.image_path(image_id)
        with Image.open(art / "masks_val" / f"{image_id}.png") as png:
            mask = np.asarray(png)
        [prediction] = task["predictions"]
        assert prediction["score"] == pytest.approx(1 - (mask == 255).mean(), abs=1e-6)
        rebuilt = np.zeros(mask.shape, np.uint8)
        for result in prediction["result"]:
            assert (result["from_name"], result["to_name"], result["type"]) == (from_name, image_name, "brushlabels")
            assert (result["original_height"], result["original_width"]) == mask.shape
            [name] = result["value"]["brushlabels"]
            assert name in labels and result["value"]["format"] == "rle"
            region = decode_brush(result["value"]["rle"], *mask.shape)
            assert region.any() and not rebuilt[region].any()  # one result per class present, no overlap
            rebuilt[region] = 255 if name == "uncertain" else VOC_CLASSES.index(name)
        np.testing.assert_array_equal(rebuilt, mask)
        uncertain_seen += int((mask == 255).sum())
    assert uncertain_seen > 0

    # uncertain pixels as background (no region), images under another URL
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--out", str(art),
                                   "--data-root", str(voc_root), "--format", "png,label-studio", "--uncertain-as",
                                   "background", "--label-studio-prefix", "http://host/voc/", *EXPORT])
    assert res.exit_code == 0, res.output
    tasks = json.loads(label_studio_path(art, "val").read_text())
    assert _read_config(label_studio_config_path(art, "val"))[4] == list(VOC_CLASSES[1:])
    split = open_split(art, "val")
    for task in tasks:
        mask = split.masks.load_mask(task["data"]["seco_id"])
        assert task["data"]["image"] == "http://host/voc/" + reader.image_path(task["data"]["seco_id"]).relative_to(
            voc_root).as_posix()
        names = [r["value"]["brushlabels"][0] for r in task["predictions"][0]["result"]]
        assert names == [VOC_CLASSES[c] for c in np.unique(mask) if c not in (0, 255)]


def test_using_pseudo_labels_label_studio_snippet_runs(tiny_checkpoint, voc_root, tmp_path, capsys):
    """The Label Studio section of docs/using-pseudo-labels.md, on a real export of the demo val images."""
    from test_docs import DOCS, _python_blocks, _run_snippet, _section

    from seco_labels.artifacts import write_label_studio

    art = tmp_path / "art"
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--out", str(art),
                                   "--data-root", str(voc_root), "--format", "png", *EXPORT])
    assert res.exit_code == 0, res.output
    write_label_studio(art, "val")  # on an existing export, as the library call
    blocks = _python_blocks(_section((DOCS / "using-pseudo-labels.md").read_text(),
                                     "## Correcting them by hand in Label Studio"))
    ns = _run_snippet(blocks[0], art, "val")
    image_id = ns["task"]["data"]["seco_id"]
    with Image.open(art / "masks_val" / f"{image_id}.png") as png:
        mask = np.asarray(png)
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    expected = [[image_id, VOC_CLASSES[c], str(int((mask == c).sum()))] for c in np.unique(mask) if c not in (0, 255)]
    if (mask == 255).any():
        expected.append([image_id, "uncertain", str(int((mask == 255).sum()))])
    assert printed == expected and printed
