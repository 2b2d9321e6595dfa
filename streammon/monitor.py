"""The Monitor: what users register metrics on, feed events to, and scrape."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .align import Decoded, EventTimeAligner, can_align
from .connectors.base import DeadLetterSink, Message, Source, next_offsets
from .engine import Engine, SeriesKeys
from .errors import EventError, RegistrationError, StreamMonError
from .events import EventPolicy, decode_event
from .exporter import MetricsServer, MonitorCollector, Sample, samples
from .join import MemoryJoinStore
from .checkpoint import Checkpointer, CheckpointError, require_picklable
from .registry import Tracked, register_function, register_operator
from .windows import Cumulative, Sliding, Window, parse_duration

__all__ = ["Monitor", "MonitorSettings"]

log = logging.getLogger("streammon")
_TOPIC = {"prediction": "predictions", "feedback": "feedback", None: "unknown"}


class MonitorSettings(BaseModel):
    """Every setting of a :class:`Monitor`, validated once (durations as seconds or '7d')."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    windows: tuple[Window, ...] = (Cumulative(), Sliding("1h"))
    segments: tuple[str, ...] = ()
    feedback_ttl: float = 7 * 86400.0
    prediction_ttl: float = 3600.0
    max_pending: int = Field(10_000_000, gt=0)
    max_segment_values: int = Field(100, gt=0)
    remember_joined: bool = True
    batch_size: int = Field(4096, gt=0)
    max_event_bytes: int = Field(1 << 20, gt=0)
    max_future_seconds: float = Field(86400.0, ge=0)

    @field_validator("feedback_ttl", "prediction_ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any, info) -> float:
        return parse_duration(value, what=info.field_name)


@contextlib.contextmanager
def _tuned_gc() -> Iterator[None]:
    # A worker keeps a large, long-lived state and allocates many short-lived objects per batch: with
    # the default thresholds the cyclic GC runs every 700 allocations and keeps rescanning the state.
    # Freezing what exists (the app, the restored state) and collecting less often took a run over
    # an in-memory stream from 60k to 84k events per CPU second (docs/benchmarks.md).
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


class Monitor:
    """Joins predictions with feedback and publishes incremental metrics over event-time windows.

    >>> import streammon as sm
    >>> from streammon import operators as ops
    >>> monitor = sm.Monitor("demo", windows=[sm.Cumulative()])
    >>> _ = monitor.track(ops.Accuracy())
    >>> monitor.replay([
    ...     {"id": "a", "ts": 1, "prediction": 1}, {"id": "a", "ts": 5, "label": 1},
    ...     {"id": "b", "ts": 2, "prediction": 0}, {"id": "b", "ts": 6, "label": 1},
    ... ])
    >>> monitor.value("accuracy")
    0.5
    """

    def __init__(self, name: str, *, dead_letter: DeadLetterSink | None = None, **settings: Any) -> None:
        if not name or not isinstance(name, str):
            raise RegistrationError("Monitor needs a name, e.g. sm.Monitor('fraud')")
        try:
            self.settings = MonitorSettings(**settings)
        except Exception as exc:  # pydantic's message names the field and the problem
            raise RegistrationError(f"Monitor({name!r}): {exc}") from None
        s = self.settings
        self.name = name
        self.dead_letter = dead_letter
        self._policy = EventPolicy(max_event_bytes=s.max_event_bytes, max_future_seconds=s.max_future_seconds)
        self._engine = self._new_engine(())
        self._lock = threading.RLock()
        self._rejected_logged = self._sink_failures = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MonitorCollector(self))
        self._server: MetricsServer | None = None
        self._stop = threading.Event()
        self._source: Source | None = None  # while run() consumes it: its lag and connection are published
        self._checkpointer: Checkpointer | None = None
        # Scale-out: a worker holding some partitions, or an exporter merging every partition's partials.
        self._worker: Any = None
        self._exporter: Any = None

    def _new_engine(self, metrics: Iterable[Tracked]) -> Engine:
        """An engine with empty state for ``metrics`` (scaled out, each partition has its own)."""
        s = self.settings
        store = MemoryJoinStore(feedback_ttl=s.feedback_ttl, prediction_ttl=s.prediction_ttl,
                                max_pending=s.max_pending, remember_joined=s.remember_joined)
        engine = Engine(store, SeriesKeys(s.segments, s.max_segment_values))
        for tracked in metrics:
            engine.add_metric(tracked)
        return engine

    # -- registration -----------------------------------------------------------------------
    @property
    def metrics(self) -> list[Tracked]:
        return [t for t, _ in self._engine.metrics]

    def _add(self, tracked: Tracked) -> None:
        with self._lock:
            if self._engine.stream_time > float("-inf"):
                raise RegistrationError(f"register {tracked.name!r} before the first event, so every metric sees the same events")
            self._engine.add_metric(tracked)

    def _taken(self) -> set[str]:
        return {t.name for t in self.metrics}

    def track(self, operator: Any, *, name: str | None = None, of: str | None = None,
              windows: Sequence[Window] | None = None, time: Literal["prediction", "feedback"] = "prediction") -> Any:
        """Track an operator (a built-in, any river metric or stat, or your own class).

        ``of`` says what it reads (default: the operator's own ``of``, else the pair
        ``(y_true, y_pred)``); ``time`` says whether a pair's event time is its prediction's
        or its feedback's. Returns the operator, so ``acc = monitor.track(ops.Accuracy())`` reads well.
        """
        tracked = register_operator(operator, name=name, of=of, time=time,
                                    windows=self.settings.windows if windows is None else windows, taken=self._taken())
        self._add(tracked)
        return operator

    def metric(self, fn: Callable | None = None, *, stat: Any = None, name: str | None = None, of: str | None = None,
               windows: Sequence[Window] | None = None, time: Literal["prediction", "feedback"] = "prediction") -> Callable:
        """Register a function as a metric: ``@monitor.metric(stat=ops.ConfusionMatrix())`` runs it over
        the statistic at publish time; ``@monitor.metric()`` publishes its running mean per event."""

        def register(f: Callable) -> Callable:
            tracked = register_function(f, stat=stat, name=name, of=of, time=time,
                                        windows=self.settings.windows if windows is None else windows, taken=self._taken())
            self._add(tracked)
            return f

        return register if fn is None else register(fn)

    # -- feeding ----------------------------------------------------------------------------
    def replay(self, events: Iterable[Any]) -> None:
        """Process events in order: dicts, JSON bytes/str, :class:`Prediction`/:class:`Feedback`, or :class:`Message`."""
        batch: list[Message] = []
        size = self.settings.batch_size
        for e in events:
            batch.append(e if isinstance(e, Message) else Message(e))
            if len(batch) >= size:
                self.process(batch)
                batch = []
        if batch:
            self.process(batch)

    def process(self, messages: Sequence[Message]) -> None:
        """Decode, validate and apply one batch; rejected events go to the dead-letter sink."""
        self._process_into(self._engine, messages)

    def _process_into(self, engine: Engine, messages: Sequence[Message]) -> None:
        self._apply_decoded(engine, self._decode(messages))

    def _decode(self, messages: Sequence[Message]) -> list[Decoded]:
        policy = self._policy
        now = time.time()
        out = []
        for msg in messages:
            try:
                out.append(Decoded(msg, decode_event(msg.value, kind=msg.kind, key=msg.key, policy=policy, now=now), None))
            except EventError as exc:
                out.append(Decoded(msg, None, exc.reason))
        return out

    def _apply_decoded(self, engine: Engine, decoded: Sequence[Decoded]) -> None:
        events = [d.event for d in decoded if d.event is not None]
        rejected = [(d.message, d.reason) for d in decoded if d.event is None]
        # The sink is written outside the lock, so a slow dead-letter topic never holds up a scrape.
        sent = self._dead_letter(rejected) if rejected else 0
        with self._lock:
            health = engine.health
            for msg, _ in rejected:
                health.events[(_TOPIC[msg.kind] if msg.kind else self._guess_topic(msg), "rejected")] += 1
            health.dead_letters += sent
            engine.apply(events)

    def _apply_aligned(self, engine: Engine, decoded: list[Decoded], marks: dict[tuple[str, int], float]) -> None:
        size = self.settings.batch_size
        for start in range(0, len(decoded), size):
            self._apply_decoded(engine, decoded[start:start + size])
        with self._lock:  # saved with the state, so a restart continues the same order
            engine.input_marks.update(marks)

    def _dead_letter(self, rejected: list[tuple[Message, str]]) -> int:
        sent = 0
        for msg, reason in rejected:
            if self.dead_letter is not None:
                try:
                    self.dead_letter.send(msg, reason)
                    sent += 1
                except Exception as exc:  # noqa: BLE001 - a failing sink must not stop the monitor; the count shows it
                    self._sink_failures += 1
                    f = self._sink_failures
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

    @staticmethod
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

    def run(self, source: Source, *, state_dir: str | None = None, checkpoint_interval: float = 5.0,
            max_records: int | None = None, poll_timeout: float = 0.5, until: Callable[[], bool] | None = None,
            publish_interval: float = 1.0, background_checkpoints: bool = True, max_idle: float = 0.5) -> None:
        """Consume ``source`` until it is exhausted, ``until()`` is true, or :meth:`stop` is called.

        A Kafka source is read aligned by event time: both topics are processed in one order that
        depends only on what the partitions hold, never on fetch sizes, poll timing, backlogs,
        restarts or rebalances. An empty partition is waited for while the broker reports records
        in it, and for ``max_idle`` seconds once it is at its end (docs/kafka.md, "Input order").

        With ``state_dir``, state and offsets are checkpointed together every ``checkpoint_interval``
        seconds (and at a clean stop), and a restart resumes from the last checkpoint: a worker killed
        at any moment counts every event exactly once (see docs/kafka.md). Snapshots are written by a
        forked child while this process goes on (``background_checkpoints``, where the OS can fork),
        and offsets are committed once the snapshot is on disk.

        A source shared by a group of workers (``KafkaSource(..., scale_out=True)``) keeps state per
        partition in ``state_dir`` (which every worker must share) and writes each partition's
        partial aggregates there every ``publish_interval`` seconds; :meth:`export` serves their merge.
        """
        with _tuned_gc():
            self._run(source, state_dir=state_dir, checkpoint_interval=checkpoint_interval, size=max_records or self.settings.batch_size,
                      poll_timeout=poll_timeout, until=until, publish_interval=publish_interval,
                      background_checkpoints=background_checkpoints, max_idle=max_idle)

    def _run(self, source: Source, *, state_dir: str | None, checkpoint_interval: float, size: int, poll_timeout: float,
             until: Callable[[], bool] | None, publish_interval: float, background_checkpoints: bool, max_idle: float) -> None:
        if getattr(source, "scale_out", False):
            from .partitions import run_partitioned
            return run_partitioned(self, source, state_dir=state_dir, checkpoint_interval=checkpoint_interval,
                                   publish_interval=publish_interval, max_records=size, poll_timeout=poll_timeout, until=until,
                                   background_checkpoints=background_checkpoints, max_idle=max_idle)
        checkpointer = Checkpointer(state_dir, interval=checkpoint_interval) if state_dir else None
        if checkpointer is not None and any(checkpointer.directory.glob("partition-*.pkl")):
            raise CheckpointError(f"{state_dir} holds a scaled-out group's state (one snapshot per partition); run with "
                                  f"scale-out (--scale-out), or give this worker another --state-dir")
        offsets: dict[tuple[str, int], int] = {}
        if checkpointer is not None:
            require_picklable(self._engine)
            with self._lock:
                restored = checkpointer.restore(self._engine)
                self._apply_settings_to_restored_state(self._engine)
            if restored is not None:
                offsets.update(restored)
                log.info("resumed from the checkpoint in %s (%d partitions)", state_dir, len(offsets))
                gc.freeze()  # the restored state, too, is long-lived
            if callable(getattr(source, "seek", None)):
                source.seek(offsets)
            elif offsets:
                raise CheckpointError(f"{type(source).__name__} cannot seek, so it cannot resume from {state_dir}")
        self._source, self._checkpointer = source, checkpointer
        background = checkpointer is not None and background_checkpoints and hasattr(os, "fork")
        aligner = None
        if can_align(source):
            aligner = EventTimeAligner(source.topics, max_idle=max_idle)
            aligner.track(source.input_partitions, None, self._engine.input_marks)
        dirty = False
        try:
            while not self._stop.is_set() and not (until and until()):
                if aligner is None:
                    batch = source.poll(size, poll_timeout)
                    if batch:
                        self.process(batch)
                        offsets.update(next_offsets(batch))
                        dirty = True
                else:
                    batch = source.poll(size, aligner.wait_hint(poll_timeout))
                    if batch:
                        aligner.add(self._decode(batch))
                    released = aligner.release(source.lag(), everything=not batch and source.exhausted).get(None)
                    aligner.flow(source)
                    if released:
                        self._apply_aligned(self._engine, *released)
                        offsets.update(next_offsets([d.message for d in released[0]]))
                        dirty = True
                if dirty and (checkpointer is None or (checkpointer.due() and not checkpointer.busy)):
                    self._checkpoint(source, checkpointer, offsets, background=background)
                    dirty = False
                if background and (saved := checkpointer.finished()) is not None:
                    source.commit(saved)
                if not batch and source.exhausted:
                    break
            if checkpointer is not None and (saved := checkpointer.finished(wait=True)) is not None:
                source.commit(saved)
            if dirty:  # a clean stop ends with a snapshot of everything read
                self._checkpoint(source, checkpointer, offsets)
        finally:
            self._stop.clear()  # here, not on entry, so a stop() that came before run() is honoured
            self._source = None
            source.close()

    def _checkpoint(self, source: Source, checkpointer: Checkpointer | None, offsets: dict[tuple[str, int], int],
                    background: bool = False) -> None:
        # Rejected events must be in the dead-letter sink before the offsets move past them.
        flush = getattr(self.dead_letter, "flush", None)
        if callable(flush):
            flush()
        if checkpointer is None:
            source.commit(dict(offsets))
            return
        with self._lock:  # held across the fork, so no scrape is half-way through the state
            if background:
                checkpointer.save_in_background(self._engine, offsets)
                return  # committed when the snapshot is on disk
            checkpointer.save(self._engine, offsets)
        source.commit(dict(offsets))

    def _apply_settings_to_restored_state(self, engine: Engine) -> None:
        # A snapshot carries the store's settings of its day; the app's current settings win.
        s, store = self.settings, engine.store
        store.feedback_ttl, store.prediction_ttl, store.max_pending = s.feedback_ttl, s.prediction_ttl, s.max_pending
        engine.keys.max_values = s.max_segment_values

    def stop(self) -> None:
        self._stop.set()

    def export(self, state_dir: str, *, refresh: float = 0.5, until: Callable[[], bool] | None = None) -> None:
        """Serve the global metrics of a scaled-out group: merge the partial aggregates every worker
        writes to ``state_dir`` for its partitions, every ``refresh`` seconds, until :meth:`stop`.

        Run it in its own process with the same app (``streammon export``), and point Prometheus at it.
        """
        from .partials import PartialsExporter
        exporter = PartialsExporter(self, state_dir)
        self._exporter = exporter
        try:
            while not self._stop.is_set() and not (until and until()):
                started = time.monotonic()
                exporter.refresh()
                # A merge that takes long (many partitions x series x panes) is not run back to back.
                self._stop.wait(max(refresh, 2 * (time.monotonic() - started)))
        finally:
            self._stop.clear()

    # -- reading ----------------------------------------------------------------------------
    def values(self) -> list[Sample]:
        """Every published sample, exactly what ``/metrics`` shows now."""
        return samples(self.registry)

    def value(self, metric: str, *, window: str | None = None, **labels: str) -> float:
        """One metric's value; ``window`` defaults to the first window it lives in. Handy in tests and notebooks."""
        tracked = next((t for t in self.metrics if t.name == metric), None)
        if tracked is None:
            raise KeyError(f"no metric named {metric!r}; tracked: {', '.join(t.name for t in self.metrics) or 'none'}")
        window = window or tracked.windows[0].label
        wanted = {"window": window, **labels}
        found = [s.value for s in self.values() if s.name == "streammon_" + metric and all(s.labels.get(k) == v for k, v in wanted.items())]
        if len(found) != 1:
            raise KeyError(f"{len(found)} series of {metric!r} match {wanted}; name more labels")
        return found[0]

    def serve(self, port: int = 9108, *, host: str = "127.0.0.1", certfile: str | None = None,
              keyfile: str | None = None, basic_auth: tuple[str, str] | None = None,
              timeout: float = 10.0) -> MetricsServer:
        """Serve ``/metrics`` in a background thread (``port=0`` picks a free port).

        ``certfile``/``keyfile`` turn on TLS, ``basic_auth=(user, password)`` requires it; every
        client connection is closed ``timeout`` seconds after it was accepted, so none can hold the endpoint.
        """
        if self._server is not None:
            self._server.close()
        self._server = MetricsServer(self.registry, host=host, port=port, certfile=certfile, keyfile=keyfile,
                                     basic_auth=basic_auth, timeout=timeout)
        return self._server

    def close(self) -> None:
        self.stop()
        if self._server is not None:
            self._server.close()
            self._server = None
