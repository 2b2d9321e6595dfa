"""Kafka end to end on a real broker: a worker killed with SIGKILL 20 times still counts every event once."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import pytest
from kafka import KafkaProducer

from tests.kafka_oracle import assert_equals_oracle
from tests.worker_helpers import Worker, create_topics, free_port, scrape, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
PARTITIONS = 4


@pytest.fixture(scope="module")
def broker(broker):
    """The module's broker (tests/conftest.py) with the topics the live test produces to."""
    create_topics(broker, ["predictions", "feedback"], PARTITIONS)
    return broker


def make_events(n_predictions: int, seed: int = 7, spacing: float = 0.1) -> list[tuple[str, str, bytes]]:
    """(topic, key, value) in production order: out-of-order times, late, duplicate, missing, malformed."""
    rng = random.Random(seed)
    out, pending = [], []
    t0 = 1_700_000_000.0
    for i in range(n_predictions):
        ts = t0 + i * spacing + rng.uniform(-30, 30)  # out of order
        if rng.random() < 0.01:
            ts -= 3000  # late for the 10-minute window
        pid = f"p{i:07d}"
        event = {"id": pid, "ts": ts, "prediction": rng.randint(0, 1), "score": rng.random(), "segment": {"version": f"v{i % 3}"}}
        out.append(("predictions", pid, json.dumps(event).encode()))
        if rng.random() < 0.005:
            out.append(("predictions", pid, json.dumps({**event, "prediction": 1 - event["prediction"]}).encode()))
        if rng.random() < 0.003:
            out.append(("predictions", pid, b'{"id": "' + pid.encode() + b'", "ts": "yesterday"'))
        if rng.random() < 0.9:
            pending.append((i + rng.randint(1, 400), pid, ts + rng.uniform(1, 600), rng.randint(0, 1)))
        pending.sort()
        while pending and pending[0][0] <= i:
            _, fid, fts, y = pending.pop(0)
            out.append(("feedback", fid, json.dumps({"id": fid, "ts": fts, "label": y}).encode()))
            if rng.random() < 0.01:
                out.append(("feedback", fid, json.dumps({"id": fid, "ts": fts + 5, "label": 1 - y}).encode()))
    return out


def start_worker(broker, tmp_path, port, *extra, app="tests/kafka_app.py:monitor") -> Worker:
    """A worker checkpointing to ``tmp_path``/state; every restart logs to the same ``tmp_path``/worker.log."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(exist_ok=True)
    return Worker("run", app, "--bootstrap-servers", broker.bootstrap_servers, "--state-dir", str(state_dir),
                  "--metrics-port", str(port), "--checkpoint-interval", "0.3", "--group", "recovery-test", *extra,
                  log=tmp_path / "worker.log")


def kill_repeatedly(start, kills: int, rng: random.Random, delay: tuple[float, float], variants) -> Worker:
    """Start a worker, SIGKILL it ``kills`` times at random moments, restarting it with the next variant's
    extra arguments each time; returns the last worker, left running."""
    worker = start()
    for kill in range(kills):
        time.sleep(rng.uniform(*delay))
        if worker.poll() is not None:
            raise AssertionError(f"worker died by itself:\n{worker.report()}")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker = start(*variants[kill % len(variants)])
    return worker


def events_seen(samples) -> float:
    return sum(v for (n, labels), v in samples.items() if n == "streammon_events_total")


def read_everything(port, expected: int, timeout: float, worker: Worker) -> dict:
    """Wait until the worker has counted ``expected`` events, then check that nothing more arrives."""
    wait_for(lambda: events_seen(scrape(port)) >= expected, timeout, "the worker to read every event", workers=[worker])
    time.sleep(1.0)  # anything counted twice would show up now
    got = scrape(port)
    assert events_seen(got) == expected
    return got


def test_sigkill_at_twenty_moments_loses_and_doubles_nothing(broker, tmp_path):
    events = make_events(60_000)  # ~ 115k messages with feedback, duplicates and malformed ones
    assert len(events) >= 100_000
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, compression_type="gzip", linger_ms=20)
    done = threading.Event()

    def produce():
        # Spread over ~15 s so that kills land while the worker is busy.
        for i in range(0, len(events), 2000):
            for topic, key, value in events[i:i + 2000]:
                producer.send(topic, key=key.encode(), value=value)
            producer.flush()
            time.sleep(0.25)
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    port = free_port()
    # Every other worker reads Kafka in a child process (--prefetch), which a SIGKILL orphans.
    worker = kill_repeatedly(lambda *extra: start_worker(broker, tmp_path, port, *extra), 20, random.Random(3),
                             (0.5, 1.5), [["--prefetch"], []])
    try:
        assert done.wait(120), "producer did not finish"
        got = read_everything(port, len(events), 120, worker)
    finally:
        worker.stop(timeout=10)
        producer.close()

    assert_equals_oracle(got, events)


@pytest.mark.parametrize("join_store", ["memory", "disk"])
def test_sigkill_twenty_times_through_a_backlog_with_default_ttls(broker, tmp_path, join_store):
    """Everything is in Kafka before the worker starts (the case after any outage), feedback first; the worker
    is killed 20 times while it works through it. Default TTLs: exact only if the topics are read aligned. On
    the disk store a kill lands between (or during) its commits: it must go back to the last one."""
    from tests.kafka_oracle import aligned, partition_of
    from tests.test_kafka_order import with_features

    events = with_features(make_events(30_000, seed=5, spacing=0.5))  # 4 hours of event time
    topics = {"predictions": f"backlog-p-{join_store}", "feedback": f"backlog-f-{join_store}"}
    create_topics(broker, topics.values(), PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, compression_type="gzip", linger_ms=20)
    for topic, key, value in sorted(events, key=lambda e: e[0] != "feedback"):  # stable: each topic in order
        producer.send(topics[topic], key=key.encode(), value=value, partition=partition_of(key, PARTITIONS))
    producer.flush()
    producer.close()
    port = free_port()
    args = ["--topics", f"{topics['predictions']},{topics['feedback']}", "--group", f"backlog-{join_store}",
            "--join-store", join_store]

    def start(*extra):
        return start_worker(broker, tmp_path, port, *args, *extra, app="tests/kafka_app.py:default_ttls")
    worker = kill_repeatedly(start, 20, random.Random(5), (0.3, 1.0),
                             [["--prefetch"], ["--kafka-client", "confluent"], []])
    try:
        got = read_everything(port, len(events), 120, worker)
    finally:
        worker.stop(timeout=10)
    assert_equals_oracle(got, aligned(events, PARTITIONS), feedback_ttl=7 * 86400, prediction_ttl=3600)
