"""Rejected messages too big for the dead-letter topic go there truncated; a send that fails is counted and logged."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import streammon as sm
from streammon import operators as ops
from streammon.connectors import Message
from streammon.connectors.broker import EmbeddedBroker
from streammon.connectors.kafka import DEAD_LETTER_MAX_BYTES, KafkaDeadLetter, KafkaSource, dead_letter_record
from streammon.connectors.kafka_confluent import ConfluentKafkaDeadLetter, ConfluentKafkaSource
from streammon.errors import RegistrationError, SourceError
from tests.worker_helpers import create_topics

CLIENTS = {"kafka-python": (KafkaSource, KafkaDeadLetter), "confluent": (ConfluentKafkaSource, ConfluentKafkaDeadLetter)}
BIG = 1_600_000  # over max_event_bytes (1 MiB), over both producers' default limits


def record_size(key, value, headers) -> int:
    return len(key or b"") + len(value or b"") + sum(len(h) + len(v) for h, v in headers)


# -- the record, without a broker -------------------------------------------------------------
def test_a_message_that_fits_is_copied_whole_with_no_truncation_headers():
    key, value, headers = dead_letter_record(Message(b"{not json", "prediction", b"a1", "predictions", 2, 7), "invalid JSON")
    assert (key, value) == (b"a1", b"{not json")
    assert dict(headers) == {"streammon.reason": b"invalid JSON", "streammon.origin": b"predictions/2/7"}


@pytest.mark.parametrize("max_bytes", [4096, 100_000, DEAD_LETTER_MAX_BYTES])
def test_an_oversize_value_is_cut_to_fit_and_says_so(max_bytes):
    payload = bytes(range(256)) * (BIG // 256)
    key, value, headers = dead_letter_record(Message(payload, "prediction", b"a1", "predictions", 0, 3),
                                             "event of 1600000 bytes exceeds max_event_bytes=1048576", max_bytes=max_bytes)
    h = dict(headers)
    assert key == b"a1" and payload.startswith(value) and len(value) > max_bytes // 2
    assert record_size(key, value, headers) <= max_bytes - 256  # room left for the record's framing
    assert h["streammon.truncated"] == b"value" and h["streammon.original_size"] == str(len(payload)).encode()
    assert h["streammon.reason"].startswith(b"event of 1600000 bytes") and h["streammon.origin"] == b"predictions/0/3"


def test_a_huge_key_and_reason_are_cut_too_and_a_decoded_event_is_its_json():
    event = {"id": "x" * 300_000, "blob": "y" * 900_000}
    key, value, headers = dead_letter_record(Message(event, "prediction", "k" * 700_000, "", 0, 0), "r" * 5000)
    h = dict(headers)
    assert h["streammon.truncated"] == b"reason,key,value"
    assert h["streammon.original_key_size"] == b"700000"
    assert h["streammon.original_size"] == str(len(json.dumps(event).encode())).encode()
    assert json.dumps(event).encode().startswith(value) and key == b"k" * len(key)
    assert record_size(key, value, headers) <= DEAD_LETTER_MAX_BYTES - 256


def test_the_limit_is_checked_and_never_above_the_producer_limit():
    with pytest.raises(RegistrationError, match="max_record_bytes=100: give at least 4096 bytes"):
        KafkaDeadLetter("127.0.0.1:9", max_record_bytes=100)
    sink = ConfluentKafkaDeadLetter("127.0.0.1:9", max_record_bytes=5_000_000, **{"message.max.bytes": 200_000})
    assert sink.max_record_bytes == 200_000
    assert ConfluentKafkaDeadLetter("127.0.0.1:9").max_record_bytes == DEAD_LETTER_MAX_BYTES


# -- on the broker ----------------------------------------------------------------------------
def new_monitor(name: str) -> sm.Monitor:
    monitor = sm.Monitor(name, windows=[sm.Cumulative()], max_future_seconds=1e12)
    monitor.track(ops.Count(of="prediction"), name="n")
    return monitor


def totals(monitor: sm.Monitor) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in monitor.values():
        if s.name == "streammon_events_total":
            out[s.labels["outcome"]] = out.get(s.labels["outcome"], 0) + s.value
        elif s.name in ("streammon_dead_letters_total", "streammon_dead_letter_failures_total"):
            out[s.name] = s.value
    return {k: v for k, v in out.items() if v or k.startswith("streammon_")}


def read_topic(broker, topic: str, expected: int) -> list:
    # Assigned, not subscribed: no group to join, so nothing waits on a rebalance.
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=4 << 20)
    records: list = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))])
        deadline = time.monotonic() + 30
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=500).values():  # anything extra shows up here
            records.extend(batch)
    finally:
        consumer.close()
    return records


@pytest.mark.kafka
@pytest.mark.parametrize("client", list(CLIENTS))
def test_an_oversize_rejected_message_reaches_the_dead_letter_topic_truncated(broker, client):
    Source, DeadLetter = CLIENTS[client]
    tag = uuid.uuid4().hex[:8]
    predictions, feedback, dead_topic = f"predictions-{tag}", f"feedback-{tag}", f"dead-{tag}"
    create_topics(broker, [predictions, feedback], 1)
    big = json.dumps({"id": "big", "ts": 1_700_000_000, "prediction": 1, "pad": "x" * BIG}).encode()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, max_request_size=4 << 20)
    for key, value in ((b"a", b'{"id": "a", "ts": 1700000000, "prediction": 1}'), (b"big", big), (b"c", b"{not json")):
        producer.send(predictions, key=key, value=value)
    producer.flush()
    producer.close()

    monitor = new_monitor(client.replace("-", "_"))
    sink = DeadLetter(broker.bootstrap_servers, topic=dead_topic)
    monitor.dead_letter = sink
    deadline = time.monotonic() + 60
    monitor.run(Source(broker.bootstrap_servers, predictions_topic=predictions, feedback_topic=feedback, group_id=tag),
                until=lambda: sum(totals(monitor).get(k, 0) for k in ("accepted", "rejected")) >= 3 or time.monotonic() > deadline)
    sink.close()

    assert totals(monitor) == {"accepted": 1, "rejected": 2, "streammon_dead_letters_total": 2,
                               "streammon_dead_letter_failures_total": 0}
    assert (sink.delivered, sink.failed) == (2, 0)
    records = {r.key: r for r in read_topic(broker, dead_topic, 2)}
    assert set(records) == {b"big", b"c"}
    cut, whole = records[b"big"], records[b"c"]
    headers = dict(cut.headers)
    assert headers["streammon.truncated"] == b"value"
    assert headers["streammon.original_size"] == str(len(big)).encode()
    assert headers["streammon.reason"] == f"event of {len(big)} bytes exceeds max_event_bytes=1048576".encode()
    assert headers["streammon.origin"] == f"{predictions}/0/1".encode()
    assert big.startswith(cut.value) and DEAD_LETTER_MAX_BYTES // 2 < len(cut.value) < DEAD_LETTER_MAX_BYTES
    assert whole.value == b"{not json" and "streammon.truncated" not in dict(whole.headers)


@pytest.mark.kafka
@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_dead_letter_the_broker_never_gets_is_counted_and_logged(client, caplog):
    with EmbeddedBroker() as own:  # stopped under the sink, so it must not be the shared one
        settings = ({"delivery_timeout_ms": 2000, "request_timeout_ms": 1000, "linger_ms": 0} if client == "kafka-python"
                    else {"message.timeout.ms": 2000})
        sink = CLIENTS[client][1](own.bootstrap_servers, topic="dead", **settings)
        monitor = new_monitor("lost")
        monitor.dead_letter = sink
        monitor.process([Message(b"{not json", "prediction", b"a", "predictions", 0, 0)])
        sink.flush(30)  # the topic's metadata is known now: the next send is queued, not refused at once
        own.stop()
        monitor.process([Message(b"{still not json", "prediction", b"b", "predictions", 0, 1)])
        sink.flush(30)  # returns once the broker's answer (here: a timeout) came
    assert (sink.delivered, sink.failed) == (1, 1)
    assert totals(monitor) == {"rejected": 2, "streammon_dead_letters_total": 2, "streammon_dead_letter_failures_total": 1}
    assert "not delivered to the dead-letter topic dead" in caplog.text


@pytest.mark.kafka
def test_a_send_refused_at_once_is_counted_as_failed_and_not_as_sent(caplog):
    with EmbeddedBroker() as own:
        sink = KafkaDeadLetter(own.bootstrap_servers, max_block_ms=300)
    monitor = new_monitor("refused")
    monitor.dead_letter = sink
    # The broker is gone before the topic's metadata was fetched: send() itself gives up after max_block_ms.
    monitor.process([Message(b"{not json", "prediction", b"a", "predictions", 0, 5)])
    assert sink.failed == 1
    assert totals(monitor) == {"rejected": 1, "streammon_dead_letters_total": 0, "streammon_dead_letter_failures_total": 1}
    assert "cannot send the rejected event predictions/0/5 to the dead-letter topic 'streammon-dead-letter'" in caplog.text
    with pytest.raises(SourceError, match="cannot send the rejected event"):
        sink.send(Message(b"x", "prediction", b"a", "predictions", 0, 6), "r")
