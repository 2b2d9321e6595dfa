"""Scale-out on a real broker: workers join, leave and crash mid-stream; the merged metrics stay exact."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from kafka import KafkaProducer

from streammon.apps import load_app
from streammon.connectors import Message
from tests.kafka_oracle import KIND, assert_equals_oracle
from tests.test_kafka_recovery import make_events
from tests.worker_helpers import ROOT, Worker, create_topics, free_port, scrape, wait_for

PARTITIONS = 4
APP = "tests/kafka_app.py:monitor"
# Each client's options, with a short session: tansu completes a rebalance in session_timeout / 2
# (design section 10). Each client reads its own pair of topics.
CLIENTS = {
    "kafka-python": ["-X", "session_timeout_ms=2000", "-X", "heartbeat_interval_ms=500"],
    "confluent": ["--kafka-client", "confluent", "-X", "session.timeout.ms=2000", "-X", "heartbeat.interval.ms=500"],
}


def topics_of(client: str) -> dict[str, str]:
    return {"predictions": f"predictions-{client}", "feedback": f"feedback-{client}"}


@pytest.fixture(scope="module")
def broker(broker):
    """The module's broker (tests/conftest.py) with each client's pair of topics."""
    create_topics(broker, [t for client in CLIENTS for t in topics_of(client).values()], PARTITIONS)
    return broker


def start_worker(broker, state_dir, port, client: str, *extra: str, log) -> Worker:
    topics = topics_of(client)
    return Worker("run", APP, "--bootstrap-servers", broker.bootstrap_servers, "--group", f"scaleout-{client}", "--scale-out",
                  "--topics", f"{topics['predictions']},{topics['feedback']}", "--state-dir", str(state_dir),
                  "--metrics-port", str(port), "--checkpoint-interval", "0.5", *CLIENTS[client], *extra, log=log)


def owned(port: int) -> dict[str, set[int]]:
    """Topic -> partitions a worker reads, from its consumer-lag series."""
    found: dict[str, set[int]] = {"predictions": set(), "feedback": set()}
    for (name, labels), _ in scrape(port).items():
        if name == "streammon_consumer_lag":
            labels = dict(labels)
            found[labels["topic"].split("-", 1)[0]].add(int(labels["partition"]))  # predictions-<client> -> predictions
    return found


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("client", list(CLIENTS))
def test_workers_join_leave_and_crash_mid_stream_and_the_merged_metrics_stay_exact(broker, tmp_path, client):
    events = make_events(25_000, seed=11)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, compression_type="gzip", linger_ms=20)
    done, last_part = threading.Event(), threading.Event()

    def produce():
        # Paced, so the group changes while events flow; the last fifth waits until the crash is
        # over, so every change happens mid-stream however fast or slow the machine is.
        for i in range(0, len(events), 1500):
            if i >= len(events) * 0.8:
                last_part.wait(120)
            for topic, key, value in events[i:i + 1500]:
                producer.send(topics_of(client)[topic], key=key.encode(), value=value)
            producer.flush()
            time.sleep(0.4)
        done.set()

    state_dir = tmp_path / "state"  # shared by the workers and the exporter; the logs are next to it
    state_dir.mkdir()
    export_port = free_port()
    exporter = Worker("export", APP, "--state-dir", str(state_dir), "--metrics-port", str(export_port), "--refresh", "0.2",
                      log=tmp_path / "exporter.log")
    ports = [free_port() for _ in range(3)]
    workers: list[Worker] = []

    def start(port, *extra):
        return start_worker(broker, state_dir, port, client, *extra, log=tmp_path / f"worker-{len(workers)}.log")
    try:
        threading.Thread(target=produce, daemon=True).start()
        # --prefetch: this worker reads Kafka in a child process; stopped below, it must leave cleanly.
        workers.append(start(ports[0], "--prefetch"))
        wait_for(lambda: owned(ports[0])["predictions"] == set(range(PARTITIONS)), 30, "the first worker to own every partition",
                 workers=workers)
        time.sleep(2)
        # This one reads Kafka in a child process (--prefetch): rebalances reach it through the pipe,
        # and when it is SIGKILLed below, its orphaned reader must leave the group too.
        workers.append(start(ports[1], "--prefetch"))
        time.sleep(3)
        workers.append(start(ports[2]))

        def spread():  # three workers share the four partitions, partition i of both topics together
            seen = [owned(p) for p in ports]
            return (all(s["predictions"] == s["feedback"] and s["predictions"] for s in seen)
                    and sorted(p for s in seen for p in s["predictions"]) == list(range(PARTITIONS)))
        wait_for(spread, 30, "the group to spread the partitions over three workers", workers=workers)
        stopping = time.monotonic()
        workers[0].stop()  # leaves mid-stream: its partitions move, with their checkpoints
        assert workers[0].returncode == 0, workers[0].report()
        assert time.monotonic() - stopping < 15
        wait_for(lambda: sorted(p for port in ports[1:] for p in owned(port)["predictions"]) == list(range(PARTITIONS)),
                 30, "the two remaining workers to take over", workers=workers[1:])
        # A crash too: the group notices after the session timeout, and a new worker resumes from checkpoints.
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait()
        workers.append(start(ports[0]))
        last_part.set()
        assert done.wait(120), "producer did not finish"

        def events_seen():
            return sum(v for (n, _), v in scrape(export_port).items() if n == "streammon_events_total")
        try:
            wait_for(lambda: events_seen() >= len(events), 120, "the exporter to count every event")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_diagnosis(export_port, ports, workers, exporter)}") from None
        time.sleep(1.5)  # anything counted twice would show up now
        got = scrape(export_port)
        assert events_seen() == len(events)
        for w in workers[2:]:
            assert w.poll() is None, w.report()
        assert sorted(p for port in (ports[0], ports[2]) for p in owned(port)["predictions"]) == list(range(PARTITIONS))
    finally:
        last_part.set()
        for w in workers:
            w.stop()
        exporter.stop()
        producer.close()

    # Every rebalance went through the worker's listener without an error (kafka-python would
    # otherwise go on with an assignment the worker never opened).
    for w in workers:
        assert "Kafka poll failed" not in w.log_tail(None) and " failed\nTraceback" not in w.log_tail(None), w.report()
    # The same events through one in-process monitor (one stream time) and through the oracle.
    single = load_app(APP)
    single.replay([Message(value, kind=KIND[topic], key=key.encode()) for topic, key, value in events])
    compared = 0
    for s in single.values():
        if not s.name.startswith(("streammon_accuracy", "streammon_mae", "streammon_mean_score", "streammon_predictions",
                                  "streammon_missed_positive", "streammon_joined", "streammon_join_pending", "streammon_duplicates")):
            continue
        key = (s.name, tuple(sorted(s.labels.items())))
        assert key in got, f"{key} missing from the exporter"
        assert got[key] == pytest.approx(s.value, rel=1e-9, nan_ok=True), key
        compared += 1
    assert compared > 40

    assert_equals_oracle(got, events)
    assert sum(v for (n, labels), v in got.items() if n == "streammon_accuracy_count" and ("window", "10m") in labels) > 0
    assert not math.isnan(got[("streammon_stream_time_seconds", (("monitor", "kafka_test"),))])


def _diagnosis(export_port: int, ports: list[int], workers: list[Worker], exporter: Worker) -> str:
    """What each process saw, for a run that did not converge: counts, ownership, lag, stderr."""
    lines = []
    for label, port in [("exporter", export_port), *((f"worker :{p}", p) for p in ports)]:
        try:
            found = {k: v for k, v in scrape(port).items() if k[0] in (
                "streammon_events_total", "streammon_partials_age_seconds", "streammon_worker_partitions", "streammon_consumer_lag")}
            lines.append(f"{label}: {found}")
        except OSError as exc:
            lines.append(f"{label}: not answering ({exc})")
    for process in [*workers, exporter]:
        process.stop()
        lines.append(process.report())
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["export"], ["run", "--scale-out", "--group", "g", "--bootstrap-servers", "127.0.0.1:1"]])
def test_a_metric_that_cannot_merge_is_refused_at_start_with_the_fix(tmp_path, command):
    app = tmp_path / "river_app.py"
    app.write_text("import river.metrics\nimport streammon as sm\n"
                   "monitor = sm.Monitor('r', windows=[sm.Cumulative()])\nmonitor.track(river.metrics.Accuracy())\n")
    done = subprocess.run([sys.executable, "-m", "streammon", command[0], f"{app}:monitor", "--state-dir", str(tmp_path), *command[1:]],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr
    assert "'accuracy' (Accuracy) cannot" in done.stderr and "ops.Accuracy()" in done.stderr
