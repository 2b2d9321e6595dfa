"""The producer SDK: how a model server logs predictions and a labelling job logs feedback to Kafka.

Every event is validated with the monitor's own models (:class:`~streammon.Prediction`,
:class:`~streammon.Feedback`) before anything is sent, so a producer cannot send an event the
monitor would reject for its shape. Events go out as compact JSON keyed by the prediction id
(UTF-8), predictions and feedback to their own topics, so both topics are co-partitioned.

kafka-python's producer buffers without a bound; :class:`EventProducer` bounds it itself by the
bytes of events not yet acknowledged, and waits at most ``send_timeout`` for room before raising
:class:`~streammon.SourceError`. Delivery failures surface on :meth:`~EventProducer.flush` and
:meth:`~EventProducer.close`, with a count.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticSerializationError

from ..errors import EventError, RegistrationError, SourceError
from ..events import Event, EventPolicy, decode_event
from .base import Kind, Message, Source

__all__ = ["EventProducer", "MemoryProducer", "ProducerSettings", "produce_all"]

log = logging.getLogger("streammon.producer")

Compression = Literal["gzip", "lz4", "zstd", "none"]
_OPTIONAL = {"prediction": ("score", "features", "segment"), "feedback": ("model",)}
# Settings the producer owns: passing them through would break the wire format or bypass a check.
_OWNED = {"key_serializer": "keys are the event ids, encoded as UTF-8",
          "value_serializer": "values are the events as compact JSON",
          "compression_type": "use compression='gzip' | 'lz4' | 'zstd' | 'none'",
          "linger_ms": "use linger_ms=...", "bootstrap_servers": "give it as the first argument"}
_CODEC_PACKAGE = {"lz4": "lz4", "zstd": "zstandard"}


class ProducerSettings(BaseModel):
    """The producer's own settings (kafka-python's are passed through as ``**kafka_settings``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    predictions_topic: str = Field("predictions", min_length=1)
    feedback_topic: str = Field("feedback", min_length=1)
    compression: Compression = "gzip"
    linger_ms: int = Field(5, ge=0)
    max_buffer_bytes: int = Field(32 << 20, gt=0)
    send_timeout: float = Field(10.0, gt=0)
    policy: EventPolicy = EventPolicy()


class _Producer:
    """Validation and encoding shared by the Kafka producer and its in-memory twin."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.settings = settings
        self._topics: dict[Kind, str] = {"prediction": settings.predictions_topic, "feedback": settings.feedback_topic}
        self._closed = False

    def log_prediction(self, id: str, prediction: Any, *, ts: float | str | None = None, score: Any = None,
                       features: Mapping[str, Any] | None = None, segment: Mapping[str, str] | None = None,
                       model: str = "default", **extra: Any) -> None:
        """Validate and send one prediction; ``ts`` defaults to now. Raises :class:`EventError` if invalid."""
        fields = {"id": id, "ts": time.time() if ts is None else ts, "model": model, "prediction": prediction,
                  "score": score, "features": features, "segment": segment, **extra}
        self.send({k: v for k, v in fields.items() if v is not None or k in extra}, kind="prediction")

    def log_feedback(self, id: str, label: Any, *, ts: float | str | None = None, model: str | None = None,
                     **extra: Any) -> None:
        """Validate and send the true value for prediction ``id``; ``ts`` defaults to now."""
        fields = {"id": id, "ts": time.time() if ts is None else ts, "label": label, "model": model, **extra}
        self.send({k: v for k, v in fields.items() if v is not None or k in extra}, kind="feedback")

    def send(self, event: Event | Mapping[str, Any] | bytes | str, *, kind: Kind | None = None,
             topic: str | None = None) -> str:
        """Validate and send one event: a :class:`Prediction`, a :class:`Feedback`, a dict or JSON.

        ``kind`` is told by the fields when not given. ``topic`` overrides the kind's topic; the
        event then carries its ``kind`` so that a reader of a mixed topic tells it right.
        Returns the topic it went to.
        """
        if self._closed:
            raise SourceError("the producer is closed; create a new one")
        topic, key, value = self.encode(event, kind=kind, topic=topic)
        self._write(topic, key, value)
        return topic

    def encode(self, event: Event | Mapping[str, Any] | bytes | str, *, kind: Kind | None = None,
               topic: str | None = None) -> tuple[str, bytes, bytes]:
        """The ``(topic, key, value)`` that :meth:`send` would write; raises :class:`EventError` if invalid."""
        policy = self.settings.policy
        valid = decode_event(event, kind=kind, policy=policy)
        exclude = {name for name in _OPTIONAL[valid.kind] if getattr(valid, name) is None}
        own_topic = self._topics[valid.kind]
        if topic is None or topic == own_topic:
            topic = own_topic
            exclude.add("kind")  # the topic tells it
        try:
            value = valid.model_dump_json(exclude=exclude).encode("utf-8")
            key = valid.id.encode("utf-8")
        except (UnicodeEncodeError, PydanticSerializationError):
            raise EventError("event text is not valid UTF-8 (a lone surrogate?)", raw=event) from None
        if len(value) > policy.max_event_bytes:
            raise EventError(f"event of {len(value)} bytes exceeds max_event_bytes={policy.max_event_bytes}", raw=event)
        return topic, key, value

    def _write(self, topic: str, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event sent so far is delivered; raise :class:`SourceError` naming how many were not."""

    def close(self, timeout: float | None = None) -> None:
        """Flush, then release the connection; later sends raise :class:`SourceError`."""
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already failing: do not hide that error behind a delivery report
            self.close()
        except SourceError as close_error:
            log.error("while handling %s: %s", exc_type.__name__, close_error)


def _producer_settings(kwargs: dict[str, Any]) -> ProducerSettings:
    try:
        return ProducerSettings(**kwargs)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise RegistrationError(f"{field}={first.get('input')!r}: {first['msg']}") from None


class EventProducer(_Producer):
    """Sends validated prediction and feedback events to Kafka; thread-safe, and ``send`` does not wait
    for the broker (only for room in a full buffer, at most ``send_timeout`` seconds).

    ``**kafka_settings`` go to kafka-python's ``KafkaProducer`` unchanged: ``security_protocol``,
    ``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password``, ``ssl_cafile``, ``acks``...
    ``send_timeout`` also bounds the wait for a topic's metadata (``max_block_ms``) and for the
    first connection (``bootstrap_timeout_ms``) unless those are given.

    >>> from streammon.connectors.broker import EmbeddedBroker
    >>> with EmbeddedBroker() as broker, EventProducer(broker.bootstrap_servers) as producer:
    ...     producer.log_prediction("req-1", 1, score=0.9, segment={"version": "v3"})
    ...     producer.log_feedback("req-1", 1)
    ...     producer.flush()
    ...     producer.pending
    0
    """

    def __init__(self, bootstrap_servers: str | Sequence[str], *, predictions_topic: str = "predictions",
                 feedback_topic: str = "feedback", compression: Compression = "gzip", linger_ms: int = 5,
                 max_buffer_bytes: int = 32 << 20, send_timeout: float = 10.0,
                 policy: EventPolicy = EventPolicy(), **kafka_settings: Any) -> None:
        super().__init__(_producer_settings(dict(
            predictions_topic=predictions_topic, feedback_topic=feedback_topic, compression=compression,
            linger_ms=linger_ms, max_buffer_bytes=max_buffer_bytes, send_timeout=send_timeout, policy=policy)))
        self._closed = True  # until the connection is up, so a failed start leaves nothing to close
        self.bootstrap_servers = bootstrap_servers
        self._kafka = _connect(bootstrap_servers, self.settings, kafka_settings)
        self._room = threading.Condition()
        self._pending_bytes = 0
        self._pending = 0
        self._failed = 0
        self._first_error: BaseException | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Events sent but not yet acknowledged by the broker."""
        return self._pending

    def metrics(self) -> dict[str, dict[str, float]]:
        """kafka-python's producer metrics (``compression-rate-avg``, ``record-send-rate``, ...) by group."""
        return self._kafka.metrics()

    def _write(self, topic: str, key: bytes, value: bytes) -> None:
        size = len(key) + len(value)
        self._reserve(size)
        try:
            future = self._kafka.send(topic, value=value, key=key)
        except Exception as exc:
            self._release(size)
            raise _source_error(exc, f"cannot send to topic {topic!r} on {self.bootstrap_servers}") from exc
        future.add_callback(self._delivered, size)
        future.add_errback(self._undelivered, size)

    def _reserve(self, size: int) -> None:
        limit, timeout = self.settings.max_buffer_bytes, self.settings.send_timeout
        with self._room:
            # An event larger than the whole buffer still goes, alone, rather than never.
            if not self._room.wait_for(lambda: self._pending_bytes == 0 or self._pending_bytes + size <= limit,
                                       timeout):
                raise SourceError(
                    f"the send buffer ({limit:,} bytes) stayed full for {timeout:g} s: Kafka at "
                    f"{self.bootstrap_servers} is not acknowledging events ({self._pending:,} waiting); "
                    f"check the broker, or raise max_buffer_bytes / send_timeout")
            self._pending_bytes += size
            self._pending += 1

    def _release(self, size: int) -> None:
        with self._room:
            self._pending_bytes -= size
            self._pending -= 1
            self._room.notify_all()

    def _delivered(self, size: int, _metadata: Any) -> None:
        self._release(size)

    def _undelivered(self, size: int, error: BaseException) -> None:
        with self._room:
            self._failed += 1
            if self._first_error is None:
                self._first_error = error
            n = self._failed
        if n == 1 or n & (n - 1) == 0:  # the first, then at powers of two: a dead broker fails thousands
            log.error("event #%d not delivered to Kafka at %s: %s", n, self.bootstrap_servers, error)
        self._release(size)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event sent so far is acknowledged or failed (``timeout`` seconds at most;
        None waits up to kafka-python's ``delivery_timeout_ms``). Raises :class:`SourceError` if some
        are still waiting, or if any failed since the last report; each failure is reported once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._kafka.flush(timeout)
        except Exception as exc:  # noqa: BLE001 - kafka-python's timeout is per batch; the count below decides
            log.debug("kafka-python flush: %r", exc)
        with self._room:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._room.wait_for(lambda: self._pending == 0, left)
            waiting = self._pending
        if waiting:
            raise SourceError(f"{waiting:,} events still waiting for Kafka at {self.bootstrap_servers} "
                              f"after {timeout:g} s")
        self._report_failures()

    def _report_failures(self) -> None:
        with self._room:
            failed, error = self._failed, self._first_error
            self._failed, self._first_error = 0, None
        if failed:
            raise SourceError(f"{failed:,} events were not delivered to Kafka at {self.bootstrap_servers} "
                              f"(first error: {_describe(error)})")

    def close(self, timeout: float | None = None) -> None:
        """Flush (``timeout`` seconds at most), then close. Raises :class:`SourceError` with the count of
        events that were not delivered; the producer is closed either way."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(SourceError):  # counted below, once the undelivered events have been failed
            self.flush(timeout)
        try:
            self._kafka.close(0)
        except Exception:  # noqa: BLE001
            # kafka-python 3.0.12's close() flushes first and raises on timeout, never reaching its own
            # force close; do that step directly so undelivered events fail (and are counted) now.
            sender = getattr(self._kafka, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(5.0)
            try:
                self._kafka.close(0)
            except Exception as exc:  # noqa: BLE001
                log.warning("kafka-python producer did not close cleanly: %r", exc)
        self._report_failures()


def _connect(bootstrap_servers: str | Sequence[str], settings: ProducerSettings, extra: dict[str, Any]):
    from kafka import KafkaProducer, codec

    for name in extra:
        if name in _OWNED:
            raise RegistrationError(f"EventProducer sets {name} itself: {_OWNED[name]}")
        if name not in KafkaProducer.DEFAULT_CONFIG:
            raise RegistrationError(f"{name!r} is not a kafka-python producer setting; see the KafkaProducer "
                                    f"documentation for valid names (e.g. security_protocol, sasl_mechanism)")
    compression = settings.compression
    if compression in _CODEC_PACKAGE and not getattr(codec, f"has_{compression}")():
        raise RegistrationError(f"compression={compression!r} needs the {_CODEC_PACKAGE[compression]} package: "
                                f"pip install {_CODEC_PACKAGE[compression]} (or use compression='gzip')")
    block_ms = int(settings.send_timeout * 1000)
    config = {"max_block_ms": block_ms, "bootstrap_timeout_ms": block_ms, **extra}
    try:
        return KafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=settings.linger_ms,
                             compression_type=None if compression == "none" else compression, **config)
    except Exception as exc:
        raise _source_error(exc, f"cannot start a Kafka producer for {bootstrap_servers}") from exc


def _source_error(exc: BaseException, what: str) -> SourceError:
    return SourceError(f"{what}: {_describe(exc)}")


def _describe(exc: BaseException | None) -> str:
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"  # kafka-python's errors name themselves


class MemoryProducer(_Producer):
    """The in-memory twin of :class:`EventProducer` for unit tests: same interface and checks, and
    ``records`` keeps each ``(topic, key, value)`` it would have sent.

    >>> producer = MemoryProducer()
    >>> producer.log_prediction("req-1", 1, ts=1700000000, score=0.9)
    >>> producer.log_feedback("req-1", 1, ts=1700000060)
    >>> producer.records[1]
    ('feedback', b'req-1', b'{"id":"req-1","ts":1700000060.0,"label":1}')
    >>> [(m.kind, m.offset) for m in producer.messages()]   # ready for monitor.process(...)
    [('prediction', 0), ('feedback', 0)]
    """

    def __init__(self, *, predictions_topic: str = "predictions", feedback_topic: str = "feedback",
                 policy: EventPolicy = EventPolicy()) -> None:
        super().__init__(_producer_settings(dict(predictions_topic=predictions_topic,
                                                 feedback_topic=feedback_topic, policy=policy)))
        self.records: list[tuple[str, bytes, bytes]] = []
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return 0

    def metrics(self) -> dict[str, dict[str, float]]:
        return {}

    def _write(self, topic: str, key: bytes, value: bytes) -> None:
        with self._lock:
            self.records.append((topic, key, value))

    def messages(self) -> list[Message]:
        """The records as :class:`~streammon.connectors.Message` s, one partition per topic, in send order.
        A record on a topic other than the two kinds' is a mixed stream (``kind=None``)."""
        kinds = {topic: kind for kind, topic in self._topics.items()}
        offsets: dict[str, int] = {}
        out = []
        with self._lock:
            records = list(self.records)
        for topic, key, value in records:
            offset = offsets[topic] = offsets.get(topic, -1) + 1
            out.append(Message(value, kind=kinds.get(topic), key=key, topic=topic, partition=0, offset=offset))
        return out


def produce_all(producer: EventProducer | MemoryProducer, source: Source, *, kind: Kind | None = None,
                topic: str | None = None, rate: float | None = None, stop: Callable[[], bool] | None = None,
                on_reject: Callable[[Message, str], None] | None = None) -> dict[str, int]:
    """Send every event of a finite ``source`` (e.g. a :class:`~streammon.connectors.FileSource`) through
    ``producer``; return how many went to each topic, and ``"rejected"``. An invalid event is skipped and
    handed to ``on_reject(message, reason)``. ``rate`` paces sending (events per second); ``stop()``
    returning true ends early. The source is closed at the end.

    >>> from streammon.connectors import MemorySource
    >>> producer = MemoryProducer()
    >>> produce_all(producer, MemorySource([{"id": "a", "ts": 1, "prediction": 1}, {"id": "a", "ts": 2, "label": 1},
    ...                                      b"{not json"]))
    {'predictions': 1, 'feedback': 1, 'rejected': 1}
    """
    counts: dict[str, int] = {}
    start, sent = time.monotonic(), 0
    try:
        while not (stop and stop()):
            batch = source.poll(1024, 0.1)
            if not batch:
                if source.exhausted:
                    break
                continue
            for message in batch:
                if stop and stop():
                    break
                if rate:
                    _pace(start + sent / rate, stop)
                try:
                    target = producer.send(message.value, kind=kind or message.kind, topic=topic)
                except EventError as exc:
                    counts["rejected"] = counts.get("rejected", 0) + 1
                    if on_reject is not None:
                        on_reject(message, exc.reason)
                    continue
                sent += 1
                counts[target] = counts.get(target, 0) + 1
    finally:
        source.close()
    return counts


def _pace(due: float, stop: Callable[[], bool] | None) -> None:
    while (ahead := due - time.monotonic()) > 0.001 and not (stop and stop()):
        time.sleep(min(ahead, 0.1))  # short naps, so a stop request is seen soon
