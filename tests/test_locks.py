"""One writer per output folder: a second run into a folder being written stops at once ("FOLDER is being written by
process PID", exit 1); the lock goes with its holder, however it ends. And a rerun removes the temp files a killed
run left in its own folder, only those."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_disk_full import export_args, mini_voc

from seco_labels.artifacts import ArtifactWriter
from seco_labels.cli import cli
from seco_labels.errors import FolderBusyError
from seco_labels.io import folder_lock, remove_stale_temps

pytest.importorskip("fcntl")  # the lock is flock; Windows runs unlocked (with a warning)

#: holds FOLDER/NAME until a line arrives on stdin (or the process is killed)
HOLDER = """
import sys
from pathlib import Path
from seco_labels.io import folder_lock
with folder_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    sys.stdin.readline()
"""


class Holder:
    """A process holding a folder's lock, as a concurrent run would."""

    def __init__(self, folder: Path, name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"
        self.pid = self.proc.pid

    def release(self) -> None:
        self.proc.communicate("\n", timeout=60)
        assert self.proc.returncode == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)


def assert_busy(res, folder: Path, pid: int) -> None:
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    assert f"Error: {folder} is being written by process {pid}" in res.output


@pytest.mark.parametrize("name,lock", [
    ("train", ".lock"), ("fit-segmenter", ".lock"), ("export-masks", ".lock_train"), ("segment", ".lock_val"),
    ("predict", ".lock_predict"), ("demo", ".lock"),
])
def test_second_run_into_a_locked_folder_stops_at_once(name, lock, voc_root, tmp_path):
    out = tmp_path / "out"
    holder = Holder(out, lock)
    missing = str(tmp_path / "missing.pt")  # had the command gone on, it would fail on this instead
    args = {
        "train": ["train", "--preset", "demo", "--data-root", str(voc_root), "--split", "train"],
        "fit-segmenter": ["fit-segmenter", "--labels", "gt", "--data-root", str(voc_root), "--split", "train",
                          "--encoder-weights", "random"],
        "export-masks": ["export-masks", "--checkpoint", missing, "--split", "train"],
        "segment": ["segment", "--checkpoint", missing, "--split", "val"],
        "predict": ["predict", "--model", missing, "--split", "val"],
        "demo": ["demo"],
    }[name]
    try:
        res = CliRunner().invoke(cli, [*args, "--out", str(out)])
        assert_busy(res, out, holder.pid)
        assert sorted(p.name for p in out.iterdir()) == [lock]  # nothing written
    finally:
        holder.release()
    assert not (out / lock).exists()  # released and removed by its holder


def test_the_library_locks_too(voc_root, tmp_path):
    """Trainer.fit and ArtifactWriter take the lock themselves (for library callers and seco demo's folders)."""
    from test_train import tiny_config

    from seco_labels.training.trainer import Trainer

    run = tmp_path / "run"
    holder = Holder(run, ".lock")
    try:
        trainer = Trainer(tiny_config(voc_root, iters=2), run, quiet=True)
        with pytest.raises(FolderBusyError, match=f"{run} is being written by process {holder.pid}"):
            trainer.fit()
        assert not (run / "config.yaml").exists()
    finally:
        holder.release()
    art = tmp_path / "art"
    holder = Holder(art, ".lock_train")
    try:
        with pytest.raises(FolderBusyError, match=f"{art} is being written by process {holder.pid} \\(split train"):
            ArtifactWriter(art, "train", {"dataset_root": "x"})
        # torchrun: every rank but 0 writes without the lock (rank 0 holds it for them)
        writer = ArtifactWriter(art, "train", {"dataset_root": "x"}, is_primary=False)
        writer.close()
        # another split of the same folder is not locked by this one
        with ArtifactWriter(art, "val", {"dataset_root": "x"}) as other:
            other.add("a", np.zeros((0, 4, 4), np.float16), np.zeros(0, np.int64), np.zeros((4, 4), np.uint8))
        assert (art / "cams_val.h5").is_file() and not (art / ".lock_val").exists()
    finally:
        holder.release()


def test_lock_is_released_when_its_holder_is_killed_and_a_rerun_cleans_up(voc_root, tiny_checkpoint, tmp_path):
    """kill -9 leaves the lock file (with a dead pid) and the temp files of the killed export: the next run takes
    the lock over, removes this split's stale temps (only those), exports, and removes the lock file."""
    data = mini_voc(tmp_path / "voc", voc_root, n=2)
    art = tmp_path / "art"
    holder = Holder(art, ".lock_mini")
    busy = CliRunner().invoke(cli, export_args(tiny_checkpoint, data, art))
    assert_busy(busy, art, holder.pid)
    holder.kill()
    assert (art / ".lock_mini").read_text().strip() == str(holder.pid)  # left behind by the kill
    stale = [art / ".cams_mini.h5.k1ll3d_x.tmp", art / ".manifest_mini.json.abcdefgh.tmp",
             art / ".parts_mini" / ".2011_000003.npz.zz99yy88.tmp", art / "masks_mini" / ".2011_000003.png.a1b2c3d4.tmp"]
    keep = [art / ".cams_val.h5.abcdefgh.tmp",  # another split's export may be writing it right now
            art / ".cams_mini.h5.mine.tmp",  # not a name our writes make
            art / "notes.tmp", art / "masks_mini" / "readme.txt"]
    for p in stale + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * 1000)
    # a third run works, while another split of the folder is locked (per-split locks)
    other = Holder(art, ".lock_val")
    try:
        res = CliRunner().invoke(cli, export_args(tiny_checkpoint, data, art))
    finally:
        other.release()
    assert res.exit_code == 0, res.output
    assert "exported 2 image(s)" in res.output
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in keep)
    assert not (art / ".lock_mini").exists()


def test_a_resumed_training_run_removes_its_stale_temps_only(voc_root, tmp_path):
    from test_train import tiny_config

    from seco_labels.training.trainer import Trainer

    run = tmp_path / "run"
    cfg = tiny_config(voc_root, iters=2)
    cfg.train.val_every = 0
    cfg.train.ckpt_every = 2
    Trainer(cfg, run, quiet=True).fit()
    stale = [run / ".last.pt.x7_k2m9q.tmp", run / ".metrics.jsonl.abcdefgh.tmp", run / ".config.yaml.00000000.tmp"]
    keep = [run / ".last.pt.backup.tmp", run / ".other.pt.abcdefgh.tmp", run / "last.pt.tmp", run / "my.tmp"]
    for p in stale + keep:
        p.write_bytes(b"\0" * 4096)
    cfg = tiny_config(voc_root, iters=3)
    cfg.train.val_every = 0
    trainer = Trainer(cfg, run, quiet=True)
    assert trainer.resume("auto")
    trainer.fit()
    assert trainer.step == 3
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in keep)
    assert not (run / ".lock").exists()


def test_folder_lock_is_reentrant_and_says_who_holds_it(tmp_path):
    with folder_lock(tmp_path, ".lock") as path:
        assert path.read_text().strip() == str(os.getpid())
        with folder_lock(tmp_path, ".lock"):  # the command's lock and the library's, in one process
            pass
        assert path.exists()  # still held by the outer block
        code = ("import sys; from pathlib import Path; from seco_labels.io import folder_lock\n"
                "try:\n    folder_lock(Path(sys.argv[1])).__enter__()\n"
                "except Exception as e:\n    print(type(e).__name__, e)")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                             timeout=120).stdout
        assert out.startswith(f"FolderBusyError {tmp_path} is being written by process {os.getpid()}")
    assert not path.exists()


def test_remove_stale_temps_matches_our_names_only(tmp_path):
    made = ["a.json", "b.h5"]
    ours = [tmp_path / ".a.json.abcdefgh.tmp", tmp_path / ".b.h5.0_1_2_3a.tmp"]
    theirs = [tmp_path / ".c.json.abcdefgh.tmp", tmp_path / ".a.json.ABCDEFGH.tmp", tmp_path / ".a.json.abc.tmp",
              tmp_path / "a.json.abcdefgh.tmp"]
    for p in ours + theirs:
        p.write_text("x")
    (tmp_path / ".a.json.zzzzzzzz.tmp").mkdir()  # a folder is never removed
    assert sorted(remove_stale_temps(tmp_path, made)) == sorted(ours)
    assert all(p.exists() for p in theirs) and (tmp_path / ".a.json.zzzzzzzz.tmp").is_dir()
    assert sorted(remove_stale_temps(tmp_path)) == [tmp_path / ".c.json.abcdefgh.tmp"]  # any name, 8 lowercase
