"""Aligned input: whatever order the partitions are delivered in, the monitor publishes one result.

The expected result is the oracle (tests/oracle.py) run over the documented order, recomputed here
from the partitions' contents: by the largest event time so far in the record's partition, then
predictions before feedback, then partition, then offset (docs/kafka.md, "Input order").
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streammon.align import EventTimeAligner
from streammon.connectors.base import Message
from streammon.connectors.memory import PartitionedMemorySource
from streammon.pipeline import Decoded
from tests.test_engine_properties import assert_equals_oracle, build_monitor, streams

TOPICS = ("predictions", "feedback")
GARBAGE = b'{"id": "broken", "ts": '  # a rejected message keeps its place in its partition


def partitioned(events: list[dict], partitions: int, garbage_every: int = 7) -> dict[tuple[str, int], list[bytes]]:
    """Each topic's records per partition in production order (partition by id, as Kafka keys them)."""
    records = {(t, p): [] for t in TOPICS for p in range(partitions)}
    for i, e in enumerate(events):
        topic = "feedback" if "label" in e else "predictions"
        tp = (topic, int(e["id"][1:]) % partitions)
        records[tp].append(json.dumps(e).encode())
        if garbage_every and i % garbage_every == 3:
            records[tp].append(GARBAGE)
    return records


def aligned_order(records: dict[tuple[str, int], list[bytes]]) -> list[dict]:
    rows = []
    for (topic, partition), values in records.items():
        mark = -math.inf
        for offset, value in enumerate(values):
            if value == GARBAGE:
                continue
            event = json.loads(value)
            mark = max(mark, event["ts"])
            rows.append(((mark, TOPICS.index(topic), partition, offset), event))
    rows.sort(key=lambda row: row[0])
    return [event for _, event in rows]


def one_topic_first(first: str):
    """Deliver everything of one topic before anything of the other: a backlog read unevenly."""
    def schedule(available, max_records):
        chosen = [tp for tp in available if tp[0] == first] or available
        return [(chosen[0], max_records)]
    return schedule


def one_partition_at_a_time(available, max_records):
    return [(available[-1], max_records)]


SCHEDULES = {"random": None, "feedback first": one_topic_first("feedback"),
             "predictions first": one_topic_first("predictions"), "one partition at a time": one_partition_at_a_time}


def run(records, *, schedule=None, seed=0, max_records=64, state_dir=None, stop_after_polls=None, monitor=None):
    monitor = monitor or build_monitor(4096)
    source = PartitionedMemorySource(records, schedule=SCHEDULES.get(schedule) if isinstance(schedule, str) else schedule, seed=seed)
    polls = [0]
    poll = source.poll

    def counted(max_records, timeout):
        polls[0] += 1
        return poll(max_records, timeout)
    source.poll = counted

    def until():
        return source.done or (stop_after_polls is not None and polls[0] >= stop_after_polls)
    monitor.run(source, until=until, max_records=max_records, max_idle=0.0, poll_timeout=0.0, state_dir=state_dir,
                checkpoint_interval=0.0, background_checkpoints=False)
    return monitor, source


def rejected(monitor) -> float:
    return sum(s.value for s in monitor.values() if s.name == "streammon_events_total" and s.labels["outcome"] == "rejected")


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=streams(), partitions=st.integers(1, 3), schedule=st.sampled_from(sorted(SCHEDULES)),
       seed=st.integers(0, 1000), max_records=st.sampled_from([1, 5, 64]))
def test_any_delivery_order_publishes_the_oracle_of_the_aligned_order(events, partitions, schedule, seed, max_records):
    records = partitioned(events, partitions)
    monitor, _ = run(records, schedule=schedule, seed=seed, max_records=max_records)
    assert_equals_oracle(monitor, aligned_order(records))
    assert rejected(monitor) == sum(v == GARBAGE for values in records.values() for v in values)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.function_scoped_fixture])
@given(events=streams(), partitions=st.integers(1, 3), seed=st.integers(0, 1000), stop=st.integers(1, 30))
def test_a_restart_continues_the_same_order(events, partitions, seed, stop, tmp_path_factory):
    records = partitioned(events, partitions)
    state_dir = str(tmp_path_factory.mktemp("state"))
    run(records, schedule="feedback first", max_records=5, state_dir=state_dir, stop_after_polls=stop)
    monitor, _ = run(records, seed=seed, max_records=5, state_dir=state_dir)  # a new process, another order
    assert_equals_oracle(monitor, aligned_order(records))


def test_without_alignment_the_delivery_order_changes_the_result():
    # The property above can fail: the same events read one topic first, unaligned, come out differently.
    events = [{"id": f"p{i}", "ts": float(i * 10), "prediction": 1, "model": "m0", "segment": {"version": "v0"},
               "features": {"age": 30.0}} for i in range(10)]
    events += [{"id": f"p{i}", "ts": float(i * 10 + 1), "label": 1} for i in range(10)]
    records = partitioned(events, 1, garbage_every=0)

    class Unaligned(PartitionedMemorySource):
        pause = resume = None  # cannot pause: read as delivered

    monitor = build_monitor(4096)
    source = Unaligned(records, schedule=one_topic_first("feedback"))
    monitor.run(source, until=lambda: source.done, max_records=64, poll_timeout=0.0)
    with pytest.raises(AssertionError):
        assert_equals_oracle(monitor, aligned_order(records))
    aligned, _ = run(records, schedule="feedback first")
    assert_equals_oracle(aligned, aligned_order(records))


# -- the waiting rules, with a clock the test moves -------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def decoded(topic: str, partition: int, offset: int, ts: float) -> Decoded:
    class Event:  # what the aligner reads of an event
        pass
    event = Event()
    event.ts = ts
    return Decoded(Message(b"", "prediction" if topic == "predictions" else "feedback", None, topic, partition, offset), event, None)


def offsets(released) -> list[tuple[str, int]]:
    return [(d.message.topic, d.message.offset) for d in released]


def aligner_with(clock: Clock, **kwargs) -> EventTimeAligner:
    aligner = EventTimeAligner({"predictions": "prediction", "feedback": "feedback"}, clock=clock, **kwargs)
    aligner.track([("predictions", 0), ("feedback", 0)], "g", {})
    return aligner


def test_an_empty_partition_at_its_end_is_waited_for_max_idle():
    clock = Clock()
    aligner = aligner_with(clock, max_idle=2.0)
    aligner.add([decoded("predictions", 0, 0, 5.0), decoded("predictions", 0, 1, 7.0)])
    at_end = {("predictions", 0): 0, ("feedback", 0): 0}
    assert aligner.release(at_end) == {}  # feedback may still come with an earlier time
    clock.now = 1.9
    assert aligner.release(at_end) == {}
    assert aligner.wait_hint(5.0) == pytest.approx(0.1)
    clock.now = 2.0
    released, marks = aligner.release(at_end)["g"]
    assert offsets(released) == [("predictions", 0), ("predictions", 1)] and marks == {("predictions", 0): 7.0}


def test_an_empty_partition_with_records_on_the_broker_is_waited_for_until_they_come():
    clock = Clock()
    aligner = aligner_with(clock, max_idle=0.0, fetch_timeout=60.0)
    aligner.add([decoded("predictions", 0, 0, 5.0)])
    behind = {("predictions", 0): 0, ("feedback", 0): 3}
    clock.now = 59.0
    assert aligner.release(behind) == {}
    aligner.add([decoded("feedback", 0, 0, 4.0), decoded("feedback", 0, 1, 6.0)])
    released, _ = aligner.release({("predictions", 0): 0, ("feedback", 0): 1})["g"]
    # The feedback at 6.0 stays: a prediction up to 6.0 may still come (the predictions partition has
    # nothing buffered past 5.0).
    assert offsets(released) == [("feedback", 0), ("predictions", 0)]


def test_a_partition_that_never_delivers_is_given_up_after_the_fetch_timeout(caplog):
    clock = Clock()
    aligner = aligner_with(clock, fetch_timeout=60.0)
    aligner.add([decoded("predictions", 0, 0, 5.0)])
    lag = {("predictions", 0): 0, ("feedback", 0): 3}
    assert aligner.release(lag) == {}  # the feedback partition is empty from now on
    clock.now = 59.9
    assert aligner.release(lag) == {}
    clock.now = 60.0
    assert offsets(aligner.release(lag)["g"][0]) == [("predictions", 0)]
    assert "none came for 60 s" in caplog.text


def test_partitions_past_the_buffer_limit_are_paused_and_resumed_when_drained():
    class Flow:
        def __init__(self):
            self.calls = []

        def pause(self, tps):
            self.calls.append(("pause", tps))

        def resume(self, tps):
            self.calls.append(("resume", tps))

    clock, source = Clock(), Flow()
    aligner = aligner_with(clock, buffer_limit=4)
    aligner.flow(source)  # tracked partitions are resumed explicitly first
    assert source.calls == [("resume", [("predictions", 0), ("feedback", 0)])]
    aligner.add([decoded("predictions", 0, i, float(i)) for i in range(5)])
    aligner.flow(source)
    assert source.calls[-1] == ("pause", [("predictions", 0)])
    aligner.add([decoded("feedback", 0, 0, 10.0)])
    assert len(aligner.release({})["g"][0]) == 5
    aligner.flow(source)
    assert source.calls[-1] == ("resume", [("predictions", 0)])
