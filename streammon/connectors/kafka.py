"""Kafka source and dead-letter sink on kafka-python.

The source reads the predictions and feedback topics. It never lets Kafka decide where to resume:
the monitor's checkpoint holds the offsets together with the state they produced, and ``seek``
puts the consumer there at start. Offsets are also committed to the consumer group after each
checkpoint, for lag dashboards and tools.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Mapping

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from ..errors import SourceError
from .base import Message, RebalanceListener
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


def dead_letter_record(message: Message, reason: str) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of the dead-letter copy of ``message``: same bytes, reason and origin in headers."""
    value = message.value
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    elif value is not None and not isinstance(value, (bytes, bytearray)):  # None: a tombstone stays one
        value = json.dumps(value, default=str).encode()
    key = message.key.encode("utf-8", "surrogateescape") if isinstance(message.key, str) else message.key
    headers = [("streammon.reason", reason.encode()),
               ("streammon.origin", f"{message.topic}/{message.partition}/{message.offset}".encode())]
    return key, None if value is None else bytes(value), headers


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
        self.topics = {predictions_topic: "prediction", feedback_topic: "feedback"}
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
        check_co_partitioned(counts)
        return [TopicPartition(t, p) for t in self.topics for p in sorted(counts[t])]

    # -- the Source protocol --------------------------------------------------------------------
    def poll(self, max_records: int, timeout: float) -> list[Message]:
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


class KafkaDeadLetter:
    """Sends rejected events to a topic: same key and value, the reason and origin in headers.

    Delivery is at least once: after a crash, events since the last checkpoint are read and may be
    rejected again. Consumers can drop repeats by the ``streammon.origin`` header (topic/partition/offset).
    """

    def __init__(self, bootstrap_servers: str | list[str], *, topic: str = "streammon-dead-letter", **kafka_settings: Any) -> None:
        self.topic = topic
        settings = dict(bootstrap_servers=bootstrap_servers, compression_type="gzip", linger_ms=20)
        settings.update(kafka_settings)
        try:
            self._producer = KafkaProducer(**settings)
        except KafkaError as exc:
            raise SourceError(f"cannot connect the dead-letter producer to {bootstrap_servers}: {exc}") from exc

    def send(self, message: Message, reason: str) -> None:
        key, value, headers = dead_letter_record(message, reason)
        self._producer.send(self.topic, value=value, key=key, headers=headers)

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.close()
