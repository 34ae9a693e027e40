"""``export-masks --format hf-dataset``: ``ART/hf_<split>/`` read back with the ``datasets`` library itself (image and
label columns as Image features, equal to the images and the PNG masks), built from HDF5 masks too, with images
re-encoded where the file is not what the masks were made from; without pyarrow the option stops at once."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from seco_labels.artifacts import ArtifactWriter, hf_dataset, hf_dataset_dir, write_hf_dataset
from seco_labels.artifacts.hf_dataset import HF_INSTALL
from seco_labels.cli import cli
from seco_labels.data import build_reader
from seco_labels.data.classes import VOC_CLASSES
from seco_labels.data.images import read_image_size
from seco_labels.errors import DataError

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: the line of a docs snippet that names the artifact; the test points it at a real export
ART_LINE = re.compile(r"^ART, SPLIT = .*$", re.M)


def _load(folder, tmp_path, **kwargs):
    """``load_dataset`` on a local folder, its cache under ``tmp_path`` (nothing written to the user's cache)."""
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-cache"), **kwargs)


@pytest.fixture(scope="module")
def hf_export(tiny_checkpoint, voc_root, tmp_path_factory):
    """``export-masks --format png,hf-dataset`` of the val split: the artifact folder."""
    pytest.importorskip("datasets")  # (with pyarrow, which the export needs)
    art = tmp_path_factory.mktemp("hf-art")
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--split", "val", "--out",
                                   str(art), "--data-root", str(voc_root), "--format", "png,hf-dataset",
                                   "--scales", "1.0", "--no-flip", "--num-workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    return art


def test_export_hf_dataset_round_trips_to_the_png_masks(hf_export, tiny_checkpoint, voc_root, tmp_path):
    datasets = pytest.importorskip("datasets")
    art = hf_export
    folder = hf_dataset_dir(art, "val")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "data/val-00000-of-00001.parquet", "id2label.json"]
    reader = build_reader("voc", voc_root, "val")
    assert json.loads((folder / "id2label.json").read_text()) == {str(k): n for k, n in enumerate(VOC_CLASSES)}

    ds = _load(folder, tmp_path)  # the split is found by its file name
    assert list(ds) == ["val"]
    val = ds["val"]
    assert val.features["image"] == datasets.Image() and val.features["label"] == datasets.Image()
    assert val["id"] == reader.ids
    seen = set()
    for row in val:
        with Image.open(art / "masks_val" / f"{row['id']}.png") as png:
            expected = np.asarray(png)
        label = np.asarray(row["label"])
        np.testing.assert_array_equal(label, expected)
        seen |= set(np.unique(label).tolist())
        np.testing.assert_array_equal(np.asarray(row["image"].convert("RGB")), reader.load_image(row["id"]))
    assert 0 in seen and len(seen) > 1

    # the same files through the parquet builder, named splits; the images are the dataset's own files, unchanged
    raw = datasets.load_dataset("parquet", data_files={"validation": str(folder / "data" / "*.parquet")},
                                cache_dir=str(tmp_path / "hf-cache"))["validation"]
    raw = raw.cast_column("image", datasets.Image(decode=False))
    assert raw.num_rows == len(reader.ids)
    for row in raw:
        assert row["image"]["bytes"] == reader.image_path(row["id"]).read_bytes()

    alone = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--split", "val", "--out",
                                     str(tmp_path / "b"), "--format", "hf-dataset", "--quiet"])
    assert alone.exit_code == 2 and "hf-dataset is built from the exported masks; add h5 or png" in alone.output


def test_using_pseudo_labels_hf_snippet_runs(hf_export, voc_root, tmp_path, monkeypatch, capsys):
    """The Hugging Face example of docs/using-pseudo-labels.md, on a real export (its cache under tmp_path)."""
    datasets = pytest.importorskip("datasets")
    load = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: load(*a, cache_dir=str(tmp_path / "cache"), **k))
    doc = (DOCS / "using-pseudo-labels.md").read_text()
    section = doc.split("## In Hugging Face datasets and transformers\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)[0]
    assert len(ART_LINE.findall(code)) == 1
    ns: dict = {"__name__": "doc_snippet"}
    exec(compile(ART_LINE.sub(f"ART, SPLIT = {str(hf_export)!r}, 'val'", code), "using-pseudo-labels.md", "exec"), ns)
    first = build_reader("voc", voc_root, "val").ids[0]
    assert ns["row"]["id"] == first and ns["id2label"] == dict(enumerate(VOC_CLASSES))
    with Image.open(hf_export / "masks_val" / f"{first}.png") as png:
        np.testing.assert_array_equal(ns["mask"], np.asarray(png))
    printed_id, names = capsys.readouterr().out.strip().split(" ", 1)
    present = [VOC_CLASSES[c] for c in np.unique(ns["mask"]).tolist() if c != 255]
    assert printed_id == first and ast.literal_eval(names) == present and len(present) > 1


def _rotate_by_exif(path):
    """Store the image turned by 90 degrees with an EXIF orientation that turns it back: viewers (and
    ``datasets``) show the original, seco_labels reads the stored pixels."""
    with Image.open(path) as img:
        turned = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    turned.save(path, quality=95, exif=exif)


def test_hf_dataset_from_hdf5_masks_aligns_images_with_their_masks(voc_root, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    root = shutil.copytree(voc_root, tmp_path / "voc")
    rotated = build_reader("voc", root, "val").ids[0]
    _rotate_by_exif(root / "JPEGImages" / f"{rotated}.jpg")
    reader = build_reader("voc", root, "val", max_side=600)  # the 640-pixel images are bounded, as at export
    art = tmp_path / "art"
    attrs = {"dataset_root": str(root), "layout": "voc", "class_names": list(VOC_CLASSES), "num_classes": 21,
             "ignore_index": 255, "max_side": 600, "config": {}}
    masks = {}
    with ArtifactWriter(art, "val", attrs, formats=("h5",)) as writer:
        for n, image_id in enumerate(reader.ids):
            h, w = reader.image_size(image_id)
            mask = np.random.default_rng(n).integers(0, 21, (h, w), dtype=np.uint8)
            mask[: h // 10] = 255
            masks[image_id] = mask
            writer.add(image_id, np.zeros((0, h, w), np.float32), np.zeros(0, np.int64), mask)
    (tmp_path / "art" / ".hf_val.tmp").mkdir()  # a killed run's remains

    folder = write_hf_dataset(art, "val")
    assert not (art / ".hf_val.tmp").exists() and not (art / ".hf_val.old").exists()
    val = _load(folder, tmp_path)["val"]
    assert val["id"] == reader.ids
    for row in val:
        np.testing.assert_array_equal(np.asarray(row["label"]), masks[row["id"]])
        np.testing.assert_array_equal(np.asarray(row["image"].convert("RGB")), reader.load_image(row["id"]))
    stored = {row["id"]: row["image"] for row in val.cast_column("image", datasets.Image(decode=False))}
    as_is = {i for i in reader.ids if i != rotated and max(read_image_size(reader.image_path(i), "image")) <= 600}
    assert rotated not in as_is and 0 < len(as_is) < len(reader.ids)  # both kinds are checked
    for image_id, cell in stored.items():
        if image_id in as_is:
            assert cell["bytes"] == reader.image_path(image_id).read_bytes()
        else:  # a PNG of the pixels the mask was made from
            assert cell["path"] == f"{image_id}.png" and cell["bytes"].startswith(b"\x89PNG")

    # written again in small shards: replaced whole, the rows in the same order
    monkeypatch.setattr(hf_dataset, "MAX_SHARD_BYTES", 1500 * 1000)
    monkeypatch.setattr(hf_dataset, "ROW_GROUP_ROWS", 2)
    again = write_hf_dataset(art, "val")
    assert sorted(p.name for p in art.iterdir() if "hf_val" in p.name) == ["hf_val"] and again == folder
    shards = sorted((folder / "data").iterdir())
    assert len(shards) > 2 and [p.name for p in shards] == [f"val-{i:05d}-of-{len(shards):05d}.parquet"
                                                            for i in range(len(shards))]
    assert _load(folder, tmp_path / "again")["val"]["id"] == reader.ids

    # images of another size than their masks are refused, naming the image
    small = root / "JPEGImages" / f"{sorted(as_is)[0]}.jpg"
    with Image.open(small) as img:
        img.resize((img.width // 2, img.height // 2)).save(small)
    with pytest.raises(DataError, match=f"image {small} is .* but its pseudo mask"):
        write_hf_dataset(art, "val")
    assert len(_load(folder, tmp_path)["val"]) == len(reader.ids)  # the previous dataset is kept
    with ArtifactWriter(art, "val", attrs, formats=("h5",), overwrite=True):
        assert not folder.exists()  # --overwrite removes it with the split's other outputs


def test_without_pyarrow_hf_dataset_stops_at_once_with_the_install_command(tiny_checkpoint, voc_root, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    out = tmp_path / "art"
    res = CliRunner().invoke(cli, ["export-masks", "--checkpoint", str(tiny_checkpoint), "--split", "val", "--out",
                                   str(out), "--data-root", str(voc_root), "--format", "png,hf-dataset"])
    assert res.exit_code == 2, res.output
    assert "--format" in res.output and HF_INSTALL in res.output and 'pip install -e ".[hf]"' in res.output
    assert not out.exists()  # nothing was exported
