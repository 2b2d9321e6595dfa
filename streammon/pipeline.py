"""The pipeline every worker runs: decode -> dead letter -> :meth:`Engine.apply`.

One :class:`Pipeline` per app. It builds engines (one per worker, or one per partition scaled out),
applies the app's settings to state restored from a snapshot, and feeds batches through: every
message is decoded and validated, rejected ones go to the dead-letter sink with their reason and
are counted, the rest are applied to the engine. The lock is held only while an engine changes,
so a scrape never reads half a batch and a slow dead-letter topic never holds up a scrape.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .connectors.base import DeadLetterSink, FlushingDeadLetterSink, Message
from .engine import Engine, SeriesKeys
from .errors import EventError, StreamMonError
from .events import EventPolicy, decode_event
from .join import JoinStore
from .memory_store import MemoryJoinStore

if TYPE_CHECKING:
    from .registry import Tracked
    from .settings import MonitorSettings

__all__ = ["Pipeline", "Decoded"]

log = logging.getLogger("streammon")
_TOPIC = {"prediction": "predictions", "feedback": "feedback", None: "unknown"}


class Decoded(NamedTuple):
    """A message and what decoding made of it: an event, or the reason it was rejected."""

    message: Message
    event: Any
    reason: str | None


class Pipeline:
    """Decodes, dead-letters and applies batches to engines built for one app's settings.

    ``clock`` is the wall clock in seconds (events from too far in the future are judged against it).
    """

    def __init__(self, settings: MonitorSettings, dead_letter: DeadLetterSink | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.dead_letter = dead_letter
        self.clock = clock
        self.policy = EventPolicy(max_event_bytes=settings.max_event_bytes, max_future_seconds=settings.max_future_seconds)
        self.lock = threading.RLock()  # held while an engine changes; scrapes and checkpoints take it too
        self.sink_failures = 0  # sends to the dead-letter sink that raised
        self._rejected_logged = 0

    # -- engines ----------------------------------------------------------------------------
    def new_engine(self, metrics: Iterable[Tracked]) -> Engine:
        """An engine with empty state for ``metrics`` (scaled out, each partition has its own)."""
        s = self.settings
        store = MemoryJoinStore(feedback_ttl=s.feedback_ttl, prediction_ttl=s.prediction_ttl,
                                max_pending=s.max_pending or MemoryJoinStore.DEFAULT_MAX_PENDING, remember_joined=s.remember_joined)
        engine = Engine(store, SeriesKeys(s.segments, s.max_segment_values))
        for tracked in metrics:
            engine.add_metric(tracked)
        return engine

    def disk_store(self, path: str | os.PathLike[str]) -> JoinStore:
        """A disk-backed join store at ``path`` with the app's settings (opened as of its last commit)."""
        from .disk_store import DEFAULT_MAX_PENDING, DiskJoinStore  # imported late: rocksdict loads RocksDB

        s = self.settings
        return DiskJoinStore(path, feedback_ttl=s.feedback_ttl, prediction_ttl=s.prediction_ttl,
                             max_pending=s.max_pending or DEFAULT_MAX_PENDING, remember_joined=s.remember_joined)

    def configure(self, engine: Engine) -> None:
        """Apply the app's settings to ``engine`` after a restore: a snapshot carries the settings of its day."""
        s = self.settings
        bound: int = s.max_pending or int(getattr(engine.store, "DEFAULT_MAX_PENDING", MemoryJoinStore.DEFAULT_MAX_PENDING))
        engine.store.configure(feedback_ttl=s.feedback_ttl, prediction_ttl=s.prediction_ttl, max_pending=bound)
        engine.keys.max_values = s.max_segment_values

    # -- batches ----------------------------------------------------------------------------
    def process(self, engine: Engine, messages: Sequence[Message]) -> None:
        """Decode, validate and apply one batch; rejected events go to the dead-letter sink."""
        self.apply(engine, self.decode(messages))

    def decode(self, messages: Sequence[Message]) -> list[Decoded]:
        policy = self.policy
        now = self.clock()
        out = []
        for msg in messages:
            try:
                out.append(Decoded(msg, decode_event(msg.value, kind=msg.kind, key=msg.key, policy=policy, now=now), None))
            except EventError as exc:
                out.append(Decoded(msg, None, exc.reason))
        return out

    def apply(self, engine: Engine, decoded: Sequence[Decoded]) -> None:
        events = [d.event for d in decoded if d.event is not None]
        rejected = [(d.message, d.reason or "") for d in decoded if d.event is None]
        # The sink is written outside the lock, so a slow dead-letter topic never holds up a scrape.
        sent = self._dead_letter(rejected) if rejected else 0
        with self.lock:
            health = engine.health
            for msg, _ in rejected:
                health.events[(_TOPIC[msg.kind] if msg.kind else _guess_topic(msg), "rejected")] += 1
            health.dead_letters += sent
            engine.apply(events)

    def apply_aligned(self, engine: Engine, decoded: list[Decoded], marks: dict[tuple[str, int], float]) -> None:
        """Apply records released in event-time order, and keep their partitions' marks with the state."""
        size = self.settings.batch_size
        for start in range(0, len(decoded), size):
            self.apply(engine, decoded[start:start + size])
        with self.lock:  # saved with the state, so a restart continues the same order
            engine.input_marks.update(marks)

    def flush_dead_letters(self) -> None:
        """Rejected events must be in the dead-letter sink before the offsets move past them."""
        if isinstance(self.dead_letter, FlushingDeadLetterSink):
            self.dead_letter.flush()

    @property
    def dead_letter_failures(self) -> int:
        """Rejected events the sink could not deliver: its own count if it keeps one, else the sends that raised."""
        failed = getattr(self.dead_letter, "failed", None)
        return failed if isinstance(failed, int) else self.sink_failures

    def _dead_letter(self, rejected: list[tuple[Message, str]]) -> int:
        sent = 0
        for msg, reason in rejected:
            if self.dead_letter is not None:
                try:
                    self.dead_letter.send(msg, reason)
                    sent += 1
                except Exception as exc:
                    self.sink_failures += 1
                    f = self.sink_failures
                    if f <= 10 or f & (f - 1) == 0:  # a sink that is down fails every event: the log says so, not floods
                        log.error("dead-letter sink failed for rejected event (topic %s, partition %d, offset %d), "
                                  "failure #%d: %s", msg.topic or "-", msg.partition, msg.offset, f, exc,
                                  exc_info=not isinstance(exc, StreamMonError))
            self._rejected_logged += 1
            n = self._rejected_logged
            if n <= 10 or n & (n - 1) == 0:  # the first ten, then at powers of two
                log.warning("rejected event #%d (topic %s, partition %d, offset %d): %s",
                            n, msg.topic or "-", msg.partition, msg.offset, reason)
        return sent


def _guess_topic(msg: Message) -> str:
    value = msg.value
    if not isinstance(value, dict):
        return "unknown"
    try:  # a dict subclass may raise from anything: the event is rejected either way
        kind = dict.get(value, "kind")
        if isinstance(kind, str) and kind in _TOPIC:
            return _TOPIC[kind]
        return "feedback" if dict.__contains__(value, "label") else "predictions" if dict.__contains__(value, "prediction") else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"
