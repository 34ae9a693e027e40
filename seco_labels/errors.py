"""Exceptions raised by seco_labels.

Each names the file, image id or option at fault and says what to do next. The CLI maps
:class:`SecoError` subclasses to exit code 1 and prints only the message.
"""

from __future__ import annotations

__all__ = ["SecoError", "DataError", "ConfigError", "CheckpointError", "CrfUnavailableError"]


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
