"""Exceptions raised by seco_labels.

Each names the file, image id or option at fault and says what to do next. The CLI maps
:class:`SecoError` subclasses to exit code 1 and prints only the message.
"""

from __future__ import annotations

__all__ = [
    "SecoError", "DataError", "ConfigError", "CheckpointError", "CrfUnavailableError", "OutputError", "DiskFullError",
    "FolderBusyError",
]


class SecoError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class DataError(SecoError, ValueError):
    """A dataset file is missing, unreadable, or inconsistent with the others (names the file or id)."""


class ConfigError(SecoError, ValueError):
    """A configuration value is unknown or out of range (names the key)."""


class CheckpointError(SecoError, ValueError):
    """A checkpoint is unreadable or was written for another configuration."""


class CrfUnavailableError(SecoError, ImportError):
    """The optional dense-CRF package (pydensecrf2) is not installed; the message says how to install it."""


class OutputError(SecoError):
    """An output folder (``--out``) cannot be written: a path component is a file, or permission is missing. Raised
    before any work starts (names the path and the reason)."""


class DiskFullError(SecoError, OSError):
    """A write failed because the file system is full (ENOSPC), the quota is reached (EDQUOT) or the file size limit
    is (EFBIG). The file being written was left as it was before (its temporary file removed); the message names the
    mount point and the file. ``errno`` and ``filename`` are those of the failure."""

    def __str__(self) -> str:
        # the message alone: OSError's own str() would turn it into "[Errno 28] ...: 'file'" once filename is set
        return str(self.args[0]) if self.args else ""


class FolderBusyError(SecoError):
    """Another process holds the advisory lock of an output folder (see :func:`seco_labels.io.folder_lock`); the
    message names the folder and that process's id."""
