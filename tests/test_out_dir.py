"""An --out that cannot be written stops every command at once, before any work: exit 1, one line naming the path
and the reason, no traceback, nothing created."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from seco_labels.cli import cli
from seco_labels.errors import OutputError
from seco_labels.io import check_writable_dir

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
#: every command with an --out
NAMES = ["train", "export-masks", "fit-segmenter", "show", "compare", "segment", "predict", "evaluate", "demo"]


def commands(voc_root: Path, tmp: Path) -> dict[str, list[str]]:
    """Each command's arguments without --out; the inputs are such that the command, had it started work, would
    fail on them (a missing checkpoint, model or run): the --out error proves the check came first."""
    missing = str(tmp / "missing")
    preds = tmp / "preds"
    preds.mkdir(exist_ok=True)
    return {
        "train": ["train", "--preset", "demo", "--data-root", missing, "--split", "train"],
        "export-masks": ["export-masks", "--checkpoint", f"{missing}.pt", "--split", "train"],
        "fit-segmenter": ["fit-segmenter", "--labels", "gt", "--data-root", missing, "--split", "train",
                          "--encoder-weights", "random"],
        "show": ["show", "--pred", str(preds), "--split", "train"],
        "compare": ["compare", missing, f"{missing}2"],
        "segment": ["segment", "--checkpoint", f"{missing}.pt", "--split", "val"],
        "predict": ["predict", "--model", missing, "--split", "val"],
        "evaluate": ["evaluate", "--pred", str(preds), "--split", "val"],
        "demo": ["demo"],
    }


def assert_refused(res, *named: str) -> None:
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)  # click's exit, not an escaped exception
    assert "Traceback" not in res.output
    assert res.output.startswith("Error: cannot write --out ")
    assert len(res.output.strip().splitlines()) == 1
    for text in named:
        assert text in res.output


@pytest.mark.parametrize("name", NAMES)
def test_out_under_a_regular_file_is_refused_before_any_work(name, voc_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "run"
    res = CliRunner().invoke(cli, [*commands(voc_root, tmp_path)[name], "--out", str(out)])
    assert_refused(res, str(out), f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("name", ["train", "export-masks", "segment", "predict", "demo"])
def test_out_that_is_a_file_is_refused_with_exit_1(name, voc_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = CliRunner().invoke(cli, [*commands(voc_root, tmp_path)[name], "--out", str(blocker)])
    assert_refused(res, f"{blocker} is a file, not a folder")


@pytest.mark.skipif(ROOT, reason="running as root: chmod does not stop root from writing, so a read-only folder "
                                 "cannot be made here")
@pytest.mark.parametrize("name", NAMES)
def test_out_in_a_read_only_folder_is_refused(name, voc_root, tmp_path):
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = CliRunner().invoke(cli, [*commands(voc_root, tmp_path)[name], "--out", str(ro / "run")])
        assert_refused(res, str(ro / "run"), f"no permission to write in {ro}")
        existing = CliRunner().invoke(cli, [*commands(voc_root, tmp_path)[name], "--out", str(ro)])
        assert_refused(existing, f"no permission to write in {ro}")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_show_checks_its_default_folder_next_to_the_predictions(voc_root, tmp_path):
    """show's default --out (PRED/show_<split>) is only known after --pred is resolved: checked before drawing."""
    preds = tmp_path / "preds"
    preds.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="P").save(preds / "2007_000032.png")
    (preds / "show_train").write_text("a file where the folder goes")
    res = CliRunner().invoke(cli, ["show", "--pred", str(preds), "--split", "train", "--data-root", str(voc_root)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"cannot write --out {preds / 'show_train'}: {preds / 'show_train'} is a file, not a folder" in res.output


@pytest.mark.skipif(ROOT, reason="running as root: chmod does not stop root from writing")
def test_evaluate_checks_its_default_folder_the_predictions(voc_root, tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="P").save(preds / "2007_000032.png")
    preds.chmod(0o555)
    try:
        res = CliRunner().invoke(cli, ["evaluate", "--pred", str(preds), "--split", "train", "--gt", str(voc_root)])
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert f"no permission to write in {preds}" in res.output
    finally:
        preds.chmod(0o755)


def test_a_failed_run_leaves_no_folder_behind(tmp_path):
    """The run folder's lock file needs the folder; a run that fails before writing anything removes both."""
    out = tmp_path / "new" / "run"
    res = CliRunner().invoke(cli, ["train", "--preset", "demo", "--data-root", str(tmp_path / "nowhere"),
                                   "--out", str(out)])
    assert res.exit_code == 1 and "nowhere" in res.output
    assert not (tmp_path / "new").exists()


def test_check_writable_dir(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b" / "c") == tmp_path / "a" / "b" / "c"
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert check_writable_dir(tmp_path) == tmp_path
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"--model-dir .*/f/deep/er: .*/f is a file, not a folder"):
        check_writable_dir(tmp_path / "f" / "deep" / "er", option="--model-dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(OutputError, match="is a broken symbolic link"):
        check_writable_dir(tmp_path / "dangling" / "x")
