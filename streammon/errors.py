"""Exceptions raised by streammon.

    StreamMonError
     ├── RegistrationError   a metric, window or setting was declared wrongly (raised at once)
     ├── EventError          an event was rejected; ``reason`` says why
     └── SourceError         a source or sink failed (dependency errors are wrapped here)
"""

from __future__ import annotations

__all__ = ["StreamMonError", "RegistrationError", "EventError", "SourceError"]


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
