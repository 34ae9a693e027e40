"""A full disk is one line, not a traceback, and loses nothing: the previous checkpoint or artifact stays, no temp file
is left, and a rerun with room continues.

The disk is "filled" for real without filling the machine's: the command runs in a child process whose file size
limit (RLIMIT_FSIZE) is below what it is about to write, so the kernel refuses the write (EFBIG; SIGXFSZ is ignored
in the child so that write() returns the error instead of killing it) exactly where ENOSPC would strike.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from seco_labels.cli import cli
from seco_labels.errors import DiskFullError
from seco_labels.io import mount_point

resource = pytest.importorskip("resource")  # POSIX only

#: runs ``seco ARGS...`` (or, with ``-c CODE``, the code) with the file size limit set to LIMIT bytes
CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
if sys.argv[2] == "-c":
    exec(sys.argv[3])
else:
    from seco_labels.cli import main
    sys.argv = ["seco", *sys.argv[2:]]
    main()
"""


def run_limited(limit: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", CHILD, str(limit), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


def assert_disk_full(res: subprocess.CompletedProcess, written: Path) -> None:
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    where = mount_point(written)
    assert os.path.ismount(where)
    assert f"Error: no space left on {where} while writing {written} (file too large" in res.stderr
    assert "nothing was lost, free space and rerun" in res.stderr


def test_unit_writes_keep_the_previous_file_and_leave_no_half_line(tmp_path):
    """atomic_write_text keeps the old file; append_line cuts a failed append back (the next reader never sees
    half a JSON record)."""
    code = """
from pathlib import Path
from seco_labels.errors import DiskFullError
from seco_labels.io import append_line, atomic_write_text
for write in (lambda: atomic_write_text("state.json", "y" * 5000), lambda: append_line("log.jsonl", "z" * 5000)):
    try:
        write()
    except DiskFullError as e:
        print("DiskFullError", e.errno, e.filename, "|", e)
"""
    (tmp_path / "state.json").write_text("previous")
    (tmp_path / "log.jsonl").write_text('{"step": 0}\n' * 200)  # 2400 bytes: below the limit, the append is not
    res = run_limited(4096, "-c", code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and all(ln.startswith("DiskFullError 27 ") for ln in lines), res.stdout
    assert "while writing state.json" in lines[0] and "while writing log.jsonl" in lines[1]
    assert (tmp_path / "state.json").read_text() == "previous"
    assert (tmp_path / "log.jsonl").read_text() == '{"step": 0}\n' * 200
    assert temps(tmp_path) == []


def test_disk_full_error_is_an_oserror_with_the_errno(tmp_path):
    from seco_labels.io import disk_full_error

    err = disk_full_error(OSError(28, "No space left on device"), tmp_path / "x.h5")
    assert isinstance(err, DiskFullError) and isinstance(err, OSError) and err.errno == 28
    assert str(err) == (f"no space left on {mount_point(tmp_path)} while writing {tmp_path / 'x.h5'} (No space left "
                        "on device); nothing was lost, free space and rerun")
    # HDF5 keeps the errno only in its message
    assert disk_full_error(RuntimeError("Can't write data (file write failed: errno = 28, error message = 'No "
                                        "space left on device')"), tmp_path / "x.h5").errno == 28
    assert disk_full_error(ValueError("something else"), tmp_path / "x.h5") is None


def test_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(voc_root, tmp_path):
    from test_train import tiny_config

    from seco_labels.training.trainer import Trainer

    run = tmp_path / "run"
    cfg = tiny_config(voc_root, iters=4)
    cfg.train.val_every = 0
    Trainer(cfg, run, quiet=True).fit()
    last = run / "last.pt"
    before = sha(last)
    args = ["train", "--config", str(run / "config.yaml"), "--out", str(run), "--resume", "auto", "--iters", "8",
            "--quiet"]
    # room for the log and config lines, not for a checkpoint (~19 MB)
    res = run_limited(last.stat().st_size // 2, *args, cwd=tmp_path)
    assert_disk_full(res, last)
    assert sha(last) == before  # the step-4 checkpoint, whole
    assert torch.load(last, weights_only=True)["step"] == 4
    assert temps(run) == []
    again = CliRunner().invoke(cli, args)  # room again: the rerun continues from step 4
    assert again.exit_code == 0, again.output
    assert "resuming" in again.output and "trained 8 steps" in again.output
    assert torch.load(last, weights_only=True)["step"] == 8


def mini_voc(root: Path, voc_root: Path, n: int = 4) -> Path:
    """A VOC folder of the demo set's first ``n`` train images (links), as split ``mini``: an export in seconds."""
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(voc_root / name)
    ids = (voc_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:n]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "mini.txt").write_text("\n".join(ids) + "\n")
    return root


def export_args(checkpoint: Path, data: Path, art: Path) -> list[str]:
    return ["export-masks", "--checkpoint", str(checkpoint), "--split", "mini", "--data-root", str(data), "--out",
            str(art), "--scales", "1.0", "--no-flip", "--num-workers", "0", "--device", "cpu", "--quiet"]


def test_export_on_a_full_disk_keeps_the_artifact_and_resumes(voc_root, tiny_checkpoint, tmp_path):
    data = mini_voc(tmp_path / "voc", voc_root)
    art = tmp_path / "art"
    args = export_args(tiny_checkpoint, data, art)
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    h5 = art / "cams_mini.h5"
    before, size = sha(h5), h5.stat().st_size
    pngs = sorted((art / "masks_mini").glob("*.png"))
    redo = pngs[0].stem
    pngs[0].unlink()  # one image to export again: its part, its PNG, then a new HDF5 file

    # 1. no room for the image's part file: the writer thread's failure reaches the command as one line
    res = run_limited(4096, *args, cwd=tmp_path)
    assert_disk_full(res, art / ".parts_mini" / f"{redo}.npz")
    assert sha(h5) == before and temps(art) == []
    assert not (art / "masks_mini" / f"{redo}.png").exists()

    # 2. room for the part and the PNG, not for the assembled HDF5 file
    res = run_limited(size - size // 10, *args, cwd=tmp_path)
    assert_disk_full(res, h5)
    assert sha(h5) == before and temps(art) == []
    assert (art / ".parts_mini" / f"{redo}.npz").is_file()  # the finished image is kept for the rerun
    assert (art / "masks_mini" / f"{redo}.png").is_file()
    assert not list(art.glob(".lock*"))

    # 3. room again: the rerun assembles the kept part
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "exported 0 image(s)" in again.output and "4 already done" in again.output
    assert not (art / ".parts_mini").exists()
    import h5py

    with h5py.File(h5, "r") as f:
        assert sorted(f["masks"].keys()) == sorted([p.stem for p in pngs])
