"""Event-time aligned consumption: the two topics are processed in one order, whatever Kafka's timing.

Kafka orders records within a partition only. How a consumer interleaves partitions (the two topics,
and the partitions of each) depends on fetch sizes, poll timing, backlogs, restarts and rebalances;
a worker reading a backlog would otherwise see one topic hours ahead of the other, move stream time
with it and expire early feedback before its prediction is read.

The aligner buffers what the source delivers and releases it in one total order, a function of the
partitions' contents alone: by the largest event time seen in the record's partition up to and
including the record (its *mark*; non-decreasing along a partition, so offset order is kept), then
predictions before feedback, then partition, then offset. It releases a record only once no record
still to come can sort before it: every partition of the group either has later records buffered,
or is empty and known to be at its end for ``max_idle`` seconds (or has been silent for
``FETCH_TIMEOUT`` although the broker reported records). Marks of processed records are saved with
the state, so a restart continues the same order. A partition number of both topics is one group
in a scaled-out worker (its own stream time); a single worker is one group of every partition.
See docs/kafka.md, "Input order".
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .connectors.base import AlignableSource
from .errors import SourceError
from .pipeline import Decoded

__all__ = ["EventTimeAligner", "can_align"]

log = logging.getLogger("streammon")

TopicPartition = tuple[str, int]
FETCH_TIMEOUT = 5.0  # seconds an empty partition with records on the broker is waited for
BUFFER_LIMIT = 8192  # records buffered per partition before it is paused
_NEG_INF = float("-inf")


def can_align(source: Any) -> bool:
    """True for sources that can be read aligned: they name their topics, pause partitions and report their lag."""
    return isinstance(source, AlignableSource) and bool(source.topics)  # a prefetcher's child may not be


@dataclass(eq=False)
class _Queue:
    tp: TopicPartition
    group: Hashable
    rank: int  # predictions 0, feedback 1: the tie-break after the mark
    mark: float  # of the last record added (buffered or released)
    released_mark: float  # of the last record released: what a checkpoint keeps
    keys: list[float] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    items: list[Decoded] = field(default_factory=list)
    start: int = 0  # records before it are released
    next_offset: int = -1
    paused: bool = False
    empty_since: float | None = None
    caught_up_since: float | None = None
    warned: bool = False

    def __len__(self) -> int:
        return len(self.keys) - self.start

    def order(self) -> tuple[int, int]:
        return self.rank, self.tp[1]

    def compact(self) -> None:
        if self.start and self.start * 2 >= len(self.keys):
            del self.keys[:self.start], self.offsets[:self.start], self.items[:self.start]
            self.start = 0


class EventTimeAligner:
    """Buffers decoded messages per input partition and releases them per group in event-time order.

    ``topics`` maps each topic to its kind. ``max_idle``: seconds an empty partition at the end of
    its log is waited for before the others go on without it (its later records are then processed
    on arrival). ``clock`` is monotonic seconds (tests drive it).
    """

    def __init__(self, topics: Mapping[str, str], *, max_idle: float = 0.5, buffer_limit: int = BUFFER_LIMIT,
                 fetch_timeout: float = FETCH_TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self.rank = {topic: 0 if kind == "prediction" else 1 for topic, kind in topics.items()}
        self.max_idle, self.buffer_limit, self.fetch_timeout, self.clock = max_idle, buffer_limit, fetch_timeout, clock
        self._queues: dict[TopicPartition, _Queue] = {}
        self._groups: dict[Hashable, list[_Queue]] = {}

    # -- which partitions -----------------------------------------------------------------------
    def track(self, tps: Iterable[TopicPartition], group: Hashable, marks: Mapping[TopicPartition, float]) -> None:
        """Read ``tps`` as one group from now on, continuing from the ``marks`` saved with its state."""
        for tp in tps:
            self.drop([tp])
            mark = marks.get(tp, _NEG_INF)
            # Marked paused so that the first flow() resumes it explicitly: the consumer may still hold
            # a pause from before a rebalance or a seek.
            queue = _Queue(tp, group, self.rank[tp[0]], mark, mark, paused=True)
            self._queues[tp] = queue
            self._groups.setdefault(group, []).append(queue)

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        """Forget ``tps`` and what is buffered of them (revoked, or sought back to their processed offsets)."""
        for tp in tps:
            queue = self._queues.pop(tp, None)
            if queue is not None:
                members = self._groups[queue.group]
                members.remove(queue)
                if not members:
                    del self._groups[queue.group]

    def drop_group(self, group: Hashable) -> None:
        self.drop([q.tp for q in self._groups.get(group, [])])

    @property
    def buffered(self) -> int:
        return sum(len(q) for q in self._queues.values())

    # -- flow -----------------------------------------------------------------------------------
    def add(self, decoded: Sequence[Decoded]) -> None:
        """Buffer a polled batch (each partition's messages in offset order)."""
        queues = self._queues
        queue: _Queue | None = None
        for item in decoded:
            msg = item.message
            if queue is None or queue.tp[0] != msg.topic or queue.tp[1] != msg.partition:
                queue = queues.get((msg.topic, msg.partition))
                if queue is None:
                    raise SourceError(f"messages of {msg.topic} partition {msg.partition}, which this worker does not "
                                      f"read: the group's assignment and this worker's state disagree; restart the worker")
            event = item.event
            if event is not None and event.ts > queue.mark:  # a rejected message takes its place, not a time
                queue.mark = event.ts
            queue.keys.append(queue.mark)
            queue.offsets.append(msg.offset)
            queue.items.append(item)
            queue.next_offset = msg.offset + 1
            queue.empty_since = queue.caught_up_since = None

    def release(self, lag: Mapping[TopicPartition, int], *, everything: bool = False) -> dict[Hashable, tuple[list[Decoded], dict[TopicPartition, float]]]:
        """Per group, the records no later record can precede, in order, and the marks they leave.

        ``lag``: records on the broker past what was delivered, per partition, where known.
        ``everything``: a finite source has ended, so nothing is waited for.
        """
        now = self.clock()
        out = {}
        for group, queues in self._groups.items():
            bound = None if everything else self._bound(queues, lag, now)
            released, marks = self._take(queues, bound)
            if released:
                out[group] = (released, marks)
        return out

    def _bound(self, queues: list[_Queue], lag: Mapping[TopicPartition, int], now: float) -> tuple | None:
        # The smallest (mark, rank, partition, offset) a record still to come may have; None: no limit.
        bound = None
        for q in queues:
            if not len(q):
                if q.empty_since is None:
                    q.empty_since = now
                if lag.get(q.tp) == 0:
                    if q.caught_up_since is None:
                        q.caught_up_since = now
                    if now - q.caught_up_since >= self.max_idle:
                        continue  # at its end for max_idle: the others go on
                else:
                    q.caught_up_since = None
                    if now - q.empty_since >= self.fetch_timeout:
                        if not q.warned:
                            q.warned = True
                            log.warning("%s partition %d has records on the broker (lag %s) but none came for %.0f s; "
                                        "the other partitions go on without it, so its late records are processed "
                                        "out of event-time order", q.tp[0], q.tp[1], lag.get(q.tp, "unknown"), self.fetch_timeout)
                        continue
            candidate = (q.mark, q.rank, q.tp[1], q.next_offset)
            if bound is None or candidate < bound:
                bound = candidate
        return bound

    def _take(self, queues: list[_Queue], bound: tuple | None) -> tuple[list[Decoded], dict[TopicPartition, float]]:
        parts: list[tuple[_Queue, int, int]] = []
        for q in queues:
            if not len(q):
                continue
            if bound is None or q.order() == bound[1:3]:
                cut = len(q.keys)  # the queue that sets the bound: all of it sorts before its next record
            elif q.order() < bound[1:3]:
                cut = bisect.bisect_right(q.keys, bound[0], q.start)
            else:
                cut = bisect.bisect_left(q.keys, bound[0], q.start)
            if cut > q.start:
                parts.append((q, q.start, cut))
        marks: dict[TopicPartition, float] = {}
        if not parts:
            return [], marks
        if len(parts) == 1:
            q, lo, hi = parts[0]
            released = q.items[lo:hi]
        else:
            keys = np.concatenate([np.asarray(q.keys[lo:hi], dtype=np.float64) for q, lo, hi in parts])
            ranks = np.concatenate([np.full(hi - lo, q.rank * (1 << 32) + q.tp[1], dtype=np.int64) for q, lo, hi in parts])
            offsets = np.concatenate([np.asarray(q.offsets[lo:hi], dtype=np.int64) for q, lo, hi in parts])
            items = [item for q, lo, hi in parts for item in q.items[lo:hi]]
            released = [items[i] for i in np.lexsort((offsets, ranks, keys)).tolist()]
        for q, _lo, hi in parts:
            q.start = hi
            q.released_mark = marks[q.tp] = q.keys[hi - 1]
            q.compact()
        return released, marks

    def flow(self, source: Any) -> None:
        """Pause partitions buffered past the limit, resume those drained below half of it."""
        pause = [q.tp for q in self._queues.values() if not q.paused and len(q) >= self.buffer_limit]
        resume = [q.tp for q in self._queues.values() if q.paused and len(q) < self.buffer_limit // 2]
        if pause:
            source.pause(pause)
            for tp in pause:
                self._queues[tp].paused = True
        if resume:
            source.resume(resume)
            for tp in resume:
                self._queues[tp].paused = False

    def wait_hint(self, default: float) -> float:
        """How long a poll may block: not past the moment an idle partition stops being waited for."""
        due = [q.caught_up_since + self.max_idle - self.clock() for q in self._queues.values()
               if not len(q) and q.caught_up_since is not None]
        return max(0.0, min([default, *due]))
