"""In-memory twins of the I/O seams: a list source and a list dead-letter sink."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .base import Kind, Message

__all__ = ["MemorySource", "PartitionedMemorySource", "MemoryDeadLetter"]

TopicPartition = tuple[str, int]
Schedule = Callable[[list[TopicPartition], int], list[tuple[TopicPartition, int]]]


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


class PartitionedMemorySource:
    """In-memory twin of a Kafka source: partitioned topics, delivered in whatever order you schedule.

    ``records`` maps ``(topic, partition)`` to its values in offset order. Each poll asks
    ``schedule(available, max_records)`` which partitions to deliver and how many records of each
    (default: a seeded random choice, so that tests can try adversarial interleavings). Pausing,
    lag (records not yet delivered), seeking and committing behave as on Kafka, and :meth:`append`
    produces more records, so the source never ends by itself (``exhausted`` stays False).

    >>> src = PartitionedMemorySource({("predictions", 0): [b'{"id": "a", "ts": 1, "prediction": 1}'],
    ...                                ("feedback", 0): []})
    >>> [(m.topic, m.offset) for m in src.poll(10, 0)], src.lag()
    ([('predictions', 0)], {('feedback', 0): 0, ('predictions', 0): 0})
    """

    def __init__(self, records: Mapping[TopicPartition, Sequence[Any]], *,
                 topics: Mapping[str, Kind] | None = None, schedule: Schedule | None = None, seed: int = 0) -> None:
        self.topics: dict[str, Kind] = dict(topics or {"predictions": "prediction", "feedback": "feedback"})
        self._log = {tp: list(values) for tp, values in records.items()}
        self._position = dict.fromkeys(self._log, 0)
        self._paused: set[TopicPartition] = set()
        self._schedule = schedule or _random_schedule(random.Random(seed))
        self.committed: dict[TopicPartition, int] = {}
        self._resumed: dict[TopicPartition, int] = {}

    @property
    def input_partitions(self) -> list[TopicPartition]:
        return sorted(self._log)

    def poll(self, max_records: int, timeout: float) -> list[Message]:
        available = [tp for tp in sorted(self._log) if tp not in self._paused and self._position[tp] < len(self._log[tp])]
        batch: list[Message] = []
        for (topic, partition), count in self._schedule(available, max_records) if available else []:
            start = self._position[(topic, partition)]
            values = self._log[(topic, partition)][start:start + max(0, min(count, max_records - len(batch)))]
            batch.extend(Message(v, self.topics[topic], _key(v), topic, partition, start + i) for i, v in enumerate(values))
            self._position[(topic, partition)] = start + len(values)
        return batch

    def append(self, tp: TopicPartition, values: Iterable[Any]) -> None:
        self._log[tp].extend(values)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._paused.update(partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._paused.difference_update(partitions)

    def lag(self) -> dict[TopicPartition, int]:
        return {tp: len(values) - self._position[tp] for tp, values in sorted(self._log.items())}

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp in self._log:
            self._position[tp] = offsets.get(tp, 0)
        self._resumed = dict(offsets)  # processed before the restart: a checkpoint holds them

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    @property
    def done(self) -> bool:
        """True once every record is delivered and committed (the monitor processed it)."""
        done = {**self._resumed, **self.committed}
        return all(done.get(tp, 0) >= len(values) for tp, values in self._log.items())

    @property
    def exhausted(self) -> bool:
        return False  # a topic never ends

    def close(self) -> None:
        pass


def _random_schedule(rng: random.Random) -> Schedule:
    def schedule(available: list[TopicPartition], max_records: int) -> list[tuple[TopicPartition, int]]:
        chosen = rng.sample(available, rng.randint(1, len(available)))
        return [(tp, rng.randint(1, max_records)) for tp in chosen]
    return schedule


def _key(value: Any) -> bytes | None:
    # Kafka messages are keyed by prediction id; take it from the event when it has one.
    if isinstance(value, Mapping):
        event_id = value.get("id")
    else:
        try:
            event_id = json.loads(value).get("id")
        except (ValueError, AttributeError, TypeError):
            return None
    return event_id.encode() if isinstance(event_id, str) else None


class MemoryDeadLetter:
    """Keeps rejected messages and their reasons in a list (tests, notebooks)."""

    def __init__(self) -> None:
        self.items: list[tuple[Message, str]] = []

    def send(self, message: Message, reason: str) -> None:
        self.items.append((message, reason))

    @property
    def reasons(self) -> list[str]:
        return [r for _, r in self.items]
