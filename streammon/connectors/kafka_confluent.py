"""Kafka source and dead-letter sink on confluent-kafka (librdkafka): the fast client, an extra.

The same contract as :mod:`streammon.connectors.kafka`, on a client that consumes several times
faster (design section 10): every partition of both topics is assigned (no group rebalancing),
offsets are never committed automatically, ``seek`` puts the consumer where the checkpoint says,
and ``commit`` records the checkpointed offsets in the consumer group for lag tools.
``pip install 'streammon[confluent]'`` brings the client; kafka-python stays the default.

librdkafka serves its callbacks (statistics, errors, commit results) inside ``consume``, so the
health the exporter reads (``connected``, ``lag()``) is computed in the polling thread and cached:
the consumer is never touched from the scrape thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import SourceError
from .base import Kind, Message, RebalanceListener
from .kafka import CachedHealth, check_co_partitioned, dead_letter_limit, dead_letter_record

__all__ = ["ConfluentKafkaSource", "ConfluentKafkaDeadLetter"]

log = logging.getLogger("streammon")
_INSTALL = "pip install 'streammon[confluent]'"


def _confluent() -> Any:
    # Imported on first use: confluent-kafka is an optional extra, and kafka-python the default.
    try:
        import confluent_kafka
    except ImportError as exc:
        raise SourceError(f"the confluent-kafka client is not installed: {_INSTALL} "
                          f"(or use KafkaSource, on kafka-python)") from exc
    return confluent_kafka


def _servers(bootstrap_servers: str | list[str]) -> str:
    return bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)


def _describe(exc: BaseException) -> str:
    error: Any = exc.args[0] if exc.args else None  # confluent-kafka's KafkaError, or whatever another raiser put there
    return error.str() if hasattr(error, "str") else str(exc)


def _chain(ours: Callable[..., None], theirs: Callable[..., None] | None) -> Callable[..., None]:
    if theirs is None:
        return ours

    def both(*args: Any) -> None:
        ours(*args)
        theirs(*args)
    return both


class _Throttled:
    """Logs the first ten occurrences, then at powers of two: a dead broker repeats itself thousands of times."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, level: int, text: str, *args: Any) -> None:
        self.count += 1
        n = self.count
        if n <= 10 or n & (n - 1) == 0:
            log.log(level, text + " (#%d)", *args, n)


class ConfluentKafkaSource(CachedHealth):
    """:class:`~streammon.connectors.kafka.KafkaSource` on confluent-kafka: same topics, same checkpoints.

    ``**settings`` go to librdkafka's consumer configuration unchanged, with its dotted names:
    ``ConfluentKafkaSource("kafka:9093", **{"security.protocol": "SSL", "ssl.ca.location": "ca.pem"})``.

    >>> import time
    >>> import streammon as sm
    >>> from streammon import operators as ops
    >>> from streammon.connectors.broker import EmbeddedBroker
    >>> monitor = sm.Monitor("doc", windows=[sm.Cumulative()])
    >>> _ = monitor.track(ops.Accuracy())
    >>> with EmbeddedBroker() as broker:
    ...     with sm.EventProducer(broker.bootstrap_servers) as producer:
    ...         producer.log_prediction("a", 1, ts=1.0)
    ...         producer.log_feedback("a", 1, ts=2.0)
    ...     source = ConfluentKafkaSource(broker.bootstrap_servers, group_id="doc")
    ...     joined = lambda: any(s.name == "streammon_joined_total" and s.value == 1 for s in monitor.values())
    ...     deadline = time.monotonic() + 20
    ...     monitor.run(source, until=lambda: joined() or time.monotonic() > deadline)
    >>> monitor.value("accuracy")
    1.0
    """

    def __init__(self, bootstrap_servers: str | list[str], *, predictions_topic: str = "predictions",
                 feedback_topic: str = "feedback", group_id: str = "streammon", metadata_timeout: float = 30.0,
                 scale_out: bool = False, **settings: Any) -> None:
        ck = self._ck = _confluent()
        self.topics: dict[str, Kind] = {predictions_topic: "prediction", feedback_topic: "feedback"}
        self.scale_out = scale_out
        self._listener: RebalanceListener | None = None
        self.bootstrap_servers = _servers(bootstrap_servers)
        self._errors, self._message_errors = _Throttled(), _Throttled()
        # Set before the consumer exists: librdkafka may call back as soon as it does.
        self._start: dict[tuple[str, int], int] = {}  # where each partition starts, when known
        self._low_if_unknown = False  # True: a partition with no known start begins at its low watermark
        self._connected = True
        self._lag: dict[tuple[str, int], int] = {}
        self._closed = False
        config = {
            "bootstrap.servers": self.bootstrap_servers, "group.id": group_id, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,  # as KafkaSource: fresher metrics on a quiet topic
            "statistics.interval.ms": 1000,  # broker states for `connected`
            "logger": logging.getLogger("streammon.librdkafka"),
        }
        if scale_out:
            # Range gives each member the same partition numbers of every topic it subscribes to: with
            # equal partition counts, partition i of both topics goes to one worker (co-partitioning).
            config["partition.assignment.strategy"] = "range"
        config.update(settings)
        config["stats_cb"] = _chain(self._on_stats, settings.get("stats_cb"))
        config["error_cb"] = _chain(self._on_error, settings.get("error_cb"))
        config["on_commit"] = _chain(self._on_commit, settings.get("on_commit"))
        try:
            self._consumer = ck.Consumer(config)
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise SourceError(f"cannot create a confluent-kafka consumer for {self.bootstrap_servers}: "
                              f"{_describe(exc)}") from exc
        try:
            self._partitions = self._wait_for_partitions(metadata_timeout)
            if not scale_out:
                # No offsets yet: librdkafka starts from the group's committed offsets, else per auto.offset.reset.
                self._consumer.assign(self._partitions)
        except BaseException:
            self._consumer.close()
            raise
        if scale_out:
            self._partitions = []  # until the group assigns some
        else:
            self._start = self._committed(min(metadata_timeout, 10.0))
        self._low_if_unknown = str(config["auto.offset.reset"]).lower() in ("earliest", "smallest", "beginning")

    def _wait_for_partitions(self, timeout: float) -> list[Any]:
        ck = self._ck
        deadline = time.monotonic() + timeout
        counts: dict[str, set[int]] = {}
        reached, failure = False, None
        while True:
            for topic in self.topics:
                try:
                    found = self._consumer.list_topics(topic, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                except ck.KafkaException as exc:  # no broker answered in time
                    failure, counts[topic] = exc, set()
                    continue
                reached = True
                meta = found.topics.get(topic)
                counts[topic] = set(meta.partitions) if meta is not None and meta.error is None else set()
            if all(counts.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        missing = [t for t, p in counts.items() if not p]
        if missing and not reached:
            assert failure is not None  # nothing reached: every list_topics call raised
            raise SourceError(f"cannot reach Kafka at {self.bootstrap_servers} within {timeout:.0f} s: "
                              f"{_describe(failure)}") from failure
        if missing:
            raise SourceError(f"topic(s) {', '.join(missing)} not found on the broker after {timeout:.0f} s; "
                              f"create them with the same number of partitions (keyed by prediction id)")
        check_co_partitioned(counts)
        return [ck.TopicPartition(t, p) for t in self.topics for p in sorted(counts[t])]

    def _committed(self, timeout: float) -> dict[tuple[str, int], int]:
        # Where each partition starts without seek(), for lag until its first message is read.
        try:
            found = self._consumer.committed(self._partitions, timeout=timeout)
        except self._ck.KafkaException as exc:
            log.info("no committed offsets from the consumer group (%s); lag shows once messages are read",
                     _describe(exc))
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    # -- the Source protocol --------------------------------------------------------------------
    def poll(self, max_records: int, timeout: float) -> list[Message]:
        try:
            records = self._consumer.consume(num_messages=max_records, timeout=timeout)
        except self._ck.KafkaException as exc:  # librdkafka retries connections itself; log and poll again
            self._errors(logging.WARNING, "Kafka consume failed (%s); retrying", _describe(exc))
            return []
        kinds = self.topics
        batch: list[Message] = []
        append = batch.append
        for r in records:
            error = r.error()
            if error is None:
                topic = r.topic()
                append(Message(r.value(), kinds[topic], r.key(), topic, r.partition(), r.offset()))
            elif error.code() != self._ck.KafkaError._PARTITION_EOF:  # end of a partition is not an error
                self._message_errors(logging.WARNING, "Kafka reported an error on %s [%s]: %s; reading on",
                                     r.topic(), r.partition(), error.str())
        if batch:
            self._connected = True  # messages prove it, even with librdkafka's statistics turned off
        self._refresh_lag()
        return batch

    def listen(self, listener: RebalanceListener) -> None:
        """Join the consumer group (``scale_out=True`` only); ``listener`` hears of every assignment change."""
        if not self.scale_out:
            raise SourceError("listen() needs ConfluentKafkaSource(..., scale_out=True): without it this worker reads every partition")
        self._listener = listener
        self._consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    # Called by librdkafka inside consume(), like kafka-python's listener inside poll().
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        ck = self._ck
        numbers = sorted({tp.partition for tp in partitions})
        offsets = self._listener.assigned(numbers) if numbers and self._listener else {}
        placed = [ck.TopicPartition(tp.topic, tp.partition, offsets.get((tp.topic, tp.partition), ck.OFFSET_BEGINNING))
                  for tp in partitions]
        consumer.assign(placed)
        self._partitions = [ck.TopicPartition(tp.topic, tp.partition) for tp in placed]
        self._start = {(tp.topic, tp.partition): tp.offset for tp in placed if tp.offset >= 0}
        self._low_if_unknown, self._lag = True, {}

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        if numbers and self._listener is not None:
            self._listener.revoked(numbers)
        self._partitions, self._lag = [], {}

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        lose = getattr(self._listener, "lost", None)
        if numbers and lose is not None:
            lose(numbers)
        self._partitions, self._lag = [], {}

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Resume at ``{(topic, partition): next offset}`` (from a checkpoint); others start from the beginning."""
        ck = self._ck
        # assign() with offsets, rather than seek(): librdkafka's seek needs a partition already fetching.
        placed = []
        for tp in self._partitions:
            position = offsets.get((tp.topic, tp.partition))
            start = ck.OFFSET_BEGINNING if position is None else position
            placed.append(ck.TopicPartition(tp.topic, tp.partition, start))
        try:
            self._consumer.assign(placed)
        except ck.KafkaException as exc:
            raise SourceError(f"cannot seek the Kafka consumer to the checkpoint's offsets: {_describe(exc)}") from exc
        self._start = {(tp.topic, tp.partition): offsets[(tp.topic, tp.partition)]
                       for tp in self._partitions if (tp.topic, tp.partition) in offsets}
        self._low_if_unknown = True
        self._lag = {}

    @property
    def input_partitions(self) -> list[tuple[str, int]]:
        """Every (topic, partition) this worker reads (scaled out: those the group assigned it)."""
        return sorted((tp.topic, tp.partition) for tp in self._partitions)

    def pause(self, partitions: list[tuple[str, int]]) -> None:
        """Stop fetching ``partitions`` (the monitor holds enough of them) until :meth:`resume`."""
        self._flow(self._consumer.pause, partitions)

    def resume(self, partitions: list[tuple[str, int]]) -> None:
        self._flow(self._consumer.resume, partitions)

    def _flow(self, call: Callable[[list[Any]], None], partitions: list[tuple[str, int]]) -> None:
        # A partition revoked since the caller last looked is left out: librdkafka would refuse the call.
        owned = {(tp.topic, tp.partition) for tp in self._partitions}
        chosen = [self._ck.TopicPartition(t, p) for t, p in partitions if (t, p) in owned]
        if chosen:
            try:
                call(chosen)
            except self._ck.KafkaException as exc:
                raise SourceError(f"cannot pause or resume Kafka partitions: {_describe(exc)}") from exc

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        ck = self._ck
        if not offsets:
            return
        try:
            # Asynchronous: the checkpoint already holds the offsets, so the loop need not wait for the
            # group coordinator (nor hang on it in an outage). The result arrives in _on_commit; close()
            # waits for commits still in flight.
            self._consumer.commit(offsets=[ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                  asynchronous=True)
        except ck.KafkaException as exc:
            log.warning("committing offsets to the consumer group failed (%s); state is safe in the checkpoint",
                        _describe(exc))

    @property
    def exhausted(self) -> bool:
        return False  # a topic never ends

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except (self._ck.KafkaException, RuntimeError) as exc:
            log.warning("the Kafka consumer did not close cleanly: %s", _describe(exc))

    # -- callbacks, served by librdkafka inside consume() ----------------------------------------
    def _on_stats(self, stats_json: str) -> None:
        try:
            brokers = json.loads(stats_json).get("brokers", {}).values()
            # Real brokers only: the bootstrap entries (nodeid -1) and the logical coordinator do not count.
            self._connected = any(b.get("nodeid", -1) >= 0 and b.get("state") == "UP" for b in brokers)
        except (ValueError, AttributeError):
            pass

    def _on_error(self, error: Any) -> None:
        code, codes = error.code(), self._ck.KafkaError
        if code == codes._ALL_BROKERS_DOWN:
            self._connected = False
        elif code == codes._TRANSPORT:
            return  # librdkafka's own log line (logger streammon.librdkafka) already says which broker and why
        self._errors(logging.WARNING, "Kafka client error: %s", error.str())

    def _on_commit(self, error: Any, partitions: list[Any]) -> None:
        if error is not None:
            log.warning("committing offsets to the consumer group failed (%s); state is safe in the checkpoint",
                        error.str())

    # -- health ---------------------------------------------------------------------------------
    def _refresh_lag(self) -> None:
        try:
            consumer, lag = self._consumer, {}
            positions = consumer.position(self._partitions)  # local: the next offset after the last consumed
            for tp in positions:
                key = (tp.topic, tp.partition)
                # cached=True reads the watermarks of the last fetch response: no request, no waiting.
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue  # nothing fetched from this partition yet
                position = tp.offset if tp.offset >= 0 else self._start.get(key, low if self._low_if_unknown else -1)
                if position >= 0:
                    lag[key] = max(0, high - position)
            self._lag = lag
        except Exception:  # a health probe must not raise into the monitor loop
            log.debug("consumer lag probe failed", exc_info=True)



class ConfluentKafkaDeadLetter:
    """:class:`~streammon.connectors.kafka.KafkaDeadLetter` on confluent-kafka: same topic, key, value, headers.

    Delivery failures are logged and counted in ``failed``; ``flush`` waits for every event sent. A
    record larger than ``max_record_bytes`` (default 1,000,000, never more than the producer's
    ``message.max.bytes``) is sent truncated, with headers ``streammon.truncated`` and
    ``streammon.original_size``.

    >>> from streammon.connectors import Message
    >>> from streammon.connectors.broker import EmbeddedBroker
    >>> with EmbeddedBroker() as broker:
    ...     sink = ConfluentKafkaDeadLetter(broker.bootstrap_servers)
    ...     sink.send(Message(b"{not json", "prediction", b"a", "predictions", 0, 7), "invalid JSON")
    ...     sink.flush(10)
    ...     sink.close()
    >>> sink.delivered, sink.failed
    (1, 0)
    """

    def __init__(self, bootstrap_servers: str | list[str], *, topic: str = "streammon-dead-letter",
                 max_record_bytes: int | None = None, **settings: Any) -> None:
        ck = self._ck = _confluent()
        self.topic = topic
        servers = _servers(bootstrap_servers)
        config: dict[str, Any] = {"bootstrap.servers": servers, "compression.type": "gzip", "linger.ms": 20,
                                  "logger": logging.getLogger("streammon.librdkafka")}
        config.update(settings)
        try:
            producer_limit = int(config.get("message.max.bytes", 1_000_000))  # librdkafka's default
        except (TypeError, ValueError):  # not a number: librdkafka refuses it below, with its own message
            producer_limit = 1_000_000
        self.max_record_bytes = dead_letter_limit(max_record_bytes, producer_limit)
        try:
            self._producer = ck.Producer(config)
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise SourceError(f"cannot create the dead-letter producer for {servers}: {_describe(exc)}") from exc
        self.delivered = 0
        self.failed = 0
        self._failures = _Throttled()

    def send(self, message: Message, reason: str) -> None:
        key, value, headers = dead_letter_record(message, reason, max_bytes=self.max_record_bytes)
        produce = self._producer.produce
        try:
            try:
                produce(self.topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
            except BufferError:  # librdkafka's local queue is full: let deliveries drain it, then once more
                self._producer.poll(1.0)
                produce(self.topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
        except (BufferError, self._ck.KafkaException) as exc:
            self.failed += 1  # the caller counts it unsent; failed counts every event the topic did not get
            raise SourceError(f"cannot send the rejected event {headers[1][1].decode()} to the dead-letter topic "
                              f"{self.topic!r}: {_describe(exc)}") from exc
        self._producer.poll(0)  # serve delivery reports of earlier sends

    def _on_delivery(self, error: Any, _message: Any) -> None:
        if error is None:
            self.delivered += 1
        else:
            self.failed += 1
            self._failures(logging.ERROR, "a rejected event was not delivered to the dead-letter topic %s: %s",
                           self.topic, error.str())

    def flush(self, timeout: float | None = None) -> None:
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise SourceError(f"{left:,} rejected events still waiting for the dead-letter topic {self.topic!r} "
                              f"after {timeout:g} s")

    def close(self) -> None:
        self.flush()  # librdkafka's producer has nothing else to release before it is garbage-collected
