"""File-system helpers every writer shares: atomic writes (a crash never leaves a half-written file in place of a good
one), a full disk reported as :class:`~seco_labels.errors.DiskFullError`, the up-front check of an output folder,
advisory folder locks against two runs writing one folder, clean-up of a killed run's temporary files, file hashes.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import hashlib
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DiskFullError, FolderBusyError, OutputError

try:  # POSIX (Linux, macOS); Windows has no flock and no file size limit
    import fcntl
    import resource
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]
    resource = None  # type: ignore[assignment]

__all__ = [
    "atomic_path", "atomic_write_text", "atomic_write_bytes", "append_line", "sha256_file", "check_writable_dir",
    "disk_full_error", "disk_full_guard", "mount_point", "folder_lock", "remove_stale_temps",
]

#: errnos that mean "the bytes do not fit": no space, quota, file size limit (RLIMIT_FSIZE or the file system's)
_FULL_ERRNOS = frozenset(
    code for code in (errno_codes.ENOSPC, getattr(errno_codes, "EDQUOT", None), errno_codes.EFBIG) if code is not None
)
#: below this many free bytes a write that failed without an errno is taken for a full disk
_NEARLY_FULL = 1 << 20
#: libraries that lose the OSError keep the errno in their message (HDF5: "... errno = 28, error message = ...")
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")
#: ``tempfile.mkstemp``'s random part: 8 characters of this alphabet
_TEMP_SUFFIX = r"\.[a-z0-9_]{8}\.tmp"


# -- a full disk ---------------------------------------------------------------------------------------------
def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system holding ``path`` (the nearest existing folder above it that is one)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _full_errno(exc: BaseException, written: Path | None) -> int | None:
    """The errno that says ``exc`` was a full disk, quota or file size limit, or None for any other failure."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return e.errno
        for match in _ERRNO_IN_TEXT.finditer(str(e)):
            if int(match.group(1)) in _FULL_ERRNOS:
                return int(match.group(1))
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    # torch's zip writer reports a failed write as "RuntimeError: [enforce fail at inline_container.cc] unexpected
    # pos" with no errno: ask the file system instead. The partial file is still there, so a full disk shows.
    if written is not None:
        try:
            size = written.stat().st_size
        except OSError:
            size = -1
        if resource is not None:
            soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
            if soft != resource.RLIM_INFINITY and size >= soft:
                return errno_codes.EFBIG
        try:
            vfs = os.statvfs(written.parent)
        except OSError:
            return None
        if vfs.f_bavail * vfs.f_frsize < _NEARLY_FULL:
            return errno_codes.ENOSPC
    return None


def disk_full_error(exc: BaseException, path: str | os.PathLike, written: str | os.PathLike | None = None
                    ) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path`` and its mount point when ``exc`` (or an exception in its chain) is a
    full disk (ENOSPC), a quota (EDQUOT) or the file size limit (EFBIG); None for any other failure.

    ``written``: the partial file the failed write left (a temp file), measured when the library that failed lost
    the errno (torch's "unexpected pos", HDF5's "file write failed"): at the size limit it was EFBIG; with under
    1 MiB left on its file system it was ENOSPC.
    """
    if isinstance(exc, DiskFullError):
        return exc
    code = _full_errno(exc, Path(written) if written is not None else None)
    if code is None:
        return None
    where = mount_point(path)
    if code == errno_codes.EFBIG:
        reason = "file too large: the file size limit (ulimit -f) or the file system's largest file"
    else:
        reason = os.strerror(code)
    err = DiskFullError(f"no space left on {where} while writing {path} ({reason}); nothing was lost, free space "
                        "and rerun")
    err.errno, err.strerror, err.filename = code, os.strerror(code), str(path)
    return err


@contextlib.contextmanager
def disk_full_guard(path: str | os.PathLike, written: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a full-disk failure of the block into :class:`DiskFullError` naming ``path``; other errors pass."""
    try:
        yield
    except Exception as e:
        full = disk_full_error(e, path, written)
        if full is None:
            raise
        raise full from e


# -- atomic writes -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success ``os.replace`` it onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its previous content. The temp file lives in
    the same folder so the rename is atomic on POSIX file systems; its name is ``.<name>.<8 random>.tmp`` (what
    :func:`remove_stale_temps` removes after a kill).

    Raises:
        DiskFullError: the disk, the quota or the file size limit was reached (the old ``path`` is kept).
    """
    final = Path(path)
    with disk_full_guard(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        # measured before the temp file goes: a write that lost its errno is classified by the file's size
        with disk_full_guard(final, written=tmp_path):
            yield tmp_path
            os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (a JSONL log) whole or not at all.

    A failed append (a full disk) is cut back to the file's previous end, so no half record is left for the next
    reader to choke on.

    Raises:
        DiskFullError: no space for the line (the file is as it was).
    """
    path = Path(path)
    data = memoryview((line.rstrip("\n") + "\n").encode())
    with disk_full_guard(path):
        # unbuffered: a buffered file would retry the failed bytes when truncating and closing
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data):]
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints are hundreds of MB)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the output folder ---------------------------------------------------------------------------------------
def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_writable_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check, without creating anything, that ``path`` is a folder this process can write in, or can be created:
    its nearest existing ancestor is a writable folder. Call it before any work, so a bad ``--out`` fails at once.

    Raises:
        OutputError: names ``option``, the path and the reason: a component that is a file, a broken symbolic link,
            a read-only file system, or no permission.
    """
    p = Path(path)

    def fail(reason: str) -> OutputError:
        return OutputError(f"cannot write {option} {p}: {reason}")

    existing = p
    while not os.path.exists(existing):
        if os.path.lexists(existing):  # a symbolic link to nothing: mkdir would fail with "File exists"
            raise fail(f"{existing} is a broken symbolic link")
        if existing == existing.parent:  # pragma: no cover - the root always exists
            break
        existing = existing.parent
    if not existing.is_dir():
        raise fail(f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if _read_only_fs(existing):
            raise fail(f"{existing} is on a read-only file system")
        raise fail(f"no permission to write in {existing}")
    return p


# -- stale temporary files ------------------------------------------------------------------------------------
def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str] | None = None, *,
                       recursive: bool = False) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` leaves when a run is killed mid-write
    (``.<name>.<8 random>.tmp``) and return them.

    Only call it while holding the folder's lock (:func:`folder_lock`): a running writer's temp file looks the same.
    ``names``: only the temps of these final file names (a folder shared with other writers or other splits); None:
    every such temp (a folder only this writer fills). ``recursive``: also in subfolders. Anything else (another
    program's ``.tmp`` files, names of another length) is left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if names is None:
        pattern = re.compile(r"\..+" + _TEMP_SUFFIX)
    else:
        pattern = re.compile("|".join(r"\." + re.escape(n) + _TEMP_SUFFIX for n in names) or r"(?!)")
    removed = []
    for p in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


# -- folder locks ---------------------------------------------------------------------------------------------
@dataclass
class _Held:
    fd: int
    count: int
    pid: int


#: lock files this process holds, by absolute path; re-entrant so a command and the library it calls can both lock
_HELD: dict[str, _Held] = {}


def _forget_in_child() -> None:
    # A forked child (a DataLoader worker) shares the parent's open lock file; closing its copy keeps the lock with
    # the parent, and makes sure the lock ends with the parent rather than with the last worker.
    for held in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(held.fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _lock_holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".lock", *, what: str = "", enabled: bool = True
                ) -> Iterator[Path | None]:
    """Hold an advisory lock on ``folder`` (the file ``folder/name``) while the block runs; yields its path.

    One writer at a time per folder (per split where ``name`` carries one): a second process fails at once. The
    lock is ``fcntl.flock`` on ``folder/name``, which holds the holder's process id; the kernel releases it when the
    process ends however it ends (kill -9 too), and the file is removed on a normal release (a killed run leaves it:
    the next run takes the lock over and removes it); a folder created only to hold it is removed too when the block
    wrote nothing there. Re-entrant within a process. ``enabled=False`` (a torchrun
    process other than rank 0: all write the same folder, rank 0 locks it for them) does nothing and yields None.
    Where ``fcntl`` is missing (Windows) it warns and runs unlocked. Creates ``folder`` if needed.

    Raises:
        FolderBusyError: another process holds it: "FOLDER is being written by process PID".
    """
    if not enabled:
        yield None
        return
    folder = Path(folder)
    path = folder / name
    key = os.path.abspath(path)
    held = _HELD.get(key)
    if held is not None and held.pid == os.getpid():
        held.count += 1
        try:
            yield path
        finally:
            held.count -= 1
        return
    if fcntl is None:  # pragma: no cover - Windows
        warnings.warn(f"no file locking on this platform: another run writing {folder} at the same time is not "
                      "detected", RuntimeWarning, stacklevel=3)
        yield None
        return
    created = []  # folders made for the lock file alone are removed with it when the run wrote nothing there
    missing = folder
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    with disk_full_guard(path):
        folder.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _lock_holder(fd)
            os.close(fd)
            who = f"process {pid}" if pid is not None else "another process"
            raise FolderBusyError(
                f"{folder} is being written by {who}{f' ({what})' if what else ''}; wait for it to end or write to "
                f"another folder (lock file {path})"
            ) from None
        except OSError as e:  # a file system without flock (some network mounts): run, but say so
            os.close(fd)
            warnings.warn(f"cannot lock {path} ({e.strerror}): another run writing {folder} at the same time is not "
                          "detected", RuntimeWarning, stacklevel=3)
            yield None
            return
        # The holder we waited on may have removed the file between our open and our flock: then we hold a lock
        # on a deleted file, and must lock the one at the path instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # a full disk may refuse even these few bytes; the lock holds regardless
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = _Held(fd=fd, count=1, pid=os.getpid())
    try:
        yield path
    finally:
        _HELD.pop(key, None)
        # removed while still locked: a process that opened it meanwhile sees another inode and retries
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                os.unlink(path)
        os.close(fd)
        for made in created:  # innermost first; stops at the first that holds something
            try:
                made.rmdir()
            except OSError:
                break
