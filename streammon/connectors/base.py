"""The source contract the monitor consumes, and the message it carries.

A source hands out batches (``poll``), each message with its partition and offset. The monitor
processes a batch, snapshots its state, and only then calls ``commit`` with the next offsets to
read, so that offsets and state move together (the Kafka connector builds on this).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

__all__ = ["Message", "Source", "SeekableSource", "AlignableSource", "GroupSource", "SourceHealth", "DeadLetterSink",
           "FlushingDeadLetterSink", "RebalanceListener"]

Kind = Literal["prediction", "feedback"]


class Message(NamedTuple):
    """One raw event. ``kind`` is None in a mixed stream, where the fields tell it.

    A named tuple: sources build one per record, and a frozen dataclass costs twice as much to make.
    """

    value: bytes | str | Mapping[str, Any]
    kind: Kind | None = None
    key: bytes | str | None = None
    topic: str = ""
    partition: int = 0
    offset: int = -1


def next_offsets(batch: Sequence[Message]) -> dict[tuple[str, int], int]:
    """``{(topic, partition): offset after the last message of it}`` for a batch in offset order."""
    return {(m.topic, m.partition): m.offset + 1 for m in batch}


@runtime_checkable
class Source(Protocol):
    def poll(self, max_records: int, timeout: float) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``timeout`` seconds; [] if none came."""

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Record ``{(topic, partition): next offset}`` as processed and checkpointed."""

    @property
    def exhausted(self) -> bool:
        """True when a finite source (a file, a list) has nothing left to give."""

    def close(self) -> None: ...


# Optional capabilities: the runner detects each with isinstance() and uses it where present.
@runtime_checkable
class SeekableSource(Source, Protocol):
    """A source that can resume at given offsets (needed to restart from a checkpoint)."""

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Resume at ``{(topic, partition): next offset}``; partitions not named start from the beginning."""


@runtime_checkable
class SourceHealth(Protocol):
    """A source that reports its connection and lag (published as ``streammon_source_connected`` and ``_consumer_lag``)."""

    @property
    def connected(self) -> bool: ...

    def lag(self) -> dict[tuple[str, int], int]:
        """Records on the broker past what was delivered, per (topic, partition), where known."""


@runtime_checkable
class AlignableSource(Source, Protocol):
    """A source read aligned by event time (streammon.align): it names its topics and can pause partitions."""

    topics: Mapping[str, str]  # topic -> "prediction" or "feedback"

    @property
    def input_partitions(self) -> list[tuple[str, int]]: ...

    def pause(self, partitions: list[tuple[str, int]]) -> None: ...

    def resume(self, partitions: list[tuple[str, int]]) -> None: ...

    def lag(self) -> dict[tuple[str, int], int]: ...


@runtime_checkable
class GroupSource(Source, Protocol):
    """A source shared by a group of workers: it tells a :class:`RebalanceListener` what this worker owns."""

    scale_out: bool

    def listen(self, listener: RebalanceListener) -> None: ...


@runtime_checkable
class DeadLetterSink(Protocol):
    """Where rejected events go, with the reason (Kafka: a dead-letter topic, reason in a header)."""

    def send(self, message: Message, reason: str) -> None: ...


@runtime_checkable
class FlushingDeadLetterSink(DeadLetterSink, Protocol):
    """A sink that buffers: :meth:`flush` returns once everything sent is delivered (before offsets are committed)."""

    def flush(self) -> None: ...


@runtime_checkable
class RebalanceListener(Protocol):
    """Told by a source shared by a group of workers which partition numbers this worker owns.

    A partition number ``i`` stands for partition ``i`` of both topics (they are co-partitioned).
    ``assigned`` returns where to resume each input partition (from its checkpoint); the source
    starts the others from the beginning. ``revoked`` is called before another worker may take
    the partitions over, so their state can be checkpointed first; ``lost``, when the group has
    already given them away.
    """

    def assigned(self, partitions: list[int]) -> Mapping[tuple[str, int], int]: ...

    def revoked(self, partitions: list[int]) -> None: ...

    def lost(self, partitions: list[int]) -> None:
        """Taken away without a revocation (this worker was evicted): drop them without saving."""
