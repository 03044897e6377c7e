"""Errors meant for a person. The CLI prints their message as one line and exits non-zero;
anything else that escapes is a bug and keeps its traceback."""
from __future__ import annotations

__all__ = ["LorascopeError", "UsageError", "RecordingError"]


class LorascopeError(Exception):
    """Base class: the message is a sentence that says what went wrong and what to do."""


class UsageError(LorascopeError, ValueError):
    """A bad value from the user: a flag, a config field, a name that is not registered."""


class RecordingError(LorascopeError):
    """A file that is missing, unreadable, not a lorascope recording, or of a newer format."""
