"""Kafka source and dead-letter sink on kafka-python.

The source reads the predictions and feedback topics. It never lets Kafka decide where to resume:
the monitor's checkpoint holds the offsets together with the state they produced, and ``seek``
puts the consumer there at start. Offsets are also committed to the consumer group after each
checkpoint, for lag dashboards and tools.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, cast

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from ..errors import RegistrationError, SourceError
from .base import Kind, Message, RebalanceListener
from .kafka_group import CoPartitionAssignor, RebalanceBridge

__all__ = ["KafkaSource", "KafkaDeadLetter"]

log = logging.getLogger("streammon")


def check_co_partitioned(counts: Mapping[str, set[int]]) -> None:
    """Refuse topics whose partition counts differ: ids are joined only within a partition number."""
    sizes = {t: len(p) for t, p in counts.items()}
    if len(set(sizes.values())) != 1:
        raise SourceError(
            f"the topics have different partition counts {sizes}: predictions and feedback must be co-partitioned "
            f"(same count, both keyed by prediction id) so each id meets its feedback in one worker; "
            f"recreate the smaller topic with {max(sizes.values())} partitions"
        )


# Under Apache Kafka's default broker and topic limit (message.max.bytes, 1,048,588) and both
# clients' defaults (max_request_size 1 MiB, librdkafka's message.max.bytes 1,000,000).
DEAD_LETTER_MAX_BYTES = 1_000_000
_MIN_RECORD_BYTES = 4096  # room for the headers and some of the value
# Record and batch framing counted generously (a batch header is 61 bytes, each field a few varint bytes).
_FRAMING_BYTES = 512
_REASON_BYTES = 1024  # a reason is a line of text; a longer one is cut too when the record must shrink


def dead_letter_limit(max_bytes: int | None, producer_limit: int) -> int:
    """The record size a dead-letter sink keeps under: ``max_bytes`` (default 1,000,000), never above the producer's."""
    limit = DEAD_LETTER_MAX_BYTES if max_bytes is None else max_bytes
    if not isinstance(limit, int) or limit < _MIN_RECORD_BYTES:
        raise RegistrationError(f"max_record_bytes={max_bytes!r}: give at least {_MIN_RECORD_BYTES} bytes (the default, "
                                f"{DEAD_LETTER_MAX_BYTES:,}, fits Kafka's default limits)")
    return min(limit, producer_limit)


def dead_letter_record(message: Message, reason: str, *, max_bytes: int = DEAD_LETTER_MAX_BYTES
                       ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of the dead-letter copy of ``message``: same bytes, reason and origin in headers.

    A record that would exceed ``max_bytes`` (a payload rejected for its size, typically) is cut to
    fit: the value first, the key only if it alone takes more than half the room. Header
    ``streammon.truncated`` then names what was cut (``value``, or a list such as ``key,value``) and
    ``streammon.original_size`` (and ``streammon.original_key_size``) give the original lengths in bytes.
    """
    value = message.value
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    elif value is not None and not isinstance(value, (bytes, bytearray)):  # None: a tombstone stays one
        value = json.dumps(value, default=str).encode()
    value = None if value is None else bytes(value)
    key = message.key.encode("utf-8", "surrogateescape") if isinstance(message.key, str) else message.key
    headers = [("streammon.reason", reason.encode()),
               ("streammon.origin", f"{message.topic}/{message.partition}/{message.offset}".encode())]

    def size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
        return _FRAMING_BYTES + len(key or b"") + len(value or b"") + sum(len(h) + len(v) + 10 for h, v in headers)

    if size(key, value, headers) <= max_bytes:
        return key, value, headers
    cut, extra = [], []
    if len(headers[0][1]) > _REASON_BYTES:
        cut.append("reason")
        headers[0] = ("streammon.reason", headers[0][1][:_REASON_BYTES])
    room = max_bytes - size(None, None, headers + [("streammon.truncated", b"reason,key,value"),
                                                   ("streammon.original_size", b"0" * 20),
                                                   ("streammon.original_key_size", b"0" * 20)])
    if key is not None and len(key) > room // 2:
        cut.append("key")
        extra.append(("streammon.original_key_size", str(len(key)).encode()))
        key = key[:room // 2]
    if value is not None and len(key or b"") + len(value) > room:
        cut.append("value")
        extra.insert(0, ("streammon.original_size", str(len(value)).encode()))
        value = value[:room - len(key or b"")]
    return key, value, headers + [("streammon.truncated", ",".join(cut).encode())] + extra


class CachedHealth:
    """Source health read in the polling thread (consumers are not thread-safe) and served to scrapes."""

    _connected: bool  # set by the source at start and after each poll
    _lag: dict[tuple[str, int], int]

    @property
    def connected(self) -> bool:
        """True while the client holds a connection to a broker."""
        return self._connected

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages behind the latest offset the broker reported, per partition (from fetch responses)."""
        return dict(self._lag)


class KafkaSource(CachedHealth):
    """Consumes both topics; partition ``i`` of predictions and of feedback go to the same worker.

    By default one worker is assigned every partition. With ``scale_out=True`` the source joins
    the consumer group ``group_id`` and shares the partitions with the other workers of the group,
    partition ``i`` of both topics always together (:class:`CoPartitionAssignor`); the monitor
    then keeps state per partition (see docs/kafka.md). Topics whose partition counts differ are
    refused in both modes, because ids are joined only within a partition number.

    Use::

        source = KafkaSource("localhost:9092", group_id="fraud-monitor")
        monitor.run(source, state_dir="state/")
    """

    def __init__(self, bootstrap_servers: str | list[str], *, predictions_topic: str = "predictions",
                 feedback_topic: str = "feedback", group_id: str = "streammon", metadata_timeout: float = 30.0,
                 scale_out: bool = False, **kafka_settings: Any) -> None:
        self.topics: dict[str, Kind] = {predictions_topic: "prediction", feedback_topic: "feedback"}
        self.scale_out = scale_out
        self.in_rebalance = False  # set by the rebalance bridge while a group callback runs
        settings = dict(
            bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20,
            # A fetch waits at most 100 ms for data (kafka-python's default is 500): fresher metrics
            # on a quiet topic, for about ten empty fetches a second when idle.
            fetch_max_wait_ms=100,
        )
        if scale_out:
            settings["partition_assignment_strategy"] = [CoPartitionAssignor()]
        settings.update(kafka_settings)
        try:
            self._consumer = KafkaConsumer(**settings)
        except KafkaError as exc:
            raise SourceError(f"cannot connect to Kafka at {bootstrap_servers}: {exc}") from exc
        self._partitions = self._wait_for_partitions(metadata_timeout)
        if not scale_out:
            self._consumer.assign(self._partitions)
        self._connected = True
        self._lag: dict[tuple[str, int], int] = {}

    def _wait_for_partitions(self, timeout: float) -> list[TopicPartition]:
        deadline = time.monotonic() + timeout
        counts: dict[str, set[int] | None] = {}
        while True:
            counts = {topic: self._consumer.partitions_for_topic(topic) for topic in self.topics}
            if all(counts.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        missing = [t for t, p in counts.items() if not p]
        if missing:
            raise SourceError(f"topic(s) {', '.join(missing)} not found on the broker after {timeout:.0f} s; create them "
                              f"with the same number of partitions (keyed by prediction id)")
        found = cast("dict[str, set[int]]", counts)  # none missing: every topic has its partitions
        check_co_partitioned(found)
        return [TopicPartition(t, p) for t in self.topics for p in sorted(found[t])]

    # -- the Source protocol --------------------------------------------------------------------
    def poll(self, max_records: int, timeout: float) -> list[Message]:
        _unpark_resumed(self._consumer)
        try:
            records = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except KafkaError as exc:  # the client retries connections itself; a poll error is logged and retried
            log.warning("Kafka poll failed (%s); retrying", exc)
            return []
        self._refresh_health()
        batch = []
        for tp, rows in records.items():
            kind = self.topics[tp.topic]
            for r in rows:
                batch.append(Message(r.value, kind=kind, key=r.key, topic=tp.topic, partition=tp.partition, offset=r.offset))
        return batch

    def listen(self, listener: RebalanceListener) -> None:
        """Join the consumer group (``scale_out=True`` only); ``listener`` hears of every assignment change."""
        if not self.scale_out:
            raise SourceError("listen() needs KafkaSource(..., scale_out=True): without it this worker reads every partition")
        self._consumer.subscribe(list(self.topics), listener=RebalanceBridge(self._consumer, self.topics, listener, self))

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Resume at ``{(topic, partition): next offset}`` (from a checkpoint); others start from the beginning."""
        for tp in self._partitions:
            position = offsets.get((tp.topic, tp.partition))
            if position is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, position)

    @property
    def input_partitions(self) -> list[tuple[str, int]]:
        """Every (topic, partition) this worker reads (scaled out: those the group assigned it)."""
        tps = self._consumer.assignment() if self.scale_out else self._partitions
        return sorted((tp.topic, tp.partition) for tp in tps)

    def pause(self, partitions: list[tuple[str, int]]) -> None:
        """Stop fetching ``partitions`` (the monitor holds enough of them) until :meth:`resume`."""
        self._consumer.pause(*self._owned(partitions))

    def resume(self, partitions: list[tuple[str, int]]) -> None:
        self._consumer.resume(*self._owned(partitions))

    def _owned(self, partitions: list[tuple[str, int]]) -> list[TopicPartition]:
        # A partition revoked since the caller last looked is left out: kafka-python refuses it.
        owned = self._consumer.assignment()
        return [tp for tp in (TopicPartition(t, p) for t, p in partitions) if tp in owned]

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        from kafka.structs import OffsetAndMetadata
        records = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            if self.in_rebalance:  # inside a rebalance callback kafka-python refuses to block
                self._consumer.commit_async(records)
            else:
                self._consumer.commit(records)
        except Exception as exc:  # noqa: BLE001 - the checkpoint holds the offsets; the group commit is informational
            log.warning("committing offsets to the consumer group failed (%s); state is safe in the checkpoint", exc)

    @property
    def exhausted(self) -> bool:
        return False  # a topic never ends

    def close(self) -> None:
        self._consumer.close()

    # -- health ---------------------------------------------------------------------------------
    # The consumer is not thread-safe: health is read in the polling thread and cached for scrapes.
    def _refresh_health(self) -> None:
        try:
            # kafka-python's own gauge of open broker connections (bootstrap_connected() only covers the
            # bootstrap socket, which the client closes once it knows the cluster).
            count = self._consumer.metrics().get("consumer-metrics", {}).get("connection-count", 0)
            self._connected = count > 0
            lag = {}
            for tp in self._consumer.assignment() if self.scale_out else self._partitions:
                high = self._consumer.highwater(tp)
                if high is not None:
                    lag[(tp.topic, tp.partition)] = max(0, high - self._consumer.position(tp))
            self._lag = lag
        except Exception:  # noqa: BLE001 - a health probe must not raise
            self._connected = False


def _unpark_resumed(consumer: KafkaConsumer) -> None:
    # kafka-python 3.0.12 parks the parsed records of a partition paused in the middle of a batch and
    # gives them back only when its in-line slot is None, but a drained batch stays in that slot (falsy,
    # not None). Until then it neither returns the parked records nor fetches that partition again: a
    # resumed partition stalled for good (tests/test_kafka_pause.py). A drained slot holds nothing, so
    # emptying it lets the fetcher restore one parked partition per poll, as it means to.
    fetcher: Any = getattr(consumer, "_fetcher", None)
    if getattr(fetcher, "_paused_partition_records", None):
        slot = fetcher._next_partition_records
        if slot is not None and not slot:
            fetcher._next_partition_records = None


class KafkaDeadLetter:
    """Sends rejected events to a topic: same key and value, the reason and origin in headers.

    Delivery is at least once: after a crash, events since the last checkpoint are read and may be
    rejected again. Consumers can drop repeats by the ``streammon.origin`` header (topic/partition/offset).

    A record larger than ``max_record_bytes`` (default 1,000,000, and never more than the
    producer's ``max_request_size``) is sent truncated, with headers ``streammon.truncated`` and
    ``streammon.original_size`` (see :func:`dead_letter_record`). ``delivered`` and ``failed``
    count the broker's answers; a send that fails is logged, and raised when it fails at once.
    """

    def __init__(self, bootstrap_servers: str | list[str], *, topic: str = "streammon-dead-letter",
                 max_record_bytes: int | None = None, **kafka_settings: Any) -> None:
        self.topic = topic
        settings = dict(bootstrap_servers=bootstrap_servers, compression_type="gzip", linger_ms=20)
        settings.update(kafka_settings)
        self.max_record_bytes = dead_letter_limit(
            max_record_bytes, int(settings.get("max_request_size", KafkaProducer.DEFAULT_CONFIG["max_request_size"])))
        try:
            self._producer = KafkaProducer(**settings)
        except KafkaError as exc:
            raise SourceError(f"cannot connect the dead-letter producer to {bootstrap_servers}: {exc}") from exc
        self.delivered = 0
        self.failed = 0
        self._count_lock = threading.Lock()  # delivery callbacks run in the producer's I/O thread

    def send(self, message: Message, reason: str) -> None:
        key, value, headers = dead_letter_record(message, reason, max_bytes=self.max_record_bytes)
        origin = headers[1][1].decode()
        try:
            future = self._producer.send(self.topic, value=value, key=key, headers=headers)
        except KafkaError as exc:  # buffer full past max_block_ms, no metadata, closed: the caller counts it unsent
            self._count(failed=True)
            raise SourceError(f"cannot send the rejected event {origin} to the dead-letter topic {self.topic!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
        future.add_callback(lambda _metadata: self._count(failed=False))
        future.add_errback(lambda exc: self._count(failed=True, origin=origin, error=exc))

    def _count(self, *, failed: bool, origin: str | None = None, error: BaseException | None = None) -> None:
        with self._count_lock:
            if not failed:
                self.delivered += 1
                return
            self.failed += 1
            n = self.failed
        if error is not None and (n <= 10 or n & (n - 1) == 0):  # the first ten, then at powers of two
            log.error("the rejected event %s was not delivered to the dead-letter topic %s: %s (%d failed so far)",
                      origin, self.topic, error, n)  # kafka-python's errors name their type themselves

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.close()
