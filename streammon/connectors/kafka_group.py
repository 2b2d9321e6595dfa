"""Consumer-group pieces for scale-out: the co-partitioning assignor and the rebalance bridge.

Partition ``i`` of the predictions topic and partition ``i`` of the feedback topic always go to the
same worker, because an id's prediction and feedback meet only there (both are keyed by id, and
the topics have equal partition counts). The assignor is sticky: a worker keeps the partition
numbers it owns unless balance requires moving them, so a rebalance reloads as little state as
it can.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.abstract import (
    AbstractPartitionAssignor,
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)

from .base import RebalanceListener

__all__ = ["CoPartitionAssignor", "assign_partition_numbers"]

log = logging.getLogger("streammon")


def assign_partition_numbers(members: Sequence[str], count: int,
                             owned: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    """Spread partition numbers ``0..count-1`` over ``members`` evenly, keeping what each owned.

    Each member gets ``count // len(members)`` numbers, the first ``count % len(members)`` (sorted)
    one more; a member keeps its previously owned numbers up to its share.
    """
    members = sorted(members)
    if not members:
        return {}
    base, extra = divmod(count, len(members))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(members)}
    result: dict[str, list[int]] = {m: [] for m in members}
    taken: set[int] = set()
    for m in members:
        for p in sorted(set(owned.get(m, ()))):
            if 0 <= p < count and p not in taken and len(result[m]) < quota[m]:
                result[m].append(p)
                taken.add(p)
    free = iter(p for p in range(count) if p not in taken)
    for m in members:
        while len(result[m]) < quota[m]:
            result[m].append(next(free))
        result[m].sort()
    return result


class CoPartitionAssignor(AbstractPartitionAssignor):
    """Assigns partition ``i`` of every subscribed topic to the same member, stickily.

    Each member reports the partition numbers it owns in its subscription's user data, so the
    group leader can keep them in place. Topics with unequal partition counts get no assignment
    (the workers refuse them at start with the fix; see ``check_co_partitioned``).
    """

    name = "streammon-copartition"
    version = 0

    def __init__(self) -> None:
        self._owned: list[int] = []

    def metadata(self, topics: Any) -> ConsumerProtocolSubscription:
        return ConsumerProtocolSubscription(self.version, sorted(topics), json.dumps(self._owned).encode())

    def assign(self, cluster: Any, members: list[Any]) -> dict[str, ConsumerProtocolAssignment]:
        topics = sorted({t for m in members for t in m.metadata.topics})
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        owned: dict[str, list[int]] = defaultdict(list)
        for m in members:
            with contextlib.suppress(ValueError, TypeError):  # a member of another version: treat it as owning nothing
                owned[m.member_id] = [int(p) for p in json.loads(m.metadata.user_data or b"[]")]
        if len(set(counts.values())) > 1 or not topics:
            log.error("cannot co-partition topics with different partition counts %s; no partitions assigned", counts)
            numbers: dict[str, list[int]] = {m.member_id: [] for m in members}
        else:
            numbers = assign_partition_numbers([m.member_id for m in members], counts[topics[0]], owned)
        return {
            member_id: ConsumerProtocolAssignment(self.version, [(t, parts) for t in topics], b"")
            for member_id, parts in numbers.items()
        }

    def on_assignment(self, assignment: ConsumerProtocolAssignment, generation: int) -> None:
        self._owned = sorted({tp.partition for tp in assignment.partitions()})


class RebalanceBridge(ConsumerRebalanceListener):
    """Turns kafka-python's rebalance callbacks into partition numbers for the monitor, and seeks."""

    def __init__(self, consumer: Any, topics: Iterable[str], listener: RebalanceListener, source: Any = None) -> None:
        self._consumer = consumer
        self._topics = list(topics)
        self._listener = listener
        self._source = source  # told when a callback runs: kafka-python forbids blocking calls then

    # kafka-python logs a listener's exception to its own logger (silent by default) and goes on
    # with the new assignment, so each failure is logged here, with its traceback, before it rises.
    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in revoked})
        if numbers:
            with _logged("revoking", numbers, self._source):
                self._listener.revoked(numbers)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        # Evicted from the group: another worker may already own these, so their state is dropped,
        # not saved over the new owner's checkpoints.
        numbers = sorted({tp.partition for tp in lost})
        if numbers:
            lose = getattr(self._listener, "lost", None)
            with _logged("dropping lost", numbers, self._source):
                (lose or self._listener.revoked)(numbers)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        numbers = sorted({tp.partition for tp in assigned})
        with _logged("taking over", numbers, self._source):
            offsets = self._listener.assigned(numbers) if numbers else {}
            for tp in assigned:
                position = offsets.get((tp.topic, tp.partition))
                if position is None:
                    self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, position)


@contextlib.contextmanager
def _logged(what: str, numbers: list[int], source: Any) -> Iterator[None]:
    if source is not None:
        source.in_rebalance = True
    try:
        yield
    except Exception:
        log.exception("%s partitions %s failed", what, numbers)
        raise
    finally:
        if source is not None:
            source.in_rebalance = False
