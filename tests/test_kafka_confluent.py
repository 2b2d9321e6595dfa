"""The confluent-kafka source and dead-letter sink against the embedded Kafka-protocol broker (tansu).

Oracles: kafka-python's :class:`KafkaSource` over the same topics (every published value equal, the
same refusal message, the same start positions with and without ``seek``); scikit-learn on the pairs
of the sequential join reference (``tests/oracle.py``); an uninterrupted run for a run crashed and
resumed from its checkpoint; the produced records themselves (counts, partitions and offsets from
the producer's acknowledgements) for lag and for the dead-letter topic, read back with kafka-python.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from sklearn.metrics import accuracy_score, mean_absolute_error

import streammon as sm
from streammon import EventError, SourceError, decode_event
from streammon import operators as ops
from streammon.connectors import MemoryDeadLetter
from streammon.connectors.broker import EmbeddedBroker
from streammon.connectors.kafka import KafkaDeadLetter, KafkaSource
from streammon.connectors.kafka_confluent import ConfluentKafkaDeadLetter, ConfluentKafkaSource
from tests.oracle import run_oracle
from tests.worker_helpers import free_port

pytestmark = pytest.mark.kafka

PARTITIONS = 3  # not tansu's auto-create default (4), so nothing here depends on it
TTL = 100 * 86400.0
TIMING = ("streammon_processing_seconds", "streammon_checkpoint_age_seconds", "streammon_consumer_lag",
          "streammon_source_connected")


def create_topics(broker, counts: tuple[int, int]) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    names = (f"predictions-{tag}", f"feedback-{tag}")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    admin.create_topics([NewTopic(name, n, 1) for name, n in zip(names, counts)])
    admin.close()
    return names


def make_events(n: int, seed: int) -> list[tuple[str, str, bytes]]:
    """(kind, key, value): feedback after its prediction or before it, duplicates, malformed events."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pid = f"p{i:06d}"
        event = {"id": pid, "ts": 1_700_000_000.0 + i * 0.1 + rng.uniform(-30, 30), "prediction": rng.randint(0, 1),
                 "score": rng.random(), "segment": {"version": f"v{i % 3}"}}
        prediction = ("prediction", pid, json.dumps(event).encode())
        feedback = ("feedback", pid, json.dumps({"id": pid, "ts": event["ts"] + rng.uniform(1, 60),
                                                 "label": rng.randint(0, 1)}).encode())
        roll = rng.random()
        out += [prediction, feedback] if roll < 0.6 else [feedback, prediction] if roll < 0.85 else [prediction]
        if rng.random() < 0.02:
            out.append(("prediction", pid, json.dumps({**event, "prediction": 1 - event["prediction"]}).encode()))
        if rng.random() < 0.01:
            out.append(("feedback", pid, b'{"id": "' + pid.encode() + b'", "ts": "yesterday", "label": 1}'))
        if rng.random() < 0.01:
            out.append(("prediction", f"q{i}", json.dumps(event).encode()))  # key is not the id
        if rng.random() < 0.005:
            out.append(("prediction", pid, b"{not json"))
    return out


def produce(broker, topics, events) -> list[tuple[str, str, bytes, int, int]]:
    """Sends gzip-compressed, keyed; returns (kind, key, value, partition, offset) as the broker acknowledged."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, compression_type="gzip", linger_ms=20)
    topic_of = {"prediction": topics[0], "feedback": topics[1]}
    futures = [producer.send(topic_of[kind], key=key.encode(), value=value) for kind, key, value in events]
    producer.flush()
    placed = [f.get(10) for f in futures]
    producer.close()
    return [(kind, key, value, m.partition, m.offset) for (kind, key, value), m in zip(events, placed)]


def new_monitor(name="confluent", **kw) -> sm.Monitor:
    monitor = sm.Monitor(name, windows=[sm.Cumulative()], segments=["version"], feedback_ttl=TTL,
                         prediction_ttl=TTL, max_future_seconds=1e12, **kw)
    monitor.track(ops.Accuracy())
    monitor.track(ops.MAE(), name="mae")
    monitor.track(ops.Mean(of="score"), name="mean_score")
    monitor.track(ops.Count(of="prediction"), name="predictions")
    return monitor


def events_read(monitor) -> float:
    return sum(s.value for s in monitor.values() if s.name == "streammon_events_total")


def run_to(monitor, source, total, *, timeout=30.0, **kw) -> None:
    """Monitor.run until ``total`` events were read (or ``timeout``), checking every 50 ms."""
    deadline = time.monotonic() + timeout
    checked = [0.0]

    def done() -> bool:
        now = time.monotonic()
        if now > deadline:
            return True
        if now - checked[0] < 0.05:
            return False
        checked[0] = now
        return events_read(monitor) >= total

    monitor.run(source, until=done, **kw)


def published(monitor) -> dict:
    """Every sample but timings and source health, NaN made comparable."""
    return {(s.name, tuple(sorted(s.labels.items()))): "nan" if math.isnan(s.value) else s.value
            for s in monitor.values() if not s.name.startswith(TIMING)}


def assert_same(got: dict, expected: dict) -> None:
    # Partitions interleave differently from run to run and client to client: sums of floats may then
    # differ in the last bits, nothing more.
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-12, abs=0)), key


def read_topic(broker, topic, expected, deadline=20.0) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap_servers, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    records: list = []
    try:
        stop = time.monotonic() + deadline
        while time.monotonic() < stop and len(records) < expected:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=500).values():  # anything extra shows up here
            records.extend(batch)
    finally:
        consumer.close()
    return records


@pytest.fixture(scope="module")
def dataset(broker):
    """Topics holding ~7k messages, and the kafka-python run over them (with its dead-letter topic)."""
    topics = create_topics(broker, (PARTITIONS, PARTITIONS))
    records = produce(broker, topics, make_events(3000, seed=11))
    dead_letter_topic = f"dead-kafka-python-{uuid.uuid4().hex[:8]}"
    sink = KafkaDeadLetter(broker.bootstrap_servers, topic=dead_letter_topic)
    monitor = new_monitor(dead_letter=sink)
    source = KafkaSource(broker.bootstrap_servers, predictions_topic=topics[0], feedback_topic=topics[1],
                         group_id=f"reference-{uuid.uuid4().hex[:8]}")
    run_to(monitor, source, len(records))
    sink.close()
    return {"topics": topics, "records": records, "reference": published(monitor),
            "dead_letter_topic": dead_letter_topic}


def confluent_source(broker, topics, group=None, **settings) -> ConfluentKafkaSource:
    return ConfluentKafkaSource(broker.bootstrap_servers, predictions_topic=topics[0], feedback_topic=topics[1],
                                group_id=group or f"confluent-{uuid.uuid4().hex[:8]}", **settings)


def test_same_published_values_as_kafka_python_and_as_the_oracle(broker, dataset):
    topics, records = dataset["topics"], dataset["records"]
    dead_letter_topic = f"dead-confluent-{uuid.uuid4().hex[:8]}"
    sink = ConfluentKafkaDeadLetter(broker.bootstrap_servers, topic=dead_letter_topic)
    monitor = new_monitor(dead_letter=sink)
    run_to(monitor, confluent_source(broker, topics), len(records))
    sink.close()
    got = published(monitor)
    assert_same(got, dataset["reference"])

    valid, rejected = [], []
    for kind, key, value, partition, offset in records:
        try:
            decode_event(value, kind=kind, key=key, now=2e9)
            valid.append(json.loads(value))
        except EventError as exc:
            topic = topics[0] if kind == "prediction" else topics[1]
            rejected.append((key.encode(), value, exc.reason.encode(), f"{topic}/{partition}/{offset}".encode()))
    oracle = run_oracle(valid, feedback_ttl=TTL, prediction_ttl=TTL, segments=("version",))

    def metric(name, **labels):
        return got[(name, tuple(sorted({"monitor": "confluent", **labels}.items())))]

    for version in ("v0", "v1", "v2"):
        pairs = [r for r in oracle.select("pair", None) if r.segment == (version,)]
        y_true, y_pred = [r.y_true for r in pairs], [r.y_pred for r in pairs]
        labels = {"model": "default", "window": "cumulative", "version": version}
        assert metric("streammon_accuracy", **labels) == pytest.approx(accuracy_score(y_true, y_pred), rel=1e-12)
        assert metric("streammon_mae", **labels) == pytest.approx(mean_absolute_error(y_true, y_pred), rel=1e-9)
        assert metric("streammon_accuracy_count", **labels) == len(pairs)
        predictions = [r for r in oracle.select("prediction", None) if r.segment == (version,)]
        assert metric("streammon_predictions", **labels) == len(predictions)
    assert metric("streammon_joined_total") == oracle.joined
    assert metric("streammon_join_pending", side="prediction") == oracle.pending_predictions
    assert metric("streammon_join_pending", side="feedback") == oracle.pending_feedback
    for side in ("prediction", "feedback"):
        assert metric("streammon_duplicates_total", side=side) == oracle.duplicates[side]
    assert metric("streammon_dead_letters_total") == len(rejected) > 0

    # Dead letters: exactly the rejected records, with decode_event's reason and their own origin,
    # the same as kafka-python's sink wrote.
    def letters(topic):
        return Counter((r.key, r.value, dict(r.headers)["streammon.reason"], dict(r.headers)["streammon.origin"])
                       for r in read_topic(broker, topic, len(rejected)))
    assert letters(dead_letter_topic) == Counter(rejected) == letters(dataset["dead_letter_topic"])
    assert (sink.delivered, sink.failed) == (len(rejected), 0)


class Counted:
    """A source that counts what it hands out, and raises at a chosen count (a crash, in effect)."""

    def __init__(self, source, crash_at: int | None = None) -> None:
        self.source, self.crash_at, self.polled = source, crash_at, 0

    def poll(self, max_records, timeout):
        if self.crash_at is not None and self.polled >= self.crash_at:
            raise RuntimeError("simulated crash")
        batch = self.source.poll(max_records, timeout)
        self.polled += len(batch)
        return batch

    def __getattr__(self, name):
        return getattr(self.source, name)


def test_resumes_from_a_checkpoint_after_a_crash(broker, dataset, tmp_path):
    topics, total = dataset["topics"], len(dataset["records"])
    deadline = time.monotonic() + 30
    # 1. Stop cleanly part-way: the last checkpoint holds state and offsets (in this run's consumer group).
    first = Counted(confluent_source(broker, topics))
    part_way = total // 3

    def stop():
        return first.polled >= part_way or time.monotonic() > deadline

    new_monitor(dead_letter=MemoryDeadLetter()).run(first, state_dir=tmp_path, max_records=300, until=stop)
    assert part_way <= first.polled < total
    # 2. Resume, read on, crash before the next checkpoint: that work is lost and must be redone.
    second = Counted(confluent_source(broker, topics), crash_at=(total - first.polled) // 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        new_monitor(dead_letter=MemoryDeadLetter()).run(second, state_dir=tmp_path, max_records=300,
                                                        checkpoint_interval=3600)
    assert second.polled > 0
    # 3. A fresh worker, in yet another consumer group (so committed offsets cannot help), resumes from the
    # checkpoint's offsets and ends where an uninterrupted run ends: nothing lost, nothing counted twice.
    final = new_monitor(dead_letter=MemoryDeadLetter())
    run_to(final, confluent_source(broker, topics), total, state_dir=tmp_path)
    assert_same(published(final), dataset["reference"])


def first_offsets(source, partitions: int, deadline: float = 15.0) -> dict:
    firsts: dict = {}
    stop = time.monotonic() + deadline
    while len(firsts) < partitions and time.monotonic() < stop:
        for m in source.poll(500, 0.2):
            firsts.setdefault((m.topic, m.partition), m.offset)
    source.close()
    return firsts


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_start_positions_match_kafka_python(broker, dataset, client):
    topics = dataset["topics"]
    every = [(t, p) for t in topics for p in range(PARTITIONS)]

    def source(group):
        if client == "confluent":
            return confluent_source(broker, topics, group)
        return KafkaSource(broker.bootstrap_servers, predictions_topic=topics[0], feedback_topic=topics[1],
                           group_id=group)

    group = f"positions-{client}-{uuid.uuid4().hex[:8]}"
    committer = source(group)
    committer.commit({tp: 2 for tp in every})
    committer.close()
    # Without seek: the group's committed offsets; with seek: the given offsets, the rest from the beginning.
    assert first_offsets(source(group), len(every)) == {tp: 2 for tp in every}
    resumed = source(group)
    resumed.seek({(topics[0], 1): 5})
    assert first_offsets(resumed, len(every)) == {**{tp: 0 for tp in every}, (topics[0], 1): 5}


@pytest.mark.parametrize("start", ["seek", "committed"])
def test_lag_counts_what_is_left_and_partition_ends_are_not_errors(broker, dataset, caplog, start):
    caplog.set_level(logging.WARNING, logger="streammon")
    topics, records = dataset["topics"], dataset["records"]
    every = {(t, p) for t in topics for p in range(PARTITIONS)}
    group = f"lag-{uuid.uuid4().hex[:8]}"
    first = 0
    if start == "committed":  # no seek: the group's offsets are where reading, and lag, start
        first = 3
        committer = confluent_source(broker, topics, group)
        committer.commit({tp: first for tp in every})
        committer.close()
    source = confluent_source(broker, topics, group, **{"enable.partition.eof": True})
    if start == "seek":
        source.seek({})
    expected = sorted((topics[0] if kind == "prediction" else topics[1], partition, offset)
                      for kind, _, _, partition, offset in records if offset >= first)
    consumed: list = []
    try:
        deadline = time.monotonic() + 15
        while set(source.lag()) != every and time.monotonic() < deadline:
            consumed += source.poll(20, 0.2)
        assert source.connected
        assert 0 < len(consumed) < len(expected)
        assert sum(source.lag().values()) == len(expected) - len(consumed)
        while len(consumed) < len(expected) and time.monotonic() < deadline:
            consumed += source.poll(1000, 0.2)
        for _ in range(3):  # partition ends arrive now: none may surface as a message, nor be logged
            consumed += source.poll(1000, 0.2)
        assert source.lag() == {tp: 0 for tp in every}
    finally:
        source.close()
    assert sorted((m.topic, m.partition, m.offset) for m in consumed) == expected
    assert Counter(m.kind for m in consumed) == Counter(kind for kind, *_, offset in records if offset >= first)
    assert not [r.getMessage() for r in caplog.records if r.name == "streammon"]


def test_client_errors_are_logged_and_polling_goes_on(broker, dataset, caplog):
    import confluent_kafka as ck

    topics, records = dataset["topics"], dataset["records"]
    source = confluent_source(broker, topics)
    source.seek({})

    class ErrorEvent:  # what consume() returns for a partition in trouble (the parts poll reads)
        def error(self):
            return ck.KafkaError(ck.KafkaError.NOT_LEADER_FOR_PARTITION)

        def topic(self):
            return topics[0]

        def partition(self):
            return 1

    class Failing:  # librdkafka's two ways to report trouble: a raising call, an error event among messages
        calls = 0

        def __init__(self, consumer):
            self.consumer = consumer

        def consume(self, num_messages, timeout):
            Failing.calls += 1
            if Failing.calls == 1:
                raise ck.KafkaException(ck.KafkaError(ck.KafkaError._TIMED_OUT))
            return [ErrorEvent()] + self.consumer.consume(num_messages, timeout)

        def __getattr__(self, name):
            return getattr(self.consumer, name)

    source._consumer = Failing(source._consumer)
    monitor = new_monitor()
    run_to(monitor, source, len(records))
    assert events_read(monitor) == len(records)
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "streammon")
    assert "Kafka consume failed (Local: Timed out)" in logged
    assert f"Kafka reported an error on {topics[0]} [1]: Broker: Not leader for partition" in logged


def test_refuses_topics_with_different_partition_counts_as_kafka_python_does(broker):
    topics = create_topics(broker, (2, 3))
    with pytest.raises(SourceError) as theirs:
        KafkaSource(broker.bootstrap_servers, predictions_topic=topics[0], feedback_topic=topics[1], metadata_timeout=5)
    with pytest.raises(SourceError) as ours:
        confluent_source(broker, topics, metadata_timeout=5)
    assert str(ours.value) == str(theirs.value)
    assert "recreate the smaller topic with 3 partitions" in str(ours.value)


def test_missing_topic_and_unreachable_broker_are_named(broker):
    with pytest.raises(SourceError, match=r"topic.*not found on the broker"):
        ConfluentKafkaSource(broker.bootstrap_servers, predictions_topic=f"absent-{uuid.uuid4().hex[:8]}",
                             metadata_timeout=1)
    with pytest.raises(SourceError, match=r"cannot reach Kafka at 127\.0\.0\.1"):
        ConfluentKafkaSource(f"127.0.0.1:{free_port()}", metadata_timeout=1)
    with pytest.raises(SourceError, match="cannot create a confluent-kafka consumer"):
        ConfluentKafkaSource(broker.bootstrap_servers, **{"no.such.setting": 1})


def test_outage_is_reported_and_polling_goes_on():
    with EmbeddedBroker() as broker:
        topics = create_topics(broker, (1, 1))
        source = confluent_source(broker, topics)
        source.seek({})
        try:
            source.poll(10, 0.2)
            assert source.connected
            broker.stop()
            deadline = time.monotonic() + 15
            while source.connected and time.monotonic() < deadline:
                assert source.poll(10, 0.2) == []
            assert not source.connected
            source.commit({(topics[0], 0): 0})  # refused by no one yet: must not raise
            broker.start()  # same port; tansu comes back empty, the client reconnects all the same
            while not source.connected and time.monotonic() < deadline:
                source.poll(10, 0.2)
            assert source.connected
        finally:
            source.close()


def test_a_missing_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # what `import` sees when it is not installed
    with pytest.raises(SourceError, match=r"pip install 'streammon\[confluent\]'"):
        ConfluentKafkaSource("127.0.0.1:9")
    with pytest.raises(SourceError, match=r"pip install 'streammon\[confluent\]'"):
        ConfluentKafkaDeadLetter("127.0.0.1:9")


@pytest.mark.parametrize("client, expected", [("kafka-python", KafkaSource), ("confluent", ConfluentKafkaSource)])
def test_streammon_run_chooses_the_client(broker, dataset, client, expected):
    from streammon.cli.kafka import kafka_source
    from streammon.cli.main import _parser

    args = _parser().parse_args(["run", "app.py:monitor", "--bootstrap-servers", broker.bootstrap_servers,
                                 "--topics", ",".join(dataset["topics"]), "--kafka-client", client])
    source = kafka_source(args)
    try:
        assert type(source) is expected
    finally:
        source.close()
