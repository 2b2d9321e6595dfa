"""Exceptions raised by streammon.

    StreamMonError
     ├── RegistrationError   a metric, window or setting was declared wrongly (raised at once)
     ├── EventError          an event was rejected; ``reason`` says why
     ├── SourceError         a source or sink failed (dependency errors are wrapped here)
     ├── CheckpointError     a snapshot cannot be written, read, or used with the app as it is now
     ├── AppLoadError        ``--app`` names nothing that is a Monitor
     └── UsageError          a command cannot work as given (the CLI exits with code 2)
"""

from __future__ import annotations

__all__ = ["StreamMonError", "RegistrationError", "EventError", "SourceError", "CheckpointError", "AppLoadError",
           "UsageError"]


class StreamMonError(Exception):
    """Root of every exception streammon raises on purpose."""


class RegistrationError(StreamMonError, ValueError):
    """A metric, window or setting cannot work as declared. The message shows the fix."""


class EventError(StreamMonError, ValueError):
    """An event was rejected. ``reason`` is short and stable enough to count and to read."""

    def __init__(self, reason: str, *, raw: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class SourceError(StreamMonError):
    """A source, sink or connector failed."""


class CheckpointError(StreamMonError):
    """A snapshot cannot be written, read, or used with the app as it is now. The message names the path and the fix."""


class AppLoadError(StreamMonError):
    """The ``--app`` spec names nothing that is a :class:`~streammon.Monitor`. The message says what to fix."""


class UsageError(StreamMonError):
    """A command cannot work as given (exit code 2)."""
