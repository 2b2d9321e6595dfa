"""Partials as deltas (streammon.scaleout.deltas): a view fed only what changed equals the merge of every
partition's whole partials (tests/test_partials.py checks that merge against the oracle), whatever the
interleaving of partitions and of deltas with batches."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streammon as sm
from streammon import operators as ops
from streammon.connectors import Message
from streammon.errors import CheckpointError
from streammon.scaleout import dump_partials, merge_partials
from streammon.scaleout.deltas import DELTA_FORMAT, DeltaView, take_delta
from streammon.scaleout.partials import decode_operators, load_partials, read_header
from tests.test_engine_properties import FEEDBACK_TTL, PREDICTION_TTL, streams
from tests.test_partials import build, partition_of


def served(view) -> dict:
    """What a scrape of ``view`` reads: per metric, window and series labels, (count, value); and the counters."""
    out = {}
    for tracked, states in view.metrics:
        for state in states:
            for code, count, op in state.series():
                value = op.get()
                out[(tracked.name, state.window.label, view.keys.labels[code])] = (count, value)
    out["counts"] = vars(view.counts)
    out["pending"] = (view.pending_predictions, view.pending_feedback)
    out["stream_time"] = view.stream_time
    out["errors"] = dict(view.health.operator_errors)
    out["events"] = dict(view.health.events)
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        g, w = got[key], want[key]
        if isinstance(w, tuple) and len(w) == 2 and isinstance(w[1], float):
            assert g[0] == w[0] and (g[1] == pytest.approx(w[1], rel=1e-9, abs=1e-12) or (math.isnan(g[1]) and math.isnan(w[1]))), key
        else:
            assert g == w, key


class Partition:
    def __init__(self, monitor, number):
        self.monitor, self.number = monitor, number
        self.engine = monitor.pipeline.new_engine(monitor.metrics)
        self.offset, self.labels_sent, self.begun = 0, 0, False

    def feed(self, events):
        self.monitor.pipeline.process(self.engine, [Message(e) for e in events])
        self.offset += len(events)

    def delta(self) -> bytes:
        data, self.labels_sent = take_delta(self.engine, partition=self.number, offsets={("t", self.number): self.offset},
                                            lineage="one", labels_sent=self.labels_sent, full=not self.begun)
        self.begun = True
        return data

    def whole(self) -> dict:
        return load_partials(dump_partials(self.engine, partition=self.number, offsets={("t", self.number): self.offset},
                                           lineage="one"), self.engine)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=streams(), count=st.sampled_from([1, 2, 3]), data=st.data())
def test_a_view_fed_deltas_equals_the_merge_of_whole_partials(events, count, data):
    ttl = dict(feedback_ttl=FEEDBACK_TTL, prediction_ttl=PREDICTION_TTL)
    monitor = build(**ttl)
    parts = [Partition(monitor, p) for p in range(count)]
    split = [[e for e in events if partition_of(e, count) == p] for p in range(count)]
    view = DeltaView(monitor.settings, monitor.pipeline.new_engine(monitor.metrics))
    at = [0] * count
    while any(at[p] < len(split[p]) for p in range(count)):
        p = data.draw(st.sampled_from([p for p in range(count) if at[p] < len(split[p])]))
        n = data.draw(st.integers(1, 7))
        parts[p].feed(split[p][at[p]:at[p] + n])
        at[p] += n
        if data.draw(st.booleans()):  # deltas are sent now and then, not after every batch
            assert view.apply(parts[p].delta())
        if data.draw(st.integers(0, 3)) == 0:  # a refresh: everyone's deltas up to now, then the two views
            for q in parts:
                assert view.apply(q.delta())
            want = merge_partials(monitor.settings, monitor.metrics, [q.whole() for q in parts])
            assert_same(served(view.view()), served(want))
    for q in parts:
        view.apply(q.delta())
    want = merge_partials(monitor.settings, monitor.metrics, [q.whole() for q in parts])
    assert_same(served(view.view()), served(want))


def counting() -> sm.Monitor:
    monitor = sm.Monitor("x", windows=[sm.Cumulative(), sm.Sliding(20, 10)])
    monitor.track(ops.Count(of="prediction"), name="n")
    return monitor


def test_a_delta_carries_only_what_changed_since_the_last():
    monitor = counting()
    part = Partition(monitor, 0)
    part.feed([{"id": f"p{i}", "ts": float(i), "prediction": 1, "model": f"m{i % 50}"} for i in range(500)])
    first = part.delta()
    part.feed([{"id": "late", "ts": 499.0, "prediction": 1, "model": "m3"}])
    second = part.delta()
    view = DeltaView(monitor.settings, monitor.pipeline.new_engine(monitor.metrics))

    def panes_in(delta: bytes) -> list[int]:  # per window, the (series, pane) entries a delta carries
        windows = decode_operators(*read_header(delta, format=DELTA_FORMAT, what="a delta"), view.engine)
        return [sum(len(entries) for entries in w.values()) for w in windows["n"]]
    # Every series: its cumulative total, and in Sliding(20, 10) (panes 48 and 49 inside at stream time 499)
    # one pane each for the 20 series with an event since 480, the 30 others as existing.
    assert panes_in(first) == [50, 50]
    assert panes_in(second) == [1, 1]  # one series' pane, and its cumulative total
    assert view.apply(first) and view.apply(second)
    assert_same(served(view.view()), served(merge_partials(monitor.settings, monitor.metrics, [part.whole()])))


def test_deltas_of_a_lineage_not_begun_or_out_of_turn_are_skipped_and_another_apps_refused():
    monitor = counting()
    part = Partition(monitor, 0)
    part.feed([{"id": "a", "ts": 1.0, "prediction": 1}])
    part.begun = True  # as if its full delta were lost: the view must wait for a full one
    view = DeltaView(monitor.settings, monitor.pipeline.new_engine(monitor.metrics))
    assert not view.apply(part.delta())
    part.begun = False
    assert view.apply(part.delta())
    part.feed([{"id": "b", "ts": 2.0, "prediction": 1, "model": "new"}])
    skipped = part.delta()  # a new series' labels in it
    part.feed([{"id": "c", "ts": 3.0, "prediction": 1}])
    assert not view.apply(part.delta())  # its labels continue those of the skipped one
    assert view.apply(skipped)

    other = sm.Monitor("x", windows=[sm.Cumulative()])
    other.track(ops.Mean(of="score"), name="m")
    with pytest.raises(CheckpointError, match="metrics differ"):
        view.apply(Partition(other, 0).delta())
    with pytest.raises(CheckpointError):
        view.apply(b"\x80\x05garbage")


def test_a_worker_that_sends_no_deltas_keeps_no_record_of_changes():
    monitor = counting()
    monitor.replay([{"id": f"p{i}", "ts": float(i), "prediction": 1} for i in range(100)])
    assert all(state.changed is None for _, states in monitor._engine.metrics for state in states)
