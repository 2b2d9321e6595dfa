"""The per-batch pipeline: join, then feed every metric's windows with columns, then count health."""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .events import Event, Prediction
from .join import DUPLICATE, JoinStore
from .panes import Grouped, WindowState, group_rows, make_state
from .registry import Feed, Tracked
from .windows import Sliding

log = logging.getLogger("streammon")

OTHER = "__other__"
PROCESSING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_NO_SEGMENT: dict[str, str] = {}


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
        if self.segments:
            key = (model, *map((segment or _NO_SEGMENT).get, self.segments, self._blanks))
        else:
            key = model
        code = self._codes.get(key)
        if code is None:
            code = self._intern(key)
        return code

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


class Engine:
    """Holds the state of one monitor (join store, window states, counters) and applies batches."""

    def __init__(self, store: JoinStore, keys: SeriesKeys) -> None:
        self.store = store
        self.keys = keys
        self.health = Health()
        self.stream_time = float("-inf")
        self.metrics: list[tuple[Tracked, list[WindowState]]] = []
        self._logged_errors: set[str] = set()

    def add_metric(self, tracked: Tracked) -> None:
        errors = self._error_sink(tracked.name)
        states = [make_state(w, tracked.prototype, tracked.caps, errors) for w in tracked.windows]
        self.metrics.append((tracked, states))

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
        store, keys = self.store, self.keys
        now = self.stream_time
        preds: list[tuple[Prediction, int, float]] = []
        fbs: list[tuple[Event, int, float]] = []
        pairs: list[tuple] = []
        pair_now: list[float] = []
        dup_p = dup_f = 0
        for ev in events:
            if ev.ts > now:
                now = ev.ts
            if ev.kind == "prediction":
                code = keys.code(ev.model, ev.segment)
                got = store.add_prediction(ev.id, ev.ts, code, ev.prediction, ev.score, now)
                if got is DUPLICATE:
                    dup_p += 1
                    continue
                preds.append((ev, code, now))
            else:
                got = store.add_feedback(ev.id, ev.ts, ev.label, now)
                if got is DUPLICATE:
                    dup_f += 1
                    continue
                fbs.append((ev, keys.code(ev.model or "default", None), now))
            if got is not None:
                pairs.append(got)
                pair_now.append(now)
        self.stream_time = now
        events_count = self.health.events
        events_count[("predictions", "accepted")] += len(preds)
        events_count[("feedback", "accepted")] += len(fbs)
        events_count[("predictions", "duplicate")] += dup_p
        events_count[("feedback", "duplicate")] += dup_f
        store.expire(now)
        self._feed_windows(now, preds, fbs, pairs, pair_now)
        self.health.observe_batch(time.perf_counter() - started)

    def _feed_windows(self, now, preds, fbs, pairs, pair_now) -> None:
        # Columns and their grouping by (series, pane) are built once per batch and shared by every
        # metric that reads the same columns in the same window.
        columns_of: dict[tuple, _Columns | None] = {}
        grouped_of: dict[tuple, Grouped] = {}
        late_seen: set[tuple] = set()
        for tracked, states in self.metrics:
            feed = tracked.feed
            if feed.key not in columns_of:
                columns_of[feed.key] = self._columns(feed, preds, fbs, pairs, pair_now)
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

    def _columns(self, feed: Feed, preds, fbs, pairs, pair_now) -> _Columns | None:
        if feed.stream == "pair":
            rows, nows = pairs, pair_now
            if not rows:
                return None
            # Pair = (pred ts, fb ts, code, y_true, y_pred, score, id)
            pred_ts, fb_ts, codes, y_true, y_pred, score, ids = zip(*rows)
            times = np.array(pred_ts if feed.time == "prediction" else fb_ts, dtype=np.float64)
            named = {"y_true": y_true, "y_pred": y_pred, "score": score}
            if "delay" in feed.fields:
                named["delay"] = np.subtract(fb_ts, pred_ts)
            nows_a = np.array(nows, dtype=np.float64)
        elif feed.stream == "prediction":
            if not preds:
                return None
            evs, codes, nows = zip(*preds)
            times = np.array([e.ts for e in evs], dtype=np.float64)
            ids = [e.id for e in evs]
            (field_name,) = feed.fields
            if field_name == "prediction":
                values = [e.prediction for e in evs]
            elif field_name == "score":
                values = [_score_value(e.score) for e in evs]
            else:
                feature = field_name[len("features."):]
                values = [(e.features or {}).get(feature) for e in evs]
            named = {field_name: values}
            nows_a = np.array(nows, dtype=np.float64)
        else:
            if not fbs:
                return None
            evs, codes, nows = zip(*fbs)
            times = np.array([e.ts for e in evs], dtype=np.float64)
            ids = [e.id for e in evs]
            named = {"label": [e.label for e in evs]}
            nows_a = np.array(nows, dtype=np.float64)
        codes_a = np.array(codes, dtype=np.int64)
        ids_a = _objects(list(ids))
        cols = [self._column(named[f]) for f in feed.fields]
        all_times = times
        if "score" in feed.fields and not feed.keep_missing:
            # Rows without a score cannot feed a score metric; they are left out of it (its _count shows it).
            has = np.array([v is not None for v in named["score"]], dtype=bool)
            if not has.all():
                codes_a, times, ids_a = codes_a[has], times[has], ids_a[has]
                cols = [c[has] for c in cols]
        return _Columns(codes_a, times, cols, ids_a, all_times, nows_a)

    @staticmethod
    def _column(values: Any) -> np.ndarray:
        if isinstance(values, np.ndarray):
            return values
        values = list(values)
        # Plain numbers become numeric arrays for vectorised operators; anything else (classes as
        # strings or booleans, None, maps) stays objects. Ints stay ints so classes keep their names.
        types = set(map(type, values))
        try:
            if types == {int}:
                return np.array(values, dtype=np.int64)
            if types and types <= {int, float}:
                return np.array(values, dtype=np.float64)
        except OverflowError:  # numbers beyond what numpy holds stay Python objects
            pass
        return _objects(values)
