"""Sources of events and sinks of rejected ones."""

from .base import DeadLetterSink, Message, Source
from .memory import MemoryDeadLetter, MemorySource

__all__ = ["Message", "Source", "DeadLetterSink", "MemorySource", "MemoryDeadLetter"]
