"""The engine against the oracle: random streams with out-of-order, duplicate, missing, early and late events."""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river import metrics as river_metrics
from river import stats as river_stats
from sklearn.metrics import accuracy_score, recall_score

import streammon as sm
from streammon import operators as ops
from streammon.connectors import MemorySource
from tests.oracle import run_oracle

FEEDBACK_TTL, PREDICTION_TTL = 60.0, 25.0
SEGMENTS = ("version",)
WINDOWS = [sm.Cumulative(), sm.Sliding(40, 10), sm.Sliding(30, 30, grace=0)]


class MergeOnlyMean:
    """A user operator that can merge but not subtract: exercises per-pane merging at scrape."""

    def __init__(self) -> None:
        self.n, self.total = 0, 0.0

    def update(self, x) -> None:
        self.n += 1
        self.total += x

    def merge(self, other) -> None:
        self.n += other.n
        self.total += other.total

    def get(self) -> float:
        return self.total / self.n if self.n else math.nan


def mean_or_nan(values):
    return float(np.mean(values)) if len(values) else math.nan


# name -> (how to register it on a monitor, stream, oracle over the selected rows).
# Metrics that read the score see only the rows that have one (the rest cannot feed them).
READS_SCORE = {"mean_score", "river_mean_score"}
METRICS = {
    "accuracy_cm": (lambda m: m.track(ops.ConfusionMatrix(), name="accuracy_cm"), "pair",
                    lambda rows: accuracy_score([r.y_true for r in rows], [r.y_pred for r in rows])),
    "river_accuracy": (lambda m: m.track(river_metrics.Accuracy(), name="river_accuracy"), "pair",
                       lambda rows: accuracy_score([r.y_true for r in rows], [r.y_pred for r in rows])),
    "recall_pos": (lambda m: m.metric(lambda cm: cm.recall(1), stat=ops.ConfusionMatrix(), name="recall_pos"), "pair",
                   lambda rows: recall_score([r.y_true for r in rows], [r.y_pred for r in rows], pos_label=1, zero_division=0)),
    "abs_error": (lambda m: m.metric(lambda y_true, y_pred: abs(y_true - y_pred), name="abs_error"), "pair",
                  lambda rows: mean_or_nan([abs(r.y_true - r.y_pred) for r in rows])),
    "mean_delay": (lambda m: m.track(ops.Mean(of="delay"), name="mean_delay"), "pair",
                   lambda rows: mean_or_nan([r.fb_ts - r.pred_ts for r in rows])),
    "mean_score": (lambda m: m.track(ops.Mean(of="score"), name="mean_score"), "prediction",
                   lambda rows: mean_or_nan([r.score for r in rows])),
    "river_mean_score": (lambda m: m.track(river_stats.Mean(), of="score", name="river_mean_score"), "prediction",
                         lambda rows: mean_or_nan([r.score for r in rows])),
    "merge_only_age": (lambda m: m.track(MergeOnlyMean(), of="features.age", name="merge_only_age"), "prediction",
                       lambda rows: mean_or_nan([r.features["age"] for r in rows])),
    "volume": (lambda m: m.track(ops.Count(of="prediction"), name="volume"), "prediction", lambda rows: float(len(rows))),
    "mean_label": (lambda m: m.track(ops.Mean(of="label"), name="mean_label"), "feedback",
                   lambda rows: mean_or_nan([r.y_true for r in rows])),
}


@st.composite
def streams(draw):
    """Predictions with jittered times, feedback after a random delay (sometimes before its prediction
    arrives, sometimes never), duplicates of both sides, all shuffled locally so arrival order differs
    from event time."""
    n = draw(st.integers(1, 60))
    events = []
    for i in range(n):
        ts = float(draw(st.integers(10, 210)))
        pred = {"id": f"p{i}", "ts": ts, "prediction": draw(st.integers(0, 1)),
                "model": draw(st.sampled_from(["m0", "m1"])), "segment": {"version": draw(st.sampled_from(["v0", "v1"]))},
                "features": {"age": float(draw(st.integers(18, 90)))}}
        if draw(st.booleans()):
            pred["score"] = draw(st.integers(0, 1000)) / 1000
        events.append((ts, pred))
        if draw(st.integers(0, 9)) < 8:  # 20% never get feedback
            delay = float(draw(st.integers(-5, 80)))  # negative: feedback time before the prediction's
            fb = {"id": f"p{i}", "ts": ts + delay, "label": draw(st.integers(0, 1))}
            events.append((ts + delay + draw(st.integers(-30, 30)), fb))  # arrival jitter: early feedback happens
            if draw(st.integers(0, 9)) == 0:
                events.append((ts + delay + draw(st.integers(0, 100)), {**fb, "label": 1 - fb["label"]}))  # duplicate
        if draw(st.integers(0, 9)) == 0:
            events.append((ts + draw(st.integers(0, 100)), {**pred, "prediction": 1 - pred["prediction"]}))  # duplicate
    events.sort(key=lambda x: x[0])
    return [e for _, e in events]


def build_monitor(batch_size: int) -> sm.Monitor:
    monitor = sm.Monitor("prop", windows=WINDOWS, segments=SEGMENTS, feedback_ttl=FEEDBACK_TTL,
                         prediction_ttl=PREDICTION_TTL, batch_size=batch_size, max_future_seconds=1e12)
    for register, _, _ in METRICS.values():
        register(monitor)
    return monitor


def series_of(monitor: sm.Monitor):
    values, counts = {}, {}
    for s in monitor.values():
        key = (s.labels.get("model"), s.labels.get("version"), s.labels.get("window"))
        if s.name.endswith("_count") and s.name[len("streammon_"):-len("_count")] in METRICS:
            counts[(s.name[len("streammon_"):-len("_count")], *key)] = s.value
        elif s.name[len("streammon_"):] in METRICS:
            values[(s.name[len("streammon_"):], *key)] = s.value
    return values, counts


def check_against_oracle(events, batch_size, time_basis="prediction"):
    monitor = build_monitor(batch_size)
    monitor.replay(events)
    assert_equals_oracle(monitor, events, time_basis)


def assert_equals_oracle(monitor, events, time_basis="prediction"):
    """``monitor`` (built by :func:`build_monitor`) publishes what the oracle computes from ``events`` in that order."""
    result = run_oracle(events, feedback_ttl=FEEDBACK_TTL, prediction_ttl=PREDICTION_TTL, segments=SEGMENTS)
    values, counts = series_of(monitor)
    for name, (_, stream, oracle) in METRICS.items():
        for window in WINDOWS:
            spec = None if isinstance(window, sm.Cumulative) else window
            rows = result.select(stream, spec, time_basis)
            if name in READS_SCORE:
                rows = [r for r in rows if r.score is not None]
            groups = {}
            for r in rows:
                key = (r.model, r.segment[0] if stream != "feedback" else "")
                groups.setdefault(key, []).append(r)
            published = {(m, v): c for (n, m, v, w), c in counts.items() if n == name and w == window.label}
            # Every series with rows in the window is published with the right count, and no other has rows.
            published = {k: c for k, c in published.items() if c}
            assert published == {k: len(g) for k, g in groups.items()}, (name, window, published)
            for key, group in groups.items():
                expected = oracle(group)
                got = values.get((name, *key, window.label))
                assert got == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True), (name, window, key)
    # Join health equals the oracle's.
    by_name = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in monitor.values()}
    def one(name, **labels):
        return by_name[(name, tuple(sorted({"monitor": "prop", **labels}.items())))]
    assert one("streammon_joined_total") == result.joined
    for side in ("prediction", "feedback"):
        assert one("streammon_duplicates_total", side=side) == result.duplicates[side]
        assert one("streammon_join_expired_total", side=side) == result.expired[side]
    assert one("streammon_join_pending", side="prediction") == result.pending_predictions
    assert one("streammon_join_pending", side="feedback") == result.pending_feedback
    for window in WINDOWS[1:]:
        for stream in ("pair", "prediction", "feedback"):
            expected = result.late(stream, window, time_basis if stream == "pair" else stream)
            got = by_name.get(("streammon_late_events_total",
                               tuple(sorted({"monitor": "prop", "window": window.label, "stream": stream,
                                             "time": time_basis if stream == "pair" else stream}.items()))), 0)
            assert got == expected, (window, stream)


@pytest.mark.slow
@settings(max_examples=int(__import__("os").environ.get("PROP_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=streams(), batch_size=st.sampled_from([1, 3, 17, 4096]))
def test_every_metric_in_every_window_equals_the_oracle(events, batch_size):
    check_against_oracle(events, batch_size)


@pytest.mark.slow
@settings(max_examples=int(__import__("os").environ.get("PROP_EXAMPLES", 150)) // 3, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=streams(), batch_size=st.sampled_from([1, 17, 4096]))
def test_on_the_disk_store_every_metric_in_every_window_equals_the_oracle(events, batch_size):
    # The same stream through Monitor.run with the join in RocksDB, committed after every batch.
    monitor = build_monitor(batch_size)
    with tempfile.TemporaryDirectory(prefix="streammon-prop-") as state_dir:
        monitor.run(MemorySource(events), state_dir=state_dir, join_store="disk", checkpoint_interval=0.0)
        assert type(monitor._engine.store).__name__ == "DiskJoinStore"
    assert_equals_oracle(monitor, events)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=streams())
def test_results_do_not_depend_on_batching(events):
    one_by_one = build_monitor(1)
    one_by_one.replay(events)
    at_once = build_monitor(4096)
    at_once.replay(events)
    a = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in one_by_one.values() if "processing_seconds" not in s.name}
    b = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in at_once.values() if "processing_seconds" not in s.name}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12, nan_ok=True), k


def test_a_late_pair_counts_once_per_time_basis():
    m = sm.Monitor("x", windows=[sm.Sliding(10, 10, grace=0)], max_future_seconds=1e12)
    m.track(ops.Count(of="y_true"), name="a")
    m.track(ops.Count(of="y_true"), name="b", time="feedback")
    m.track(ops.Count(of="y_true"), name="c")  # a second metric on the same basis adds nothing
    m.replay([{"id": "z", "ts": 100, "prediction": 1}, {"id": "p", "ts": 1, "prediction": 1}, {"id": "p", "ts": 2, "label": 1}])
    late = {(s.labels["stream"], s.labels["time"]): s.value for s in m.values() if s.name == "streammon_late_events_total"}
    assert late == {("pair", "prediction"): 1, ("pair", "feedback"): 1}
