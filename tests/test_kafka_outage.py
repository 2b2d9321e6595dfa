"""A broker outage: the worker keeps serving its last metrics, reports the outage, and reconnects."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaProducer

from streammon.connectors.broker import EmbeddedBroker
from tests.worker_helpers import Worker, create_topics, free_port, scrape, wait_for

pytestmark = pytest.mark.kafka


def value(samples, name, **labels):
    return next(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def test_worker_survives_a_broker_outage(tmp_path):
    broker = EmbeddedBroker().start()  # its own: stopped and restarted below
    port = free_port()
    worker = None
    try:
        create_topics(broker, ["predictions", "feedback"], 2)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        for i in range(200):
            key = f"p{i}".encode()
            producer.send("predictions", key=key, value=json.dumps({"id": f"p{i}", "ts": 1000 + i, "prediction": i % 2}).encode())
            producer.send("feedback", key=key, value=json.dumps({"id": f"p{i}", "ts": 1010 + i, "label": 1}).encode())
        producer.flush()
        producer.close()
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        worker = Worker("run", "tests/kafka_app.py:monitor", "--bootstrap-servers", broker.bootstrap_servers,
                        "--state-dir", str(state_dir), "--metrics-port", str(port), "--checkpoint-interval", "0.2",
                        log=tmp_path / "worker.log")
        wait_for(lambda: value(scrape(port), "streammon_joined_total") == 200, 60, "the worker to join every pair",
                 workers=[worker])
        before = scrape(port)
        assert value(before, "streammon_source_connected") == 1
        broker.stop()
        wait_for(lambda: value(scrape(port), "streammon_source_connected") == 0, 30, "the outage to be reported",
                 workers=[worker])
        during = scrape(port)
        assert worker.poll() is None, worker.report()
        assert value(during, "streammon_accuracy", window="cumulative", version="") == value(before, "streammon_accuracy", window="cumulative", version="") == 0.5
        broker = EmbeddedBroker(port=broker.port).start()  # tansu comes back empty: the worker reconnects all the same
        wait_for(lambda: value(scrape(port), "streammon_source_connected") == 1, 60, "the worker to reconnect",
                 workers=[worker])
        assert value(scrape(port), "streammon_joined_total") == 200
    finally:
        if worker is not None:
            worker.stop(timeout=10)
        broker.stop()
