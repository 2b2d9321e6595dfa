"""Kafka end to end: the same events, however the two topics are interleaved, publish one result.

Each case produces the events of tests/test_kafka_recovery.py (out-of-order, late, duplicate,
malformed) into fresh topics with the product's default TTLs, in an adversarial order, then lets a
worker read them: a backlog with one topic fully produced before the other, or a live stream whose
feedback producer pauses at random. The scrape must equal the oracle over the aligned order.
"""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
from kafka import KafkaProducer

from tests.kafka_oracle import aligned, assert_equals_oracle, partition_of, valid
from tests.test_kafka_recovery import make_events
from tests.worker_helpers import Worker, create_topics, free_port, scrape, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
PARTITIONS = 4
DEFAULT_TTLS = dict(feedback_ttl=7 * 86400, prediction_ttl=3600)


def produce(broker, topics: dict[str, str], events, *, pause_topic: str | None = None, seed: int = 0) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, compression_type="gzip", linger_ms=20)
    rng = random.Random(seed)
    try:
        for topic, key, value in events:
            producer.send(topics[topic], key=key.encode(), value=value, partition=partition_of(key, PARTITIONS))
            if pause_topic and topic == pause_topic and rng.random() < 0.0005:
                producer.flush()
                time.sleep(rng.uniform(0.05, 0.3))  # a short stall of one topic while the other waits
        producer.flush()
    finally:
        producer.close()


def with_features(events):
    """Predictions carry features (2 KB here) and feedback does not: read from a backlog, a fetch of the
    same bytes per partition brings ~40x more feedback than predictions, so the topics drift apart."""
    out = []
    for topic, key, value in events:
        if topic == "predictions" and valid(topic, key, value):
            event = json.loads(value)
            value = json.dumps({**event, "features": {"text": "x" * 2000}}).encode()
        out.append((topic, key, value))
    return out


def events_seen(s: dict) -> float:
    return sum(v for (n, _), v in s.items() if n == "streammon_events_total")


CASES = {
    "feedback topic first": dict(order="feedback"),
    "predictions topic first": dict(order="predictions"),
    "live, feedback pausing": dict(order="live"),
}


@pytest.mark.parametrize("client", ["kafka-python", "confluent", "prefetch"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_interleaving_publishes_the_oracle_with_default_ttls(broker, client, case, tmp_path):
    events = with_features(make_events(12_000, seed=11, spacing=1.0))  # 3.3 hours: past the 1-hour TTL of early feedback
    name = f"{client}-{case}".replace(" ", "-").replace(",", "")
    topics = {"predictions": f"p-{name}", "feedback": f"f-{name}"}
    create_topics(broker, topics.values(), PARTITIONS)
    order = CASES[case]["order"]
    if order != "live":  # a backlog: everything is in Kafka before the worker starts
        first = [e for e in events if e[0] == order]
        produce(broker, topics, first + [e for e in events if e[0] != order])
    port = free_port()
    extra = {"confluent": ["--kafka-client", "confluent"], "prefetch": ["--prefetch"]}.get(client, [])
    worker = Worker("run", "tests/kafka_app.py:default_ttls", "--bootstrap-servers", broker.bootstrap_servers,
                    "--topics", f"{topics['predictions']},{topics['feedback']}", "--group", name,
                    "--metrics-port", str(port), *extra, log=tmp_path / "worker.log")
    try:
        if order == "live":
            producer = threading.Thread(target=produce, args=(broker, topics, events), kwargs=dict(pause_topic="feedback"))
            producer.start()
            producer.join(120)
        wait_for(lambda: worker.poll() is None and events_seen(scrape(port)) >= len(events), 120,
                 "the worker to read every event", workers=[worker])
        time.sleep(0.5)  # anything counted twice would show now
        got = scrape(port)
    finally:
        worker.stop()
    assert events_seen(got) == len(events), worker.report()
    assert_equals_oracle(got, aligned(events, PARTITIONS), **DEFAULT_TTLS)
