"""A broker outage: the worker keeps serving its last metrics, reports the outage, and reconnects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from streammon.connectors.broker import EmbeddedBroker
from tests.worker_helpers import free_port, scrape, wait_for

ROOT = Path(__file__).resolve().parent.parent


def value(samples, name, **labels):
    return next(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def test_worker_survives_a_broker_outage(tmp_path):
    broker = EmbeddedBroker().start()
    port = free_port()
    worker = None
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        admin.create_topics([NewTopic("predictions", 2, 1), NewTopic("feedback", 2, 1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        for i in range(200):
            key = f"p{i}".encode()
            producer.send("predictions", key=key, value=json.dumps({"id": f"p{i}", "ts": 1000 + i, "prediction": i % 2}).encode())
            producer.send("feedback", key=key, value=json.dumps({"id": f"p{i}", "ts": 1010 + i, "label": 1}).encode())
        producer.flush()
        producer.close()
        worker = subprocess.Popen(
            [sys.executable, "-m", "streammon", "run", "tests/kafka_app.py:monitor", "--bootstrap-servers",
             broker.bootstrap_servers, "--state-dir", str(tmp_path), "--metrics-port", str(port), "--checkpoint-interval", "0.2"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wait_for(lambda: value(scrape(port), "streammon_joined_total") == 200, 60, "the worker to join every pair")
        before = scrape(port)
        assert value(before, "streammon_source_connected") == 1
        broker.stop()
        wait_for(lambda: value(scrape(port), "streammon_source_connected") == 0, 30, "the outage to be reported")
        during = scrape(port)
        assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
        assert value(during, "streammon_accuracy", window="cumulative", version="") == value(before, "streammon_accuracy", window="cumulative", version="") == 0.5
        broker = EmbeddedBroker(port=broker.port).start()  # tansu comes back empty: the worker reconnects all the same
        wait_for(lambda: value(scrape(port), "streammon_source_connected") == 1, 60, "the worker to reconnect")
        assert value(scrape(port), "streammon_joined_total") == 200
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
        broker.stop()
