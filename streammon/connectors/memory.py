"""In-memory twins of the I/O seams: a list source and a list dead-letter sink."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .base import Kind, Message

__all__ = ["MemorySource", "MemoryDeadLetter"]


class MemorySource:
    """Serves a list of events (dicts, JSON bytes or :class:`Message`) in order, as one partition.

    >>> src = MemorySource([{"id": "a", "ts": 1, "prediction": 1}])
    >>> [m.offset for m in src.poll(10, 0)], src.exhausted
    ([0], True)
    """

    def __init__(self, events: Iterable[Any], *, kind: Kind | None = None, topic: str = "memory") -> None:
        self._messages = [
            e if isinstance(e, Message) else Message(e, kind=kind, topic=topic, partition=0, offset=i)
            for i, e in enumerate(events)
        ]
        self._pos = 0
        self.committed: dict[tuple[str, int], int] = {}

    def poll(self, max_records: int, timeout: float) -> list[Message]:
        batch = self._messages[self._pos : self._pos + max_records]
        self._pos += len(batch)
        return batch

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Resume after a checkpoint: offsets are positions in the list."""
        self._pos = max((o for (t, _), o in offsets.items()), default=0)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.committed.update(offsets)

    @property
    def exhausted(self) -> bool:
        return self._pos >= len(self._messages)

    def close(self) -> None:
        pass


class MemoryDeadLetter:
    """Keeps rejected messages and their reasons in a list (tests, notebooks)."""

    def __init__(self) -> None:
        self.items: list[tuple[Message, str]] = []

    def send(self, message: Message, reason: str) -> None:
        self.items.append((message, reason))

    @property
    def reasons(self) -> list[str]:
        return [r for _, r in self.items]
