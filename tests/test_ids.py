"""Image ids must name a file: a split list holding ``../../esc`` is refused by every command that reads one, with
the list file, the line and the id in the message, and nothing is written outside ``--out``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from seco_labels.artifacts import ArtifactWriter
from seco_labels.cli import cli
from seco_labels.data import build_reader, check_image_id, id_problem, load_tags_file
from seco_labels.errors import DataError

BAD = "../../esc"


def _files(root: Path, skip: Path | None = None) -> set[Path]:
    """Every file under ``root`` (relative), except those under ``skip``."""
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and (skip is None or skip not in p.parents)}


def _copy(src: Path, root: Path, ids: list[str], train_lines: list[str]) -> Path:
    """A VOC copy of ``ids`` whose train.txt holds ``train_lines`` and val.txt the good ids."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClassAug").mkdir()
    for i in ids:
        shutil.copy(src / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
        shutil.copy(src / "SegmentationClassAug" / f"{i}.png", root / "SegmentationClassAug")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(train_lines) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    tags = load_tags_file(src / "cls_labels_onehot.npy")
    np.save(root / "cls_labels_onehot.npy", {i: tags[i] for i in ids}, allow_pickle=True)
    return root


@pytest.fixture
def escape_set(voc_root, tmp_path):
    """(dataset root, split file, the line of the bad id) in ``tmp_path/work/data``; the files the bad id would
    reach (``JPEGImages/../../esc.jpg``: ``work/esc.jpg``, and its mask) exist, so an unchecked reader would go on
    and read them."""
    ids = build_reader("voc", voc_root, "train").ids[:4]
    lines = [ids[0], ids[1], "", BAD, ids[2], ids[3]]  # the blank line still counts: the bad id is on line 4
    root = _copy(voc_root, tmp_path / "work" / "data", ids, lines)
    shutil.copy(root / "JPEGImages" / f"{ids[0]}.jpg", tmp_path / "work" / "esc.jpg")
    shutil.copy(root / "SegmentationClassAug" / f"{ids[0]}.png", tmp_path / "work" / "esc.png")
    return root, root / "ImageSets" / "Segmentation" / "train.txt", 4


def _expected(split_file: Path, line: int) -> str:
    return (f"split list {split_file} line {line}: image id '{BAD}' cannot name a file (it contains '/'): ids must "
            "not contain '/'")


# -- the check itself ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_id, problem", [
    ("../x", "it contains '/'"),
    ("a/b", "it contains '/'"),
    ("a\\b", "it contains a backslash"),
    ("..\\..\\esc", "it contains a backslash"),
    (".hidden", "it starts with '.'"),
    ("..", "it starts with '.'"),
    ("x\x00y", "it contains a NUL character"),
    ("", "it is empty"),
    ("  ", "it is empty"),
])
def test_bad_ids_are_named(image_id, problem):
    assert id_problem(image_id) == problem
    with pytest.raises(DataError, match=re.escape(f"where: image id {image_id!r} cannot name a file ({problem})")):
        check_image_id(image_id, "where: ")


@pytest.mark.parametrize("image_id", ["2007_000032", "COCO_val2014_000000000042", "000000000042", "a.b", "x-y z"])
def test_ordinary_ids_pass(image_id):
    assert id_problem(image_id) is None
    check_image_id(image_id)


@pytest.mark.parametrize("line", ["../x", "a\\b", ".x", "a/b extra-column", "\x00"])
def test_reader_refuses_the_line(voc_root, tmp_path, line):
    ids = build_reader("voc", voc_root, "train").ids[:2]
    root = _copy(voc_root, tmp_path / "voc", ids, [ids[0], line, ids[1]])
    (root / "JPEGImages" / "x.jpg").write_bytes((root / "JPEGImages" / f"{ids[0]}.jpg").read_bytes())
    shutil.copy(root / "JPEGImages" / f"{ids[0]}.jpg", root / "x.jpg")  # what '../x' would read
    bad = line.split()[0]
    split_file = root / "ImageSets" / "Segmentation" / "train.txt"
    for layout in ("voc", "coco", "coco-seco"):
        if layout != "voc":  # the same list file where those layouts look for it
            shutil.copy(split_file, root / "train.txt")
        where = split_file if layout == "voc" else root / "train.txt"
        with pytest.raises(DataError, match=re.escape(f"split list {where} line 2: image id {bad!r} cannot name a "
                                                      "file (")) as e:
            build_reader(layout, root, "train", require_images=False, require_tags=False)
        assert str(e.value).endswith("(e.g. 2007_000032), or remove the line")


def test_coco_seco_names_and_a_bom_are_fine(coco_root, tmp_path):
    root = tmp_path / "coco-seco"
    shutil.copytree(coco_root / "images" / "val", root / "JPEGImages" / "val")
    ids = sorted(p.stem for p in (root / "JPEGImages" / "val").glob("*.jpg"))[:3]
    names = [f"COCO_val2014_{int(i):012d}" for i in ids]
    for i, n in zip(ids, names):
        (root / "JPEGImages" / "val" / f"{i}.jpg").rename(root / "JPEGImages" / "val" / f"{n}.jpg")
    # a Windows editor's BOM and CRLF line ends
    (root / "val.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(names).encode() + b"\r\n")
    r = build_reader("coco-seco", root, "val", require_tags=False)
    assert r.ids == names
    assert r.load_image(names[0]).shape[2] == 3


def test_split_list_that_is_not_text(voc_root, tmp_path):
    ids = build_reader("voc", voc_root, "train").ids[:2]
    root = _copy(voc_root, tmp_path / "voc", ids, ids)
    split_file = root / "ImageSets" / "Segmentation" / "train.txt"
    split_file.write_bytes(b"\xff\xfe2\x000\x00")  # UTF-16, as some editors save
    with pytest.raises(DataError, match=re.escape(f"split list {split_file} is not UTF-8 text")):
        build_reader("voc", root, "train")


def test_writer_uses_the_same_check(voc_root, tmp_path):
    reader = build_reader("voc", voc_root, "val", require_tags=False)
    attrs = {"dataset_root": str(voc_root), "layout": "voc", "num_classes": 21}
    w = ArtifactWriter(tmp_path / "art", "val", attrs, formats=("png",))
    mask = np.zeros((4, 5), np.uint8)
    cam = np.zeros((0, 4, 5), np.float16)
    for bad in ("../../esc", "a\\b", ".x", "x\x00"):
        with pytest.raises(DataError, match=re.escape(f"image id {bad!r} cannot name a file (")):
            w.add(bad, cam, np.zeros(0, np.int64), mask)
    w.add(reader.ids[0], cam, np.zeros(0, np.int64), mask)
    w.finalize()
    assert _files(tmp_path) == {Path("art/manifest_val.json"), Path(f"art/masks_val/{reader.ids[0]}.png")}


# -- every command that reads a split list -----------------------------------------------------------------------


def _run_refused(args: list[str], tmp_path: Path, out: Path, expected: str) -> None:
    before = _files(tmp_path, skip=out)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    assert expected in res.output, res.output
    assert "Traceback" not in res.output
    # nothing new anywhere but under --out (the bait work/esc.png, the mask '../../esc' reads, was there before)
    assert _files(tmp_path, skip=out) == before
    assert not list(out.parent.glob("esc*"))  # where masks_train/../../esc.png would be


def test_train_refuses_the_escaping_id(escape_set, tmp_path):
    root, split_file, line = escape_set
    out = tmp_path / "work" / "runs" / "run"
    _run_refused(["train", "--preset", "demo", "--data-root", str(root), "--split", "train", "--val-split", "val",
                  "--out", str(out), "--iters", "1", "--device", "cpu", "-q"], tmp_path, out,
                 _expected(split_file, line))


def test_fit_segmenter_refuses_the_escaping_id(escape_set, tmp_path):
    root, split_file, line = escape_set
    out = tmp_path / "work" / "seg" / "run"
    _run_refused(["fit-segmenter", "--arch", "unet", "--encoder", "tu-mobilenetv3_small_050", "--labels", "gt",
                  "--data-root", str(root), "--split", "train", "--val-split", "val", "--iters", "1",
                  "--batch-size", "2", "--crop-size", "64", "--num-workers", "0", "--device", "cpu", "--quiet",
                  "--encoder-weights", "random", "--out", str(out)], tmp_path, out, _expected(split_file, line))


def test_evaluate_refuses_the_escaping_id(escape_set, tmp_path):
    root, split_file, line = escape_set
    pred = tmp_path / "work" / "pred" / "art"
    (pred / "masks_train").mkdir(parents=True)
    for png in (root / "SegmentationClassAug").glob("*.png"):
        shutil.copy(png, pred / "masks_train")
    _run_refused(["evaluate", "--pred", str(pred), "--split", "train", "--gt", str(root), "-q"], tmp_path, pred,
                 _expected(split_file, line))


def test_show_refuses_the_escaping_id(escape_set, tmp_path):
    root, split_file, line = escape_set
    art = tmp_path / "work" / "show" / "art"
    (art / "masks_train").mkdir(parents=True)
    for png in (root / "SegmentationClassAug").glob("*.png"):
        shutil.copy(png, art / "masks_train")
    _run_refused(["show", "--pred", str(art), "--split", "train", "--data-root", str(root), "-q"], tmp_path, art,
                 _expected(split_file, line))


@pytest.mark.parametrize("command", ["segment", "export-masks"])
def test_segment_and_export_refuse_the_escaping_id(command, escape_set, tiny_checkpoint, tmp_path):
    root, split_file, line = escape_set
    out = tmp_path / "work" / "art" / "out"
    args = [command, "--checkpoint", str(tiny_checkpoint), "--split", "train", "--out", str(out), "--data-root",
            str(root), "--input-size", "64", "--device", "cpu", "-q"]
    if command == "export-masks":
        args += ["--num-workers", "0"]
    _run_refused(args, tmp_path, out, _expected(split_file, line))
