"""Sources of events and sinks of rejected ones."""

from .base import DeadLetterSink, Message, Source
from .deadletter import FileDeadLetter
from .files import FileSource, write_events
from .memory import MemoryDeadLetter, MemorySource

__all__ = ["Message", "Source", "DeadLetterSink", "MemorySource", "MemoryDeadLetter",
           "FileSource", "FileDeadLetter", "write_events"]
