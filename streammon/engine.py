"""The per-batch pipeline: join, then feed every metric's windows with columns, then count health."""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .events import Event
from .join import JoinCounts, Joined, JoinStore
from .registry import Feed, Tracked
from .window_state import Grouped, WindowState, group_rows, make_state
from .windows import Sliding

log = logging.getLogger("streammon")

OTHER = "__other__"
PROCESSING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_NO_SEGMENT: dict[str, str] = {}
_ACCEPTED_AND_DUPLICATE = [(topic, outcome) for outcome in ("accepted", "duplicate") for topic in ("predictions", "feedback")]


class SeriesKeys:
    """Interns (model, segment values) into small integer codes, capping distinct values per label."""

    def __init__(self, segments: Sequence[str], max_values: int) -> None:
        self.segments = tuple(segments)
        self._blanks = ("",) * len(self.segments)
        self.max_values = max_values
        self._codes: dict[Any, int] = {}
        self.labels: list[tuple[str, ...]] = []  # code -> (model, *segment values)
        self._seen: list[set[str]] = [set() for _ in range(1 + len(self.segments))]
        self.overflow: dict[str, int] = defaultdict(int)  # label name -> events sent to __other__

    def code(self, model: str, segment: dict[str, str] | None) -> int:
        key = (model, *map((segment or _NO_SEGMENT).get, self.segments, self._blanks)) if self.segments else model
        code = self._codes.get(key)
        if code is None:
            code = self._intern(key)
        return code

    def codes(self, events: Sequence[Event], everyone: bool) -> list[int]:
        """:meth:`code` of each prediction in ``events`` (and of each feedback if ``everyone``,
        else -1), in order, so the cardinality guard sees values in arrival order."""
        known, segments, code = self._codes, self.segments, self.code
        out: list[int] = []
        append = out.append
        one = segments[0] if len(segments) == 1 else None
        for ev in events:
            if ev.kind == "prediction":
                model, segment = ev.model, ev.segment
            elif everyone:
                model, segment = ev.model or "default", None
            else:
                append(-1)
                continue
            # The key of code() for the usual shapes, looked up without a call.
            if one is not None:
                c = known.get((model, segment.get(one, "") if segment else ""))
            elif not segments:
                c = known.get(model)
            else:
                c = None
            append(code(model, segment) if c is None else c)
        return out

    def _intern(self, key: Any) -> int:
        values = key if isinstance(key, tuple) else (key,)
        guarded = []
        for i, (name, value) in enumerate(zip(("model", *self.segments), values)):
            seen = self._seen[i]
            if value not in seen:
                if len(seen) >= self.max_values:
                    self.overflow[name] += 1
                    value = OTHER
                else:
                    seen.add(value)
            guarded.append(value)
        guarded_t = tuple(guarded)
        # Overflowing values share the __other__ series; the raw key is not cached so each is counted.
        if guarded_t != values:
            target = self._codes.get(guarded_t if self.segments else guarded_t[0])
            if target is None:
                target = self._new(guarded_t if self.segments else guarded_t[0], guarded_t)
            return target
        return self._new(key, guarded_t)

    def _new(self, key: Any, labels: tuple[str, ...]) -> int:
        code = len(self.labels)
        self._codes[key] = code
        self.labels.append(labels)
        return code


@dataclass
class Health:
    """Counters behind the self metrics."""

    events: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (topic, outcome)
    late: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))  # (window, stream, time)
    operator_errors: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (metric, window)
    dead_letters: int = 0
    # Histogram of batch processing time: counts per bucket of PROCESSING_BUCKETS (+Inf last), and the sum.
    batch_buckets: list[int] = field(default_factory=lambda: [0] * (len(PROCESSING_BUCKETS) + 1))
    batch_seconds: float = 0.0

    def observe_batch(self, seconds: float) -> None:
        self.batch_buckets[bisect.bisect_left(PROCESSING_BUCKETS, seconds)] += 1
        self.batch_seconds += seconds


@dataclass
class _Columns:
    codes: np.ndarray
    times: np.ndarray
    cols: list[np.ndarray]
    ids: np.ndarray
    # Every row of the stream, before rows a metric cannot read (no score) are left out: lateness is
    # a property of the event, not of the metric.
    all_times: np.ndarray
    all_arrivals: np.ndarray  # stream time when each row arrived


def _objects(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _score_value(score: Any) -> Any:
    # A class -> probability map stands for the probability of the predicted (most likely) class.
    if isinstance(score, dict):
        return max(score.values()) if score else None
    return score


class _Batch:
    """One batch, joined: its rows by stream, with each column built once, when first asked for."""

    def __init__(self, events: Sequence[Event], is_pred: list[bool], ids: list[str], times: list[float],
                 nows: list[float], codes: list[int], values: list[Any], scores: list[Any], joined: Joined) -> None:
        self.events, self.values, self.scores, self.joined = events, values, scores, joined
        self.ids = _objects(ids)
        self.times = np.array(times, dtype=np.float64)
        self.nows = np.array(nows, dtype=np.float64)
        self.codes = np.array(codes, dtype=np.int64)
        kinds = np.array(is_pred, dtype=bool)
        accepted = np.array(joined.accepted, dtype=bool)
        self.rows = {"prediction": np.flatnonzero(kinds & accepted), "feedback": np.flatnonzero(~kinds & accepted)}
        self.at = np.array(joined.at, dtype=np.int64)
        self._cache: dict[tuple[str, str], Any] = {}

    def count(self, stream: str) -> int:
        return len(self.at) if stream == "pair" else len(self.rows[stream])

    def column(self, stream: str, name: str) -> Any:
        """A column of ``stream``'s rows: a list of values for ``name``, or an array for the row keys."""
        key = (stream, name)
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = self._build(stream, name)
        return got

    def _build(self, stream: str, name: str) -> Any:
        j = self.joined
        if stream == "pair":
            pair_cols = {"pred_ts": j.pred_ts, "fb_ts": j.fb_ts, "y_true": j.y_true, "y_pred": j.y_pred, "score": j.score}
            if name in pair_cols:
                return pair_cols[name] if name in ("y_true", "y_pred", "score") else np.array(pair_cols[name], dtype=np.float64)
            if name == "delay":
                return self.column("pair", "fb_ts") - self.column("pair", "pred_ts")
            if name == "codes":
                return np.array(j.code, dtype=np.int64)
            return getattr(self, name)[self.at]  # ids, nows
        rows = self.rows[stream]
        if name in ("ids", "times", "nows", "codes"):
            return getattr(self, name)[rows]
        idx = rows.tolist()
        if name in ("prediction", "label"):
            values = self.values
            return [values[i] for i in idx]
        if name == "score":
            scores = self.scores
            return [_score_value(scores[i]) for i in idx]
        feature = name[len("features."):]
        events: Sequence[Any] = self.events  # indexed by prediction rows: only they have features (registry)
        return [(events[i].features or _NO_SEGMENT).get(feature) for i in idx]


class Engine:
    """Holds the state of one monitor (join store, window states, counters) and applies batches."""

    def __init__(self, store: JoinStore, keys: SeriesKeys) -> None:
        self.store = store
        self.keys = keys
        self.health = Health()
        self.stream_time = float("-inf")
        # Per input partition, the largest event time of its records processed so far: where the
        # aligned input order (streammon.align) resumes after a restart.
        self.input_marks: dict[tuple[str, int], float] = {}
        self.metrics: list[tuple[Tracked, list[WindowState]]] = []
        # Metric -> wall time it started counting, for metrics added to an app whose state was saved before.
        self.metric_start: dict[str, float] = {}
        self._logged_errors: set[str] = set()

    def add_metric(self, tracked: Tracked) -> None:
        errors = self._error_sink(tracked.name)
        states = [make_state(w, tracked.prototype, tracked.caps, errors) for w in tracked.windows]
        self.metrics.append((tracked, states))

    # -- what a scrape reads (the View protocol) -------------------------------------------------
    @property
    def counts(self) -> JoinCounts:
        return self.store.counts

    @property
    def pending_predictions(self) -> int:
        return self.store.pending_predictions

    @property
    def pending_feedback(self) -> int:
        return self.store.pending_feedback

    def metric_error(self, name: str, window: str, exc: BaseException) -> None:
        """A metric's finalizer raised at a scrape: counted and logged like an operator error."""
        self._error_sink(name)(window, None, exc)

    def _error_sink(self, name: str):
        def record(window: str, event_id: Any, exc: BaseException) -> None:
            self.health.operator_errors[(name, window)] += 1
            if name not in self._logged_errors:
                self._logged_errors.add(name)
                log.error("metric %r raised on event %r (%s: %s); the event is skipped for this metric and "
                          "counted in streammon_operator_errors_total", name, event_id, type(exc).__name__, exc)
        return record

    # -- one batch --------------------------------------------------------------------------
    def apply(self, events: Sequence[Event]) -> None:
        started = time.perf_counter()
        if events:
            self._apply(events)
        else:
            for key in _ACCEPTED_AND_DUPLICATE:  # the counters exist from the first batch on, at zero
                self.health.events[key] += 0
            self._feed_windows(None)
        self.health.observe_batch(time.perf_counter() - started)

    def _apply(self, events: Sequence[Event]) -> None:
        # Attributes are read into lists once, so the join and the columns work on plain lists and arrays.
        is_pred = [ev.kind == "prediction" for ev in events]
        ids = [ev.id for ev in events]
        times = [ev.ts for ev in events]
        # Stream time at each event: the running maximum of event times.
        nows = np.maximum.accumulate(np.array([self.stream_time, *times], dtype=np.float64))[1:].tolist()
        # Each event's kind is in is_pred, so mypy cannot narrow it here, and an isinstance per event would slow these.
        mixed: Sequence[Any] = events
        values = [ev.prediction if p else ev.label for ev, p in zip(mixed, is_pred)]
        scores = [ev.score if p else None for ev, p in zip(mixed, is_pred)]
        reads_feedback = any(t.feed.stream == "feedback" for t, _ in self.metrics)
        codes = self.keys.codes(events, reads_feedback)
        joined = self.store.join(is_pred, ids, times, codes, values, scores, nows)
        self.stream_time = now = nows[-1]
        batch = _Batch(events, is_pred, ids, times, nows, codes, values, scores, joined)
        n_pred = int(np.count_nonzero(is_pred))
        accepted_pred, accepted_fb = len(batch.rows["prediction"]), len(batch.rows["feedback"])
        events_count = self.health.events
        events_count[("predictions", "accepted")] += accepted_pred
        events_count[("feedback", "accepted")] += accepted_fb
        events_count[("predictions", "duplicate")] += n_pred - accepted_pred
        events_count[("feedback", "duplicate")] += len(events) - n_pred - accepted_fb
        self.store.expire(now)
        self._feed_windows(batch)

    def _feed_windows(self, batch: _Batch | None) -> None:
        # Columns and their grouping by (series, pane) are built once per batch and shared by every
        # metric that reads the same columns in the same window.
        now = self.stream_time
        columns_of: dict[tuple, _Columns | None] = {}
        grouped_of: dict[tuple, Grouped] = {}
        late_seen: set[tuple] = set()
        for tracked, states in self.metrics:
            feed = tracked.feed
            if feed.key not in columns_of:
                columns_of[feed.key] = self._columns(feed, batch) if batch is not None else None
            columns = columns_of[feed.key]
            for state in states:
                state.advance(now)
                if columns is None:
                    continue
                window = state.window
                if isinstance(window, Sliding) and (feed.stream, feed.time, window) not in late_seen:
                    late_seen.add((feed.stream, feed.time, window))
                    late = int((columns.all_times < columns.all_arrivals - window.size - window.grace).sum())
                    if late:
                        self.health.late[(window.label, feed.stream, feed.time)] += late
                if not len(columns.ids):
                    continue
                grouped = grouped_of.get((feed.key, window))
                if grouped is None:
                    grouped = grouped_of[(feed.key, window)] = group_rows(
                        window, now, columns.codes, columns.times, columns.cols, columns.ids)
                state.add(grouped)

    def _columns(self, feed: Feed, batch: _Batch) -> _Columns | None:
        stream = feed.stream
        if not batch.count(stream):
            return None
        column = batch.column
        if stream == "pair":
            times = column("pair", "pred_ts" if feed.time == "prediction" else "fb_ts")
        else:
            times = column(stream, "times")
        codes, ids, nows = column(stream, "codes"), column(stream, "ids"), column(stream, "nows")
        cols = [self._typed(batch, stream, f) for f in feed.fields]
        all_times = times
        if "score" in feed.fields and not feed.keep_missing:
            # Rows without a score cannot feed a score metric; they are left out of it (its _count shows it).
            has = np.array([v is not None for v in column(stream, "score")], dtype=bool)
            if not has.all():
                codes, times, ids = codes[has], times[has], ids[has]
                cols = [c[has] for c in cols]
        return _Columns(codes, times, cols, ids, all_times, nows)

    def _typed(self, batch: _Batch, stream: str, name: str) -> np.ndarray:
        # The typed array of a column, cached beside the raw one: several feeds read y_true or score.
        key = (stream, "typed " + name)
        got = batch._cache.get(key)
        if got is None:
            got = batch._cache[key] = as_column(batch.column(stream, name))
        return got


def as_column(values: Any) -> np.ndarray:
    """A column as operators receive it: plain numbers as numeric arrays for vectorised operators;
    anything else (classes as strings or booleans, None, maps) as objects. Ints stay ints so classes keep their names."""
    if isinstance(values, np.ndarray):
        return values
    values = list(values)
    types = set(map(type, values))
    try:
        if types == {int}:
            return np.array(values, dtype=np.int64)
        if types and types <= {int, float}:
            return np.array(values, dtype=np.float64)
    except OverflowError:  # numbers beyond what numpy holds stay Python objects
        pass
    return _objects(values)
