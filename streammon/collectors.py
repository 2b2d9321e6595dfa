"""What ``/metrics`` shows: one prometheus_client collector per concern, read at scrape time.

A monitor registers the collectors of its mode: a worker reading every partition serves its metrics,
their health and its runtime; a scaled-out worker only its own runtime (the exporter serves the
metrics); the exporter the merged metrics, their health and the partials' age.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .connectors.base import AlignableSource, SourceHealth
from .engine import OTHER, PROCESSING_BUCKETS, Health
from .view import View

if TYPE_CHECKING:
    from .connectors.base import Source
    from .pipeline import Pipeline
    from .runner import CheckpointCoordinator
    from .scaleout import PartialsExporter, PartitionWorker

__all__ = ["Sample", "samples", "RunStatus", "MetricsCollector", "JoinHealthCollector", "ProcessingCollector",
           "RuntimeCollector", "WorkerCollector", "PartialsCollector"]

PREFIX = "streammon_"
MAX_OUTPUT_KEYS = 100


class Sample(NamedTuple):
    """One published series: exactly a line of ``/metrics``."""

    name: str
    labels: dict[str, str]
    value: float


def samples(registry: CollectorRegistry) -> list[Sample]:
    return [Sample(s.name, dict(s.labels), float(s.value)) for family in registry.collect() for s in family.samples]


@dataclass
class RunStatus:
    """What a running worker shows of itself: set while :meth:`Monitor.run` or :meth:`Monitor.export` runs."""

    source: Source | None = None
    coordinator: CheckpointCoordinator | None = None  # kept after a run: its last checkpoint's age stays shown
    worker: PartitionWorker | None = None
    exporter: PartialsExporter | None = None


class _ViewCollector:
    """Families read from the monitor's view (none before there is one), under its lock."""

    def __init__(self, name: str, view: Callable[[], View | None], lock: threading.RLock) -> None:
        self.name, self.view, self.lock = name, view, lock

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            view = self.view()
            if view is not None:
                yield from self._families(view)

    def _families(self, view: View) -> Iterator[Metric]:
        raise NotImplementedError


class MetricsCollector(_ViewCollector):
    """One gauge family per metric (and its ``_count``), from the view's window states."""

    def _families(self, view: View) -> Iterator[Metric]:
        base = ["monitor", "model", "window", *view.keys.segments]
        for tracked, states in view.metrics:
            name = PREFIX + tracked.name
            doc = f"{tracked.name} ({type(getattr(tracked.prototype, 'stat', tracked.prototype)).__name__} over {tracked.feed.stream}s)"
            out = tracked.output_label
            values = GaugeMetricFamily(name, doc, labels=base + [out] if out else base)
            counts = GaugeMetricFamily(name + "_count", f"Events in the window of {tracked.name}", labels=base)
            for state in states:
                for code, count, op in state.series():
                    labels = [self.name, *view.keys.labels[code][:1], state.window.label, *view.keys.labels[code][1:]]
                    counts.add_metric(labels, count)
                    value = _value(view, tracked.name, state.window.label, op, count)
                    if out is None:
                        values.add_metric(labels, value if isinstance(value, float) else math.nan)
                    elif isinstance(value, dict):
                        for key, v in list(value.items())[:MAX_OUTPUT_KEYS]:
                            values.add_metric(labels + [str(key)], _number(v))
            yield values
            yield counts
        start = GaugeMetricFamily(PREFIX + "metric_start_time_seconds", "When a metric added to an app with saved "
                                  "state started counting (empty, at the restored offsets)", labels=["monitor", "metric"])
        for metric, seconds in sorted(view.metric_start.items()):
            start.add_metric([self.name, metric], seconds)
        yield start


def _value(view: View, name: str, window: str, op: Any, count: int) -> Any:
    if count == 0:
        return math.nan
    try:
        value = op.get()
    except Exception as exc:  # noqa: BLE001 - a user finalizer must never break a scrape
        view.metric_error(name, window, exc)
        return math.nan
    return value if isinstance(value, dict) else _number(value)


class JoinHealthCollector(_ViewCollector):
    """Events read, the join's state and counters, late events, operator errors, the cardinality guard, stream time."""

    def _families(self, view: View) -> Iterator[Metric]:
        health = view.health
        mon = [self.name]
        events = CounterMetricFamily(PREFIX + "events", "Events read, by topic and outcome", labels=["monitor", "topic", "outcome"])
        for (topic, outcome), n in sorted(health.events.items()):
            events.add_metric(mon + [topic, outcome], n)
        yield events
        pending = GaugeMetricFamily(PREFIX + "join_pending", "Entries waiting for the other side of the join", labels=["monitor", "side"])
        pending.add_metric(mon + ["prediction"], view.pending_predictions)
        pending.add_metric(mon + ["feedback"], view.pending_feedback)
        yield pending
        c = view.counts
        joined = CounterMetricFamily(PREFIX + "joined", "Predictions joined with their feedback", labels=["monitor"])
        joined.add_metric(mon, c.joined)
        yield joined
        for fam, doc, pred, fb in (
            ("join_expired", "Join entries that timed out unmatched, by side", c.expired_predictions, c.expired_feedback),
            ("join_evicted", "Join entries evicted past max_pending, by side", c.evicted_predictions, c.evicted_feedback),
            ("duplicates", "Duplicate events ignored (same id, same side)", c.duplicate_predictions, c.duplicate_feedback),
        ):
            family = CounterMetricFamily(PREFIX + fam, doc, labels=["monitor", "side"])
            family.add_metric(mon + ["prediction"], pred)
            family.add_metric(mon + ["feedback"], fb)
            yield family
        late = CounterMetricFamily(PREFIX + "late_events", "Events too old to enter a sliding window, by the event time "
                                   "judged (a pair is judged by its prediction's or its feedback's time)",
                                   labels=["monitor", "window", "stream", "time"])
        for (window, stream, basis), n in sorted(health.late.items()):
            late.add_metric(mon + [window, stream, basis], n)
        yield late
        errors = CounterMetricFamily(PREFIX + "operator_errors", "Events a metric's operator raised on", labels=["monitor", "metric", "window"])
        for (metric, window), n in sorted(health.operator_errors.items()):
            errors.add_metric(mon + [metric, window], n)
        yield errors
        overflow = CounterMetricFamily(PREFIX + "segment_overflow", f"Events whose label value went to {OTHER} (cardinality guard)", labels=["monitor", "label"])
        for label, n in sorted(view.keys.overflow.items()):
            overflow.add_metric(mon + [label], n)
        yield overflow
        dead = CounterMetricFamily(PREFIX + "dead_letters", "Rejected events handed to the dead-letter sink", labels=["monitor"])
        dead.add_metric(mon, health.dead_letters)
        yield dead
        stream_time = GaugeMetricFamily(PREFIX + "stream_time_seconds", "Largest event time seen (the watermark)", labels=["monitor"])
        stream_time.add_metric(mon, view.stream_time if math.isfinite(view.stream_time) else math.nan)
        yield stream_time


class ProcessingCollector:
    """The histogram of batch processing time of this process."""

    def __init__(self, name: str, health: Callable[[], Health | None], lock: threading.RLock) -> None:
        self.name, self.health, self.lock = name, health, lock

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            health = self.health()
            if health is None:
                return
            cumulative, buckets = 0, []
            for bound, n in zip((*map(str, PROCESSING_BUCKETS), "+Inf"), health.batch_buckets):
                cumulative += n
                buckets.append((bound, cumulative))
            hist = HistogramMetricFamily(PREFIX + "processing_seconds", "Time to process one batch of events", labels=["monitor"])
            hist.add_metric([self.name], buckets, health.batch_seconds)
            yield hist


class RuntimeCollector:
    """This process's checkpoint age, dead-letter failures, and its source's connection and lag."""

    def __init__(self, name: str, status: RunStatus, pipeline: Pipeline) -> None:
        self.name, self.status, self.pipeline = name, status, pipeline

    def collect(self) -> Iterator[Metric]:
        mon = [self.name]
        coordinator = self.status.coordinator
        if coordinator is not None and coordinator.last_saved is not None:
            age = GaugeMetricFamily(PREFIX + "checkpoint_age_seconds", "Seconds since the last checkpoint", labels=["monitor"])
            age.add_metric(mon, max(0.0, time.time() - coordinator.last_saved))
            yield age
        lost = CounterMetricFamily(PREFIX + "dead_letter_failures", "Rejected events the dead-letter sink could not "
                                   "deliver (logged; after truncation to its max_record_bytes)", labels=["monitor"])
        lost.add_metric(mon, self.pipeline.dead_letter_failures)
        yield lost
        source = self.status.source
        if source is None:
            return
        if isinstance(source, SourceHealth):
            up = GaugeMetricFamily(PREFIX + "source_connected", "1 while the source reaches its broker", labels=["monitor"])
            up.add_metric(mon, 1.0 if source.connected else 0.0)
            yield up
        if isinstance(source, (SourceHealth, AlignableSource)):
            lag = GaugeMetricFamily(PREFIX + "consumer_lag", "Messages behind the end of each input partition",
                                    labels=["monitor", "topic", "partition"])
            for (topic, partition), n in sorted(source.lag().items()):
                lag.add_metric(mon + [topic, str(partition)], n)
            yield lag


class WorkerCollector:
    """A scaled-out worker: how many partitions it owns (its metrics are served by the exporter)."""

    def __init__(self, name: str, worker: PartitionWorker, lock: threading.RLock) -> None:
        self.name, self.worker, self.lock = name, worker, lock

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            owned = GaugeMetricFamily(PREFIX + "worker_partitions", "Input partitions this worker owns (scaled out)", labels=["monitor"])
            owned.add_metric([self.name], len(self.worker.states))
            yield owned


class PartialsCollector:
    """The exporter: how old each partition's partials are, and the file versions it could not use."""

    def __init__(self, name: str, exporter: PartialsExporter) -> None:
        self.name, self.exporter = name, exporter

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(PREFIX + "partials_age_seconds", "Seconds since each partition's partial aggregates were "
                                "written by its worker (scaled out)", labels=["monitor", "partition"])
        for partition, seconds in sorted(self.exporter.ages().items()):
            age.add_metric([self.name, str(partition)], seconds)
        yield age
        errors = CounterMetricFamily(PREFIX + "partials_errors", "Versions of a partition's partials file the exporter "
                                     "could not use (truncated, garbage, another app's); it kept the last good one",
                                     labels=["monitor", "partition"])
        for partition_name, n in sorted(list(self.exporter.errors.items())):
            errors.add_metric([self.name, partition_name], n)
        yield errors


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # a user operator's get() returned something else: NaN, not a broken scrape
        return math.nan
