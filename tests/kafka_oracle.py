"""The oracle check shared by the Kafka worker tests: /metrics of tests/kafka_app.py against sklearn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, mean_absolute_error

from streammon import EventError, decode_event
from tests.oracle import run_oracle

KIND = {"predictions": "prediction", "feedback": "feedback"}


def valid(topic: str, key: str, value: bytes) -> bool:
    try:
        decode_event(value, kind=KIND[topic], key=key, now=2e9)
        return True
    except EventError:
        return False


def partition_of(key: str, partitions: int) -> int:
    """The partition the tests produce an id to (explicitly, so the oracle knows each partition's contents)."""
    return int(key[1:]) % partitions


def aligned(events: list[tuple[str, str, bytes]], partitions: int) -> list[tuple[str, str, bytes]]:
    """``events`` in the order an aligned worker processes them (docs/kafka.md, "Input order"), recomputed:
    by the largest event time so far in the record's partition, then predictions first, partition, offset."""
    marks: dict[tuple[str, int], float] = {}
    offsets: dict[tuple[str, int], int] = {}
    rows = []
    for topic, key, value in events:
        tp = (topic, partition_of(key, partitions))
        offsets[tp] = offsets.get(tp, -1) + 1
        if valid(topic, key, value):
            marks[tp] = max(marks.get(tp, float("-inf")), json.loads(value)["ts"])
        rows.append(((marks.get(tp, float("-inf")), topic != "predictions", tp[1], offsets[tp]), (topic, key, value)))
    rows.sort(key=lambda row: row[0])
    return [event for _, event in rows]


def aligned_messages(messages, accepted) -> list:
    """Consumed ``messages`` (each partition's in offset order) in the order an aligned worker processes them;
    ``accepted(message)`` says whether the monitor accepts one (a rejected message takes no event time)."""
    marks: dict[tuple[str, int], float] = {}
    rows = []
    for m in sorted(messages, key=lambda m: (m.topic, m.partition, m.offset)):
        tp = (m.topic, m.partition)
        if accepted(m):
            marks[tp] = max(marks.get(tp, float("-inf")), json.loads(m.value)["ts"])
        rows.append(((marks.get(tp, float("-inf")), m.kind != "prediction", m.partition, m.offset), m))
    rows.sort(key=lambda row: row[0])
    return [m for _, m in rows]


def assert_equals_oracle(got: dict, events: list[tuple[str, str, bytes]], *, feedback_ttl: float = 100 * 86400,
                         prediction_ttl: float = 100 * 86400) -> None:
    """``got`` (a scrape) holds what the oracle computes from ``events`` ((topic, key, value) in processing order)."""
    accepted = [json.loads(value) for topic, key, value in events if valid(topic, key, value)]
    oracle = run_oracle(accepted, feedback_ttl=feedback_ttl, prediction_ttl=prediction_ttl, segments=("version",))

    def metric(name, **labels):
        return got[(name, tuple(sorted({"monitor": "kafka_test", "model": "default", **labels}.items())))]

    class TenMinutes:  # the sliding window of the app
        size, step, panes, grace = 600.0, 60.0, 10, 60.0

    pairs = oracle.select("pair", None)
    for version in ("v0", "v1", "v2"):
        rows = [r for r in pairs if r.segment == (version,)]
        y_true, y_pred = [r.y_true for r in rows], [r.y_pred for r in rows]
        assert metric("streammon_accuracy", window="cumulative", version=version) == pytest.approx(accuracy_score(y_true, y_pred), rel=1e-12)
        assert metric("streammon_mae", window="cumulative", version=version) == pytest.approx(mean_absolute_error(y_true, y_pred), rel=1e-9)
        assert metric("streammon_accuracy_count", window="cumulative", version=version) == len(rows)
        missed = np.mean([t == 1 and p == 0 for t, p in zip(y_true, y_pred)])
        assert metric("streammon_missed_positive", window="cumulative", version=version) == pytest.approx(missed, rel=1e-9)
        preds = [r for r in oracle.select("prediction", None) if r.segment == (version,)]
        assert metric("streammon_predictions", window="cumulative", version=version) == len(preds)
        assert metric("streammon_mean_score", window="cumulative", version=version) == pytest.approx(np.mean([r.score for r in preds]), rel=1e-9)
        windowed = [r for r in oracle.select("pair", TenMinutes) if r.segment == (version,)]
        assert metric("streammon_accuracy_count", window="10m", version=version) == len(windowed)
        if windowed:  # an empty window publishes NaN
            assert metric("streammon_accuracy", window="10m", version=version) == pytest.approx(
                accuracy_score([r.y_true for r in windowed], [r.y_pred for r in windowed]), rel=1e-12)
    mon = {"monitor": "kafka_test"}

    def health(name, **labels):
        return got[(name, tuple(sorted({**mon, **labels}.items())))]
    assert health("streammon_join_pending", side="prediction") == oracle.pending_predictions
    assert health("streammon_join_pending", side="feedback") == oracle.pending_feedback
    assert health("streammon_joined_total") == oracle.joined
    for side in ("prediction", "feedback"):
        assert health("streammon_join_expired_total", side=side) == oracle.expired[side]
    for side in ("prediction", "feedback"):
        assert health("streammon_duplicates_total", side=side) == oracle.duplicates[side]
    rejected = sum(v for (n, labels), v in got.items() if n == "streammon_events_total" and dict(labels)["outcome"] == "rejected")
    assert rejected == len(events) - len(accepted) > 0
