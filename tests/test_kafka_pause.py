"""The sources' pause/resume on a real broker: a partition paused in the middle of a fetched batch and
resumed later delivers the rest of its log, each record once and in offset order.

The aligned input pauses partitions read far ahead of the others (a backlog) and resumes them once
they drain. kafka-python 3.0.12 parks the parsed records of a partition paused mid-batch and never
gives them back, or fetches that partition again, while a drained batch sits in its in-line slot:
every partition of a backlog stalled after its first pause (found by the live SIGKILL test).
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaProducer

from streammon.connectors.kafka import KafkaSource
from tests.worker_helpers import create_topics

pytestmark = pytest.mark.kafka
PER_PARTITION = 3000
PARTITIONS = 2


def backlog(broker) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    topics = {"predictions": f"p-{tag}", "feedback": f"f-{tag}"}
    create_topics(broker, topics.values(), PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=20)
    for topic in topics.values():
        for partition in range(PARTITIONS):
            for i in range(PER_PARTITION):
                producer.send(topic, key=f"k{i}".encode(), value=b"%d" % i, partition=partition)
    producer.flush()
    producer.close()
    return topics


def new_source(client: str, broker, topics):
    kwargs = dict(predictions_topic=topics["predictions"], feedback_topic=topics["feedback"], group_id=f"pause-{client}")
    if client == "confluent":
        from streammon.connectors.kafka_confluent import ConfluentKafkaSource
        return ConfluentKafkaSource(broker.bootstrap_servers, **kwargs)
    return KafkaSource(broker.bootstrap_servers, **kwargs)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_partitions_paused_mid_batch_deliver_the_rest_after_resume(broker, client):
    topics = backlog(broker)
    source = new_source(client, broker, topics)
    seen: dict[tuple[str, int], list[int]] = {}

    def take(batch):
        for m in batch:
            seen.setdefault((m.topic, m.partition), []).append(m.offset)

    try:
        deadline = time.monotonic() + 30
        last = None
        while last is None and time.monotonic() < deadline:
            batch = source.poll(100, 0.5)  # a small poll leaves most of a fetched batch behind
            take(batch)
            last = batch[-1] if batch else None
        everything = source.input_partitions
        # Pause the partition delivered last (its fetched data is likely half-returned) while the others
        # go on, then resume it: each round, the client must give back what it held of it.
        for _ in range(12):
            held = (last.topic, last.partition)
            source.pause([held])
            for _ in range(3):
                batch = source.poll(100, 0.2)
                assert held not in {(m.topic, m.partition) for m in batch}, f"paused {held} delivered records"
                take(batch)
                last = batch[-1] if batch else last
            source.resume([held])
            if (last.topic, last.partition) == held:
                take(batch := source.poll(100, 0.2))
                last = batch[-1] if batch else last
        deadline = time.monotonic() + 30
        while sum(map(len, seen.values())) < len(everything) * PER_PARTITION and time.monotonic() < deadline:
            take(source.poll(500, 0.5))
    finally:
        source.close()
    assert sorted(seen) == sorted(everything)
    for tp, offsets in seen.items():
        assert offsets == list(range(PER_PARTITION)), f"{tp}: {len(offsets)} records, first gap near {next((i for i, o in enumerate(offsets) if o != i), None)}"
