"""``streammon demo`` through Kafka: the simulated model server produces to a broker (the embedded
tansu one unless told otherwise) with the producer SDK, and a worker consumes, checkpoint-free,
serving ``/metrics``. Malformed events go around the SDK (which would refuse them), as a buggy
producer's would, so the monitor's rejection path shows too."""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from typing import TextIO

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from ..connectors.broker import EmbeddedBroker
from ..connectors.kafka import KafkaSource
from ..connectors.producer import EventProducer
from ..errors import EventError
from ..monitor import Monitor
from .local import DRIFT_AT, START, build_monitor, clock_text, report_progress, simulate

__all__ = ["run_kafka_demo"]

TOPICS = ("predictions", "feedback")


def _create_topics(bootstrap_servers: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        admin.create_topics([NewTopic(t, partitions, 1) for t in TOPICS])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def _produce(bootstrap_servers: str, seed: int, rate: float, stop: threading.Event, counter: list[int]) -> None:
    events = simulate(seed)
    raw = KafkaProducer(bootstrap_servers=bootstrap_servers)
    began = time.monotonic()
    with EventProducer(bootstrap_servers) as producer:
        while not stop.is_set():
            due = int((time.monotonic() - began) * rate) - counter[0]
            for event in itertools.islice(events, max(due, 0)):
                try:
                    producer.send(event)
                except EventError:
                    topic = "feedback" if "label" in event else "predictions"
                    raw.send(topic, key=str(event.get("id", "")).encode(), value=json.dumps(event).encode())
                counter[0] += 1
            stop.wait(0.02)
    raw.close()


def run_kafka_demo(*, seed: int = 0, rate: float = 1000.0, duration: float | None = None, port: int = 9108,
                   host: str = "127.0.0.1", serve: bool = True, report_every: float = 5.0, out: TextIO | None = None,
                   stop: threading.Event | None = None, bootstrap_servers: str | None = None,
                   produce_only: bool = False, partitions: int = 4) -> Monitor | None:
    """Broker (embedded unless ``bootstrap_servers``), simulated producer and monitor, until ``duration`` or ``stop``."""
    stop = stop or threading.Event()
    out = out or sys.stdout
    broker = None
    if bootstrap_servers is None:
        broker = EmbeddedBroker().start()
        bootstrap_servers = broker.bootstrap_servers
    finished = threading.Event()
    began = time.monotonic()
    over = lambda: stop.is_set() or (duration is not None and time.monotonic() - began >= duration)  # noqa: E731
    sent = [0]
    producer: threading.Thread | None = None
    try:
        _create_topics(bootstrap_servers, partitions)
        producer = threading.Thread(target=_produce, args=(bootstrap_servers, seed, rate, finished, sent),
                                    name="demo-producer", daemon=True)
        producer.start()
        where = f"the embedded broker at {bootstrap_servers}" if broker else bootstrap_servers
        if produce_only:
            print(f"streammon demo: producing the taxi-tip model's events to {where} at {rate:g} events/s", file=out, flush=True)
            while not over():
                time.sleep(0.1)
            return None
        monitor = build_monitor(seed=seed)
        url = monitor.serve(port, host=host).url if serve else "(not served)"
        print(f"streammon demo: taxi-tip model, seed {seed}, {rate:g} events/s through Kafka ({where}); the drift "
              f"begins at simulated {clock_text(START + DRIFT_AT)}; metrics at {url}", file=out, flush=True)
        reporter = threading.Thread(target=_report_loop, args=(monitor, report_every, out, url, finished, began),
                                    name="demo-report", daemon=True)
        reporter.start()
        monitor.run(KafkaSource(bootstrap_servers, group_id="streammon-demo"), until=over, poll_timeout=0.2)
        finished.set()
        reporter.join()
        report_progress(out, monitor, 0, 1.0, time.monotonic() - began, url)
        monitor.close()
        return monitor
    finally:
        finished.set()
        if producer is not None:
            producer.join(timeout=15)  # let it flush before the broker goes
        if broker is not None:
            broker.stop()


def _report_loop(monitor: Monitor, every: float, out: TextIO, url: str, finished: threading.Event, began: float) -> None:
    last, last_n = time.monotonic(), 0
    while not finished.wait(every):
        now = time.monotonic()
        n = _events_read(monitor)
        report_progress(out, monitor, n - last_n, now - last, now - began, url)
        last, last_n = now, n


def _events_read(monitor: Monitor) -> int:
    return int(sum(s.value for s in monitor.values() if s.name == "streammon_events_total"))
