"""The Monitor: what users register metrics on, feed events to, and scrape."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from .collectors import (
    JoinHealthCollector,
    MetricsCollector,
    PartialsCollector,
    ProcessingCollector,
    RunStatus,
    RuntimeCollector,
    Sample,
    WorkerCollector,
    samples,
)
from .connectors.base import DeadLetterSink, GroupSource, Message, Source
from .errors import RegistrationError
from .pipeline import Pipeline
from .registry import Tracked, register_function, register_operator
from .runner import Runner, SingleState, tuned_gc
from .server import MetricsServer
from .settings import MonitorSettings, RunOptions
from .view import View
from .windows import Window

__all__ = ["Monitor", "MonitorSettings"]

log = logging.getLogger("streammon")


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
        except ValidationError as exc:  # pydantic's message names the field and the problem
            raise RegistrationError(f"Monitor({name!r}): {exc}") from None
        self.name = name
        self.pipeline = Pipeline(self.settings, dead_letter)
        self._engine = self.pipeline.new_engine(())
        self._view: View | None = self._engine  # what the metric collectors read: this engine, or a group's merge
        self._status = RunStatus()
        self.registry = CollectorRegistry(auto_describe=False)
        self._collectors: list[Any] = []
        self._serve_local()
        self._server: MetricsServer | None = None
        self._stop = threading.Event()

    @property
    def dead_letter(self) -> DeadLetterSink | None:
        return self.pipeline.dead_letter

    @dead_letter.setter
    def dead_letter(self, sink: DeadLetterSink | None) -> None:
        self.pipeline.dead_letter = sink

    # -- what /metrics shows, by mode ---------------------------------------------------------
    def _use(self, *collectors: Any) -> None:
        for c in self._collectors:
            self.registry.unregister(c)
        self._collectors = list(collectors)
        for c in collectors:
            self.registry.register(c)

    def _serve_local(self) -> None:
        lock, view = self.pipeline.lock, lambda: self._view
        self._use(MetricsCollector(self.name, view, lock), JoinHealthCollector(self.name, view, lock),
                  ProcessingCollector(self.name, lambda: self._engine.health, lock),
                  RuntimeCollector(self.name, self._status, self.pipeline))

    # -- registration -----------------------------------------------------------------------
    @property
    def metrics(self) -> list[Tracked]:
        return [t for t, _ in self._engine.metrics]

    def _add(self, tracked: Tracked) -> None:
        with self.pipeline.lock:
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
        self.pipeline.process(self._engine, messages)

    def run(self, source: Source, *, state_dir: str | None = None, checkpoint_interval: float = 5.0,
            max_records: int | None = None, poll_timeout: float = 0.5, until: Callable[[], bool] | None = None,
            publish_interval: float = 1.0, background_checkpoints: bool = True, max_idle: float = 0.5,
            join_store: Literal["auto", "memory", "disk"] = "auto") -> None:
        """Consume ``source`` until it is exhausted, ``until()`` is true, or :meth:`stop` is called.

        A Kafka source is read aligned by event time: both topics are processed in one order that
        depends only on what the partitions hold, never on fetch sizes, poll timing, backlogs,
        restarts or rebalances. An empty partition is waited for while the broker reports records
        in it, and for ``max_idle`` seconds once it is at its end (docs/kafka.md, "Input order").

        With ``state_dir``, state and offsets are checkpointed together every ``checkpoint_interval``
        seconds (and at a clean stop), and a restart resumes from the last checkpoint: a worker killed
        at any moment counts every event exactly once (see docs/kafka.md). Snapshots are written by a
        forked child while this process goes on (``background_checkpoints``, where the OS can fork),
        and offsets are committed once the snapshot is on disk. A single worker with a ``state_dir``
        keeps the join in RocksDB there (``join_store="auto"``, the default; ``"disk"`` forces it), and a
        checkpoint writes only what changed, with the offsets, in one synced batch; ``"memory"`` keeps
        the join in RAM, snapshotted whole (docs/kafka.md, "The disk-backed join store").

        A source shared by a group of workers (``KafkaSource(..., scale_out=True)``) keeps state per
        partition in ``state_dir`` (which every worker must share) and writes each partition's
        partial aggregates there every ``publish_interval`` seconds; :meth:`export` serves their merge.
        """
        try:
            options = RunOptions(state_dir=state_dir, checkpoint_interval=checkpoint_interval, max_records=max_records,
                                 poll_timeout=poll_timeout, until=until, publish_interval=publish_interval,
                                 background_checkpoints=background_checkpoints, max_idle=max_idle,
                                 join_store=join_store)
        except ValidationError as exc:
            raise RegistrationError(f"Monitor.run(): {exc}") from None
        try:
            if isinstance(source, GroupSource) and source.scale_out:
                from .scaleout import scaled_out_runner
                runner, worker = scaled_out_runner(self.pipeline, self.metrics, source, options, stop=self._stop.is_set)
                # A scaled-out worker holds only some partitions: its metrics are served by the exporter.
                self._use(WorkerCollector(self.name, worker, self.pipeline.lock),
                          ProcessingCollector(self.name, lambda: worker.batch_health, self.pipeline.lock),
                          RuntimeCollector(self.name, self._status, self.pipeline))
            else:
                runner = Runner.single(self.pipeline, self._engine, source, options, stop=self._stop.is_set)
            self._status.source, self._status.coordinator = source, runner.coordinator
            try:
                with tuned_gc():
                    runner.run()
            finally:
                if isinstance(runner.states, SingleState):
                    runner.states.close()
        finally:
            self._stop.clear()  # here, not on entry, so a stop() that came before run() is honoured
            self._status.source = None
            source.close()

    def stop(self) -> None:
        self._stop.set()

    def export(self, state_dir: str, *, refresh: float = 0.5, until: Callable[[], bool] | None = None) -> None:
        """Serve the global metrics of a scaled-out group: merge the partial aggregates every worker
        writes to ``state_dir`` for its partitions, every ``refresh`` seconds, until :meth:`stop`.

        Run it in its own process with the same app (``streammon export``), and point Prometheus at it.
        """
        exporter = self._exporting(state_dir)
        try:
            while not self._stop.is_set() and not (until and until()):
                started = time.monotonic()
                exporter.refresh()
                # A merge that takes long (many partitions x series x panes) is not run back to back.
                self._stop.wait(max(refresh, 2 * (time.monotonic() - started)))
        finally:
            self._stop.clear()

    def _exporting(self, state_dir: str) -> Any:
        """Serve the merge of a group's partials from now on, as the returned exporter's refresh() reads them."""
        from .scaleout import PartialsExporter

        def show(view: View) -> None:
            with self.pipeline.lock:
                self._view = view
        exporter = PartialsExporter(self.settings, self.pipeline.new_engine(self.metrics), state_dir, on_view=show)
        self._status.exporter = exporter
        lock, view = self.pipeline.lock, lambda: self._view
        self._use(MetricsCollector(self.name, view, lock), JoinHealthCollector(self.name, view, lock),
                  RuntimeCollector(self.name, self._status, self.pipeline), PartialsCollector(self.name, exporter))
        return exporter

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
