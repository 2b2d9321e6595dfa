"""Scale-out without a broker: per-partition engines merged by the exporter, against the oracle and one monitor."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streammon as sm
from streammon import operators as ops
from streammon.connectors import Message
from streammon.connectors.kafka_group import assign_partition_numbers
from streammon.errors import RegistrationError
from streammon.scaleout import dump_partials, require_mergeable, write_partials
from tests.oracle import run_oracle
from tests.test_engine_properties import FEEDBACK_TTL, METRICS, PREDICTION_TTL, READS_SCORE, SEGMENTS, WINDOWS, streams

# Every metric of the engine's property test that can merge (river's Accuracy cannot: it is refused).
MERGEABLE = {name: spec for name, spec in METRICS.items() if name != "river_accuracy"}


def build(**ttl) -> sm.Monitor:
    monitor = sm.Monitor("prop", windows=WINDOWS, segments=SEGMENTS, max_future_seconds=1e12, batch_size=7, **ttl)
    for register, _, _ in MERGEABLE.values():
        register(monitor)
    return monitor


def partition_of(event: dict, count: int) -> int:
    return zlib.crc32(event["id"].encode()) % count


def run_partitioned(events: list[dict], count: int, directory, **ttl) -> tuple[sm.Monitor, list[list[dict]]]:
    """Each partition's events through its own engine, partials written, merged by an exporter."""
    worker = build(**ttl)
    split: list[list[dict]] = [[] for _ in range(count)]
    for e in events:
        split[partition_of(e, count)].append(e)
    for p, mine in enumerate(split):
        engine = worker.pipeline.new_engine(worker.metrics)
        for i in range(0, len(mine), 5):
            worker.pipeline.process(engine, [Message(e) for e in mine[i:i + 5]])
        write_partials(directory, p, dump_partials(engine, partition=p, offsets={("t", p): len(mine)}, lineage="one"))
    exporter_monitor = build(**ttl)
    exporter_monitor._exporting(str(directory)).refresh()
    return exporter_monitor, split


def published(monitor: sm.Monitor) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in monitor.values()}


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(events=streams(), count=st.sampled_from([1, 2, 3, 5]))
def test_merged_partitions_equal_the_oracle_run_per_partition(events, count, tmp_path_factory):
    ttl = dict(feedback_ttl=FEEDBACK_TTL, prediction_ttl=PREDICTION_TTL)
    merged, split = run_partitioned(events, count, tmp_path_factory.mktemp("state"), **ttl)
    # Each partition joins and expires on its own stream time; windows end at the largest of them.
    results = [run_oracle(part, feedback_ttl=FEEDBACK_TTL, prediction_ttl=PREDICTION_TTL, segments=SEGMENTS) for part in split]
    final = max(r.stream_time for r in results)
    for r in results:
        r.stream_time = final
    got = published(merged)
    for name, (_, stream, oracle) in MERGEABLE.items():
        for window in WINDOWS:
            spec = None if isinstance(window, sm.Cumulative) else window
            rows = [row for r in results for row in r.select(stream, spec)]
            if name in READS_SCORE:
                rows = [row for row in rows if row.score is not None]
            groups: dict[tuple, list] = {}
            for row in rows:
                groups.setdefault((row.model, row.segment[0] if stream != "feedback" else ""), []).append(row)
            counts = {(dict(k)["model"], dict(k).get("version", "")): v for (n, k), v in got.items()
                      if n == f"streammon_{name}_count" and dict(k)["window"] == window.label and v}
            assert counts == {k: len(g) for k, g in groups.items()}, (name, window)
            for (model, version), group in groups.items():
                labels = {"monitor": "prop", "model": model, "window": window.label, "version": version}
                value = got[(f"streammon_{name}", tuple(sorted(labels.items())))]
                assert value == pytest.approx(oracle(group), rel=1e-9, abs=1e-12, nan_ok=True), (name, window, model, version)

    def one(name, **labels):
        return got[(name, tuple(sorted({"monitor": "prop", **labels}.items())))]
    assert one("streammon_joined_total") == sum(r.joined for r in results)
    for side in ("prediction", "feedback"):
        assert one("streammon_duplicates_total", side=side) == sum(r.duplicates[side] for r in results)
        assert one("streammon_join_expired_total", side=side) == sum(r.expired[side] for r in results)
    assert one("streammon_join_pending", side="prediction") == sum(r.pending_predictions for r in results)
    assert one("streammon_join_pending", side="feedback") == sum(r.pending_feedback for r in results)
    assert one("streammon_stream_time_seconds") == final


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(events=streams(), count=st.sampled_from([2, 4]))
def test_merged_partitions_equal_one_monitor_when_nothing_expires(events, count, tmp_path_factory):
    # With TTLs longer than the stream, per-partition stream time changes only which events count as late.
    ttl = dict(feedback_ttl=1e6, prediction_ttl=1e6)
    merged, _ = run_partitioned(events, count, tmp_path_factory.mktemp("state"), **ttl)
    single = build(**ttl)
    single.replay(events)
    a, b = published(single), published(merged)
    skip = ("streammon_late_events_total", "streammon_processing_seconds")
    a = {k: v for k, v in a.items() if not k[0].startswith(skip)}
    b = {k: v for k, v in b.items() if not k[0].startswith(skip) and k[0] != "streammon_partials_age_seconds"}
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12, nan_ok=True), key


def counting() -> sm.Monitor:
    """The smallest app: a count of predictions, named n."""
    monitor = sm.Monitor("x", windows=[sm.Cumulative()])
    monitor.track(ops.Count(of="prediction"), name="n")
    return monitor


def _partial(monitor: sm.Monitor, events: list[dict], *, offset: int, lineage: str) -> bytes:
    engine = monitor.pipeline.new_engine(monitor.metrics)
    monitor.pipeline.process(engine, [Message(e) for e in events])
    return dump_partials(engine, partition=0, offsets={("predictions", 0): offset}, lineage=lineage)


def test_the_exporter_keeps_the_newest_partial_of_a_lineage_and_takes_a_new_lineage_at_once(tmp_path):
    monitor = counting()
    exporter = monitor._exporting(str(tmp_path))
    evs = [{"id": f"p{i}", "ts": i, "prediction": 1} for i in range(5)]
    write_partials(tmp_path, 0, _partial(monitor, evs[:3], offset=3, lineage="a"))
    assert exporter.refresh() and monitor.value("n") == 3
    # A worker restored from an older checkpoint writes partials behind: they wait until it catches up.
    write_partials(tmp_path, 0, _partial(monitor, evs[:2], offset=2, lineage="a"))
    assert not exporter.refresh() and monitor.value("n") == 3
    write_partials(tmp_path, 0, _partial(monitor, evs[:4], offset=4, lineage="a"))
    assert exporter.refresh() and monitor.value("n") == 4
    # The state was started afresh (a new lineage): its first partial counts even with lower offsets.
    write_partials(tmp_path, 0, _partial(monitor, evs[:1], offset=1, lineage="b"))
    assert exporter.refresh() and monitor.value("n") == 1


def test_a_partial_from_another_app_is_refused_and_the_previous_one_kept(tmp_path, caplog):
    monitor = counting()
    other = sm.Monitor("x", windows=[sm.Cumulative()])
    other.track(ops.Mean(of="score"), name="n")
    exporter = monitor._exporting(str(tmp_path))
    write_partials(tmp_path, 0, _partial(monitor, [{"id": "a", "ts": 1, "prediction": 1}], offset=1, lineage="a"))
    exporter.refresh()
    write_partials(tmp_path, 0, _partial(other, [{"id": "b", "ts": 2, "prediction": 1, "score": 0.5}] * 1, offset=9, lineage="a"))
    assert not exporter.refresh()
    assert monitor.value("n") == 1
    assert "metrics differ" in caplog.text


def test_a_metric_that_cannot_merge_is_refused_with_the_fix():
    from river import metrics as river_metrics
    monitor = sm.Monitor("x", windows=[sm.Cumulative()])
    monitor.track(river_metrics.Accuracy())
    monitor.track(ops.Accuracy(), name="ours")
    with pytest.raises(RegistrationError, match=r"'accuracy' \(Accuracy\) cannot .*ops\.Accuracy\(\)"):
        require_mergeable(monitor.metrics)


@given(members=st.lists(st.text("abcdef", min_size=1, max_size=3), min_size=1, max_size=6, unique=True),
       count=st.integers(0, 12), data=st.data())
def test_partition_numbers_are_spread_evenly_and_stay_where_they_were(members, count, data):
    owned = {m: data.draw(st.lists(st.integers(-1, 14), max_size=5)) for m in members}
    got = assign_partition_numbers(members, count, owned)
    numbers = sorted(p for parts in got.values() for p in parts)
    assert numbers == list(range(count))  # each number exactly once
    sizes = [len(parts) for parts in got.values()]
    assert max(sizes) - min(sizes) <= 1
    # Stickiness: an unchanged group keeps its assignment as it is.
    assert assign_partition_numbers(members, count, got) == got


def partition_worker(monitor: sm.Monitor, state_dir: str):
    """A scaled-out worker's partitions and the runner that feeds them, driven by hand."""
    from streammon.connectors import MemorySource
    from streammon.runner import CheckpointCoordinator, Runner
    from streammon.scaleout import PartitionWorker
    from streammon.settings import RunOptions

    source = MemorySource([])
    worker = PartitionWorker(monitor.pipeline, monitor.metrics, source, state_dir)
    worker.coordinator = CheckpointCoordinator(monitor.pipeline, source, worker, interval=60, background=False)
    options = RunOptions(max_records=100, poll_timeout=0.1)
    return worker, Runner(monitor.pipeline, source, worker, worker.coordinator, options, stop=lambda: True)


def test_a_fresh_start_after_a_worker_died_before_its_first_checkpoint_does_not_step_the_metric_back(tmp_path):
    messages = [Message({"id": f"p{i}", "ts": i, "prediction": 1}, topic="predictions", partition=0, offset=i) for i in range(10)]
    first, first_runner = partition_worker(counting(), str(tmp_path))
    first.assigned([0])
    first_runner.process(messages)
    first.publish()  # partials out, no checkpoint yet: then the worker is killed
    viewer = counting()
    exporter = viewer._exporting(str(tmp_path))
    exporter.refresh()
    assert viewer.value("n") == 10
    second, second_runner = partition_worker(counting(), str(tmp_path))
    assert second.assigned([0]) == {}  # nothing saved: it starts partition 0 from the beginning
    second_runner.process(messages[:4])
    second.publish()
    exporter.refresh()
    assert viewer.value("n") == 10  # the newer partials stay until the fresh start catches up
    second_runner.process(messages[4:])
    second.publish()
    exporter.refresh()
    assert viewer.value("n") == 10 and exporter.latest[0]["lineage"] == second.partitions[0].lineage


def test_a_rewrite_within_one_tick_of_the_file_clock_is_still_read(tmp_path):
    import os
    monitor = counting()
    exporter = monitor._exporting(str(tmp_path))
    evs = [{"id": f"p{i}", "ts": i, "prediction": 1} for i in range(4)]
    write_partials(tmp_path, 0, _partial(monitor, evs[:3], offset=3, lineage="a"))
    exporter.refresh()
    path = tmp_path / "partials-0.msgpack"
    first = path.stat()
    write_partials(tmp_path, 0, _partial(monitor, evs, offset=3, lineage="a"))  # same version, new content
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))  # as if written within the same clock tick
    assert path.stat().st_size == first.st_size
    exporter.refresh()
    assert monitor.value("n") == 4


class _BrokenMerge:
    """A user operator whose merge raises: the exporter must skip it, count it, and serve the rest."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, x) -> None:
        self.n += 1

    def merge(self, other) -> None:
        raise RuntimeError("merge is broken")

    def get(self) -> float:
        return float(self.n)


def test_a_user_merge_that_raises_is_counted_and_the_other_metrics_still_served(tmp_path):
    monitor = counting()
    monitor.track(_BrokenMerge(), of="prediction", name="broken")
    write_partials(tmp_path, 0, _partial(monitor, [{"id": "a", "ts": 1, "prediction": 1}], offset=1, lineage="a"))
    assert monitor._exporting(str(tmp_path)).refresh()
    assert monitor.value("n") == 1
    errors = {s.labels["metric"]: s.value for s in monitor.values() if s.name == "streammon_operator_errors_total"}
    assert errors == {"broken": 1}


# -- corrupt partials files -------------------------------------------------------------------
def _errors(monitor: sm.Monitor) -> dict[str, float]:
    return {s.labels["partition"]: s.value for s in monitor.values() if s.name == "streammon_partials_errors_total"}


def _always_reread(path) -> None:
    # A modification time in the future never counts as settled, so every refresh reads the file again.
    import os
    import time
    future = time.time_ns() + 3600 * 10**9
    os.utime(path, ns=(future, future))


def _garbage(monitor: sm.Monitor) -> dict[str, bytes]:
    import pickle
    good = _partial(monitor, [{"id": "z", "ts": 9, "prediction": 1}], offset=9, lineage="a")
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not data": b"\x00garbage\xff" * 100,
        "a pickle of a list": pickle.dumps([1, 2, 3]),
        "another partition's file": dump_partials(monitor.pipeline.new_engine(monitor.metrics), partition=5,
                                                  offsets={("predictions", 5): 1}, lineage="a"),
    }


@pytest.mark.parametrize("kind", ["truncated", "empty", "not data", "a pickle of a list", "another partition's file"])
def test_a_corrupt_partials_file_keeps_the_last_good_value_and_is_counted_and_logged_once(tmp_path, caplog, kind):
    monitor = counting()
    exporter = monitor._exporting(str(tmp_path))
    evs = [{"id": f"p{i}", "ts": i, "prediction": 1} for i in range(5)]
    write_partials(tmp_path, 0, _partial(monitor, evs[:3], offset=3, lineage="a"))
    assert exporter.refresh() and monitor.value("n") == 3
    assert _errors(monitor) == {}

    path = tmp_path / "partials-0.msgpack"
    path.write_bytes(_garbage(monitor)[kind])
    _always_reread(path)
    caplog.clear()
    for _ in range(3):  # read three times, one version: one count, one log line
        assert not exporter.refresh()
    assert monitor.value("n") == 3
    assert _errors(monitor) == {"0": 1}
    refusals = [r for r in caplog.records if "partials-0.msgpack" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelname == "ERROR"
    assert "partition 0 keeps its last good partial until the file changes" in refusals[0].getMessage()

    # A new version of the file is read again: good, it is taken; the count stays what it was.
    write_partials(tmp_path, 0, _partial(monitor, evs[:4], offset=4, lineage="a"))
    assert exporter.refresh() and monitor.value("n") == 4
    assert _errors(monitor) == {"0": 1}


def test_the_export_loop_goes_on_past_a_corrupt_file_of_a_partition_never_read(tmp_path, caplog):
    monitor = counting()
    write_partials(tmp_path, 0, _partial(monitor, [{"id": "a", "ts": 1, "prediction": 1}], offset=1, lineage="a"))
    (tmp_path / "partials-1.msgpack").write_bytes(b"\x80\x05garbage")  # a worker died mid-copy, or a disk filled
    rounds = []

    def until() -> bool:
        rounds.append(1)
        return len(rounds) > 3

    monitor.export(str(tmp_path), refresh=0.001, until=until)
    assert monitor.value("n") == 1
    assert _errors(monitor) == {"1": 1}
    assert "partition 1 has no good partial yet" in caplog.text


def test_a_worker_takes_a_fresh_lineage_over_a_garbage_partials_file(tmp_path):
    from streammon.scaleout.partials import published_lineage
    from streammon.state_dir import StateDirectory

    (tmp_path / "partials-0.msgpack").write_bytes(b"\x80\x05garbage")
    assert published_lineage(StateDirectory(tmp_path), 0) is None


def test_a_partials_file_that_is_a_pickle_is_refused_unrun_and_old_pickled_partials_are_named_and_ignored(tmp_path, caplog):
    import pickle

    marker = tmp_path / "ran"

    class Payload:  # what anyone who can write to the directory could leave there
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "partials-0.msgpack").write_bytes(pickle.dumps({"partition": 0, "p": Payload()}))
    (tmp_path / "partials-1.pkl").write_bytes(pickle.dumps({"partition": 1, "p": Payload()}))  # an older release's
    monitor = counting()
    exporter = monitor._exporting(str(tmp_path))
    assert "partials file(s) of an older streammon (partials-<i>.pkl, pickles): they are not read" in caplog.text
    assert not exporter.refresh()
    assert not marker.exists()
    assert _errors(monitor) == {"0": 1}
    assert "it is a pickle, which streammon no longer reads from another process" in caplog.text


def test_scaled_out_an_operator_whose_state_cannot_travel_as_data_is_refused_at_registration_with_the_fix():
    class Opaque:
        def __init__(self):
            self.parts = None

        def update(self, x):
            self.parts = self.parts or [Part()]

        def merge(self, other):
            pass

        def get(self):
            return 0.0

    class Part:
        pass

    monitor = sm.Monitor("x", windows=[sm.Cumulative()])
    monitor.track(ops.Count(of="prediction"), name="n")
    monitor.track(Opaque(), of="score", name="opaque")
    require_mergeable(monitor.metrics)  # an empty one travels; what it creates later is found by the exporter
    opaque = monitor.metrics[1].prototype
    opaque.update(1.0)
    from streammon.state_codec import StateShapeError, decode_state, encode_state
    with pytest.raises(StateShapeError, match=r"parts\[0\]: a .*Part where this app's operator holds no object"):
        decode_state(encode_state(opaque), Opaque())

    class WithArray(Opaque):
        def __init__(self):
            self.parts = __import__("numpy").array([object()])

    bad = sm.Monitor("y", windows=[sm.Cumulative()])
    bad.track(WithArray(), of="score", name="with_array")
    with pytest.raises(RegistrationError, match=r"metric 'with_array'.*cannot be sent to the exporter as data.*numbers and bools only"):
        require_mergeable(bad.metrics)


def test_a_metric_whose_state_stops_travelling_as_data_is_sent_empty_counted_and_the_others_go_on(tmp_path):
    class GrowsAnObjectArray:  # encodable when registered, not once fed
        def __init__(self):
            self.held = None

        def update(self, x):
            self.held = __import__("numpy").array([object()])

        def merge(self, other):
            pass

        def get(self):
            return 0.0

    monitor = counting()
    monitor.track(GrowsAnObjectArray(), of="score", name="odd")
    exporter = monitor._exporting(str(tmp_path))
    write_partials(tmp_path, 0, _partial(monitor, [{"id": f"p{i}", "ts": i, "prediction": 1, "score": 0.5} for i in range(3)],
                                         offset=3, lineage="a"))
    assert exporter.refresh() and monitor.value("n") == 3
    errors = {s.labels["metric"]: s.value for s in monitor.values() if s.name == "streammon_operator_errors_total"}
    assert errors == {"odd": 1}
