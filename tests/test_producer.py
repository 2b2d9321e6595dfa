"""The producer SDK and ``streammon produce``, against the embedded Kafka-protocol broker (tansu).

Oracles: what kafka-python's own consumer reads back from the broker (keys, and values decoded by
``decode_event`` into models equal to the ones built from the inputs); ``decode_event`` itself for
the rejection reasons (the producer must reject exactly what the monitor rejects, for the same
reason); the greedy byte count of the buffer bound; scikit-learn's ``accuracy_score`` for a monitor
fed by the in-memory twin.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, codec
from sklearn.metrics import accuracy_score

from streammon import (
    Cumulative,
    EventError,
    Feedback,
    Monitor,
    Prediction,
    RegistrationError,
    SourceError,
    decode_event,
)
from streammon import operators as ops
from streammon.cli import main
from streammon.connectors import write_events
from streammon.connectors.broker import EmbeddedBroker
from streammon.connectors.producer import EventProducer, MemoryProducer
from tests.worker_helpers import free_port

T0 = 1_700_000_000.0


def topics() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"predictions-{tag}", f"feedback-{tag}"


def consume(bootstrap: str, names: list[str], expected: int, *, deadline: float = 20.0) -> list:
    """Every record of ``names`` from the beginning: waits for ``expected`` of them, then a little more to
    catch any extra (tansu's end offsets are off by one batch, so counting is done by reading)."""
    consumer = KafkaConsumer(*names, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    records: list = []
    try:
        stop_at = time.monotonic() + deadline
        while time.monotonic() < stop_at and len(records) < expected:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        settle = time.monotonic() + 0.6
        while time.monotonic() < settle:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def prediction_fields(rng: np.random.Generator, i: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"id": f"req-{i}-é", "ts": T0 + i * 0.25, "prediction": int(rng.integers(0, 3))}
    if i % 3:
        fields["score"] = {str(c): float(p) for c, p in enumerate(rng.dirichlet([1, 1, 1]))}
    else:
        fields["score"] = float(rng.random())
    fields["features"] = {"distance": float(rng.exponential(3)), "city": str(rng.choice(["nyc", "sf"])),
                          "tip": None if i % 4 == 0 else float(rng.random())}
    fields["segment"] = {"version": f"v{i % 2}"}
    if i % 5 == 0:
        fields["request_path"] = "/predict"  # unknown fields are kept (design section 2)
    return fields


# -- round trip ----------------------------------------------------------------------------
@pytest.mark.kafka
def test_round_trip_from_threads_equals_the_models_and_the_twin(broker):
    pred_topic, fb_topic = topics()
    rng = np.random.default_rng(7)
    predictions = [prediction_fields(rng, i) for i in range(400)]
    feedback = [{"id": p["id"], "ts": p["ts"] + 30, "label": int(rng.integers(0, 3))} for p in predictions[::2]]
    twin = MemoryProducer(predictions_topic=pred_topic, feedback_topic=fb_topic)

    with EventProducer(broker.bootstrap_servers, predictions_topic=pred_topic, feedback_topic=fb_topic) as producer:
        def log_share(share: list[dict]) -> None:  # a model server's request threads
            for fields in share:
                f = dict(fields)
                producer.log_prediction(f.pop("id"), f.pop("prediction"), **f)

        threads = [threading.Thread(target=log_share, args=(predictions[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for f in feedback[: len(feedback) // 2]:
            producer.log_feedback(f["id"], f["label"], ts=f["ts"])
        for f in feedback[len(feedback) // 2:]:
            producer.send(Feedback(**f))
        before = time.time()
        producer.log_feedback("late-one", "yes")  # ts defaults to now
        after = time.time()
        for t in threads:
            t.join()
        producer.flush()
        assert producer.pending == 0
        gzip_rate = producer.metrics()["producer-metrics"]["compression-rate-avg"]
    for fields in predictions:
        f = dict(fields)
        twin.log_prediction(f.pop("id"), f.pop("prediction"), **f)
    for f in feedback:
        twin.log_feedback(f["id"], f["label"], ts=f["ts"])

    records = consume(broker.bootstrap_servers, [pred_topic, fb_topic], len(predictions) + len(feedback) + 1)
    by_topic = {pred_topic: [r for r in records if r.topic == pred_topic],
                fb_topic: [r for r in records if r.topic == fb_topic]}
    assert len(by_topic[pred_topic]) == len(predictions)
    assert len(by_topic[fb_topic]) == len(feedback) + 1

    got = {r.key: decode_event(r.value, kind="prediction", key=r.key) for r in by_topic[pred_topic]}
    assert got == {p["id"].encode("utf-8"): Prediction(**p) for p in predictions}
    assert got[b"req-5-\xc3\xa9"].extra == {"request_path": "/predict"}
    fb_got = {r.key: decode_event(r.value, kind="feedback", key=r.key) for r in by_topic[fb_topic]}
    late = fb_got.pop(b"late-one")
    assert late.label == "yes" and before <= late.ts <= after
    assert fb_got == {f["id"].encode("utf-8"): Feedback(**f) for f in feedback}
    assert all(b'"kind"' not in r.value for r in records)  # the topic tells it

    # Same key on both topics: co-partitioned (tansu creates both with the same partition count).
    pred_partition = {r.key: r.partition for r in by_topic[pred_topic]}
    assert all(pred_partition[r.key] == r.partition for r in by_topic[fb_topic] if r.key in pred_partition)
    # The in-memory twin writes byte-for-byte what the broker received.
    sent = Counter((r.topic, r.key, r.value) for r in records if r.key != b"late-one")
    assert sent == Counter(twin.records)
    assert gzip_rate < 0.9  # batches were gzip-compressed (compressed size / raw size)


@pytest.mark.kafka
def test_compression_none_sends_batches_raw(broker):
    pred_topic, _ = topics()
    rng = np.random.default_rng(1)
    with EventProducer(broker.bootstrap_servers, predictions_topic=pred_topic, compression="none") as producer:
        for i in range(50):
            f = prediction_fields(rng, i)
            producer.log_prediction(f.pop("id"), f.pop("prediction"), **f)
        producer.flush()
        assert producer.metrics()["producer-metrics"]["compression-rate-avg"] == 1.0
    assert len(consume(broker.bootstrap_servers, [pred_topic], 50)) == 50


# -- invalid events ------------------------------------------------------------------------
def monitor_reason(fields: Any, kind: str | None) -> str:
    with pytest.raises(EventError) as caught:
        decode_event(fields, kind=kind)
    return caught.value.reason


INVALID = [  # (how the producer is called, the same event as the monitor would read it)
    (lambda p: p.log_prediction("a", 1, ts=T0, score="high"),
     ({"id": "a", "ts": T0, "prediction": 1, "score": "high"}, "prediction")),
    (lambda p: p.log_prediction("a", 1, ts=T0, score=float("nan")),
     ({"id": "a", "ts": T0, "prediction": 1, "score": float("nan")}, "prediction")),
    (lambda p: p.log_prediction("", 1, ts=T0), ({"id": "", "ts": T0, "prediction": 1}, "prediction")),
    (lambda p: p.log_prediction("a", [1, 2], ts=T0), ({"id": "a", "ts": T0, "prediction": [1, 2]}, "prediction")),
    (lambda p: p.log_prediction("a", 1, ts="2023-11-14T22:13:20"),
     ({"id": "a", "ts": "2023-11-14T22:13:20", "prediction": 1}, "prediction")),
    (lambda p: p.log_prediction("a", 1, ts=-5.0), ({"id": "a", "ts": -5.0, "prediction": 1}, "prediction")),
    (lambda p: p.log_prediction("a", 1, ts=T0, features={"x": [1]}),
     ({"id": "a", "ts": T0, "prediction": 1, "features": {"x": [1]}}, "prediction")),
    (lambda p: p.log_feedback("a", {"nested": 1}, ts=T0), ({"id": "a", "ts": T0, "label": {"nested": 1}}, "feedback")),
    (lambda p: p.send({"id": "a", "ts": T0}), ({"id": "a", "ts": T0}, None)),
    (lambda p: p.send({"id": "a", "ts": T0, "prediction": 1, "kind": "feedback"}),
     ({"id": "a", "ts": T0, "prediction": 1, "kind": "feedback"}, None)),
    (lambda p: p.send(b"{not json", kind="prediction"), (b"{not json", "prediction")),
    (lambda p: p.log_prediction("\ud800", 1, ts=T0), ({"id": "\ud800", "ts": T0, "prediction": 1}, "prediction")),
]


@pytest.mark.kafka
def test_invalid_events_raise_the_monitors_reason_and_send_nothing(broker):
    pred_topic, fb_topic = topics()
    twin = MemoryProducer(predictions_topic=pred_topic, feedback_topic=fb_topic)
    with EventProducer(broker.bootstrap_servers, predictions_topic=pred_topic, feedback_topic=fb_topic) as producer:
        for call, (fields, kind) in INVALID:
            for p in (producer, twin):
                with pytest.raises(EventError) as caught:
                    call(p)
                assert caught.value.reason == monitor_reason(fields, kind)
        for p in (producer, twin):
            future = time.time() + 3 * 86400
            with pytest.raises(EventError, match="in the future"):
                p.log_feedback("a", 1, ts=future)
            with pytest.raises(EventError, match="exceeds max_event_bytes"):
                p.log_prediction("a", 1, ts=T0, features={"blob": "x" * (1 << 20)})
        assert producer.pending == 0 and twin.records == []
        producer.log_prediction("sentinel", 1, ts=T0)  # the only events that may reach the broker
        producer.log_feedback("sentinel", 1, ts=T0 + 1)
    records = consume(broker.bootstrap_servers, [pred_topic, fb_topic], 2)
    assert sorted((r.topic, r.key) for r in records) == [(fb_topic, b"sentinel"), (pred_topic, b"sentinel")]


# -- failures at the Kafka boundary --------------------------------------------------------
@pytest.mark.kafka
def test_full_buffer_times_out_with_source_error_and_close_counts_the_undelivered():
    limit, timeout = 4000, 0.5
    with EmbeddedBroker() as own:
        producer = EventProducer(own.bootstrap_servers, max_buffer_bytes=limit, send_timeout=timeout)
        producer.log_prediction("before", 1, ts=T0)
        producer.flush(5.0)
        own.stop()  # the broker goes away: nothing more is acknowledged

        sizes, accepted = [], 0
        with pytest.raises(SourceError, match=r"send buffer .* stayed full") as caught:
            while accepted < 1000:
                event = {"id": f"id-{accepted}", "ts": T0 + accepted, "prediction": 1, "score": 0.5}
                _, key, value = producer.encode(event)
                sizes.append(len(key) + len(value))
                started = time.monotonic()
                producer.send(event)
                accepted += 1
        waited = time.monotonic() - started
    assert timeout <= waited < timeout + 2.0
    assert caught.value.__cause__ is None or not isinstance(caught.value.__cause__, SourceError)
    # Oracle: the bound admits events greedily while their bytes fit, and refuses the first that does not.
    fitting = int(np.searchsorted(np.cumsum(sizes), limit, side="right"))
    assert accepted == fitting == len(sizes) - 1
    assert producer.pending == accepted

    with pytest.raises(SourceError, match=f"{accepted} events still waiting"):
        producer.flush(0.3)
    with pytest.raises(SourceError, match=f"{accepted} events were not delivered"):
        producer.close(timeout=0.3)
    assert producer.pending == 0
    with pytest.raises(SourceError, match="closed"):
        producer.log_prediction("after", 1)
    producer.close()  # closing twice is harmless


def test_unreachable_broker_is_a_source_error_within_the_timeout():
    started = time.monotonic()
    with pytest.raises(SourceError, match="cannot start a Kafka producer") as caught:
        EventProducer(f"127.0.0.1:{free_port()}", send_timeout=0.5)
    assert time.monotonic() - started < 3.0
    assert type(caught.value.__cause__).__module__.startswith("kafka")  # mapped at the boundary


def test_security_and_client_settings_reach_kafka_python():
    seen: dict[str, Any] = {}

    class RecordingClient:  # kafka-python builds its network client from the final settings
        def __init__(self, **config):
            seen.update(config)
            raise ConnectionRefusedError("recorded")

    secure = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
              "sasl_plain_password": "secret", "ssl_cafile": "/etc/ca.pem", "acks": 1}
    with pytest.raises(SourceError, match="recorded"):
        EventProducer("kafka-1:9093", compression="gzip", linger_ms=7, send_timeout=2.5,
                      kafka_client=RecordingClient, **secure)
    assert {k: seen[k] for k in secure} == secure
    assert (seen["compression_type"], seen["linger_ms"], seen["max_block_ms"]) == ("gzip", 7, 2500)
    assert seen["bootstrap_servers"] == "kafka-1:9093"

    seen.clear()
    with pytest.raises(SourceError):
        EventProducer("kafka-1:9093", compression="none", max_block_ms=100, kafka_client=RecordingClient)
    assert (seen["compression_type"], seen["max_block_ms"]) == (None, 100)  # an explicit setting wins


@pytest.mark.parametrize("settings, fix", [
    ({"compression": "snappy"}, "compression"),
    ({"max_buffer_bytes": 0}, "max_buffer_bytes"),
    ({"send_timeout": -1}, "send_timeout"),
    ({"value_serializer": str.encode}, "compact JSON"),
    ({"compression_type": "gzip"}, "compression="),
    ({"sasl_plain_user": "svc"}, "not a kafka-python producer setting"),
])
def test_wrong_settings_are_refused_with_the_fix(settings, fix):
    with pytest.raises(RegistrationError, match=re.escape(fix)):
        EventProducer("127.0.0.1:1", **settings)


@pytest.mark.kafka
@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_optional_codecs_need_their_package(broker, compression):
    available = getattr(codec, f"has_{compression}")()
    if available:
        with EventProducer(broker.bootstrap_servers, compression=compression) as producer:
            producer.log_prediction("a", 1)
    else:
        with pytest.raises(RegistrationError, match="pip install"):
            EventProducer(broker.bootstrap_servers, compression=compression)


# -- streammon produce ---------------------------------------------------------------------
def file_events(n: int) -> list[dict]:
    rng = np.random.default_rng(n)
    events = []
    for i in range(n):
        events.append({"id": f"f-{i}", "ts": T0 + i, "prediction": int(rng.integers(0, 2)),
                       "score": float(rng.random()), "features": {"x": float(rng.normal()), "city": "nyc"},
                       "segment": {"version": "v1"}})
        if rng.random() < 0.7:
            events.append({"id": f"f-{i}", "ts": T0 + i + 60, "label": int(rng.integers(0, 2))})
    return events


def by_kind(events: list[dict]) -> dict[str, dict[bytes, Any]]:
    out: dict[str, dict[bytes, Any]] = {"prediction": {}, "feedback": {}}
    for e in events:
        model = decode_event(e)
        out[model.kind][model.id.encode()] = model
    return out


@pytest.mark.kafka
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_produce_command_routes_each_event_by_kind(broker, tmp_path, capsys, suffix):
    events = file_events(300)
    path = tmp_path / f"events{suffix}"
    write_events(path, events)
    pred_topic, fb_topic = topics()

    code = main(["produce", str(path), "--bootstrap-servers", broker.bootstrap_servers,
                 "--predictions-topic", pred_topic, "--feedback-topic", fb_topic])
    out, err = capsys.readouterr()
    assert code == 0, err
    expected = by_kind(events)
    assert f"{len(expected['prediction']):,} to {pred_topic}" in out
    records = consume(broker.bootstrap_servers, [pred_topic, fb_topic], len(events))
    assert len(records) == len(events)
    for kind, topic in (("prediction", pred_topic), ("feedback", fb_topic)):
        mine = [r for r in records if r.topic == topic]
        assert len(mine) == len(expected[kind])
        assert {r.key: decode_event(r.value, kind=kind, key=r.key) for r in mine} == expected[kind]


@pytest.mark.kafka
def test_produce_command_to_one_topic_with_kind_and_rate(broker, tmp_path, capsys):
    events = file_events(150)
    path = tmp_path / "events.jsonl"
    write_events(path, ["{not json", *events])
    topic, _ = topics()
    predictions = by_kind(events)["prediction"]
    rate = 400.0

    started = time.monotonic()
    code = main(["produce", str(path), "--bootstrap-servers", broker.bootstrap_servers, "--topic", topic,
                 "--kind", "prediction", "--rate", str(rate), "--compression", "none"])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    rejected = len(events) - len(predictions) + 1  # the feedback lines and the malformed one
    assert code == 1 and f"{rejected:,} invalid events were not sent" in err
    assert "events.jsonl:1: malformed JSON" in err
    assert elapsed >= (len(predictions) - 1) / rate
    records = consume(broker.bootstrap_servers, [topic], len(predictions))
    # Off its own topic an event says its kind, so a reader of a mixed topic needs no hint.
    assert {r.key: decode_event(r.value) for r in records} == predictions
    assert len(records) == len(predictions)


def test_produce_command_usage_errors(tmp_path, capsys):
    assert main(["produce", str(tmp_path / "missing.jsonl"), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "no such file" in capsys.readouterr().err
    path = tmp_path / "events.jsonl"
    write_events(path, file_events(3))
    assert main(["produce", str(path), "--rate", "0"]) == 2
    assert main(["produce", str(path), "--topic", "t", "--feedback-topic", "f"]) == 2
    assert "--topic sends every event to one topic" in capsys.readouterr().err


# -- the in-memory twin --------------------------------------------------------------------
def test_memory_producer_feeds_a_monitor_whose_accuracy_equals_sklearn():
    rng = np.random.default_rng(11)
    producer = MemoryProducer()
    y_pred = rng.integers(0, 2, 500)
    truth: dict[str, int] = {}
    for i, p in enumerate(y_pred):
        producer.log_prediction(f"r{i}", int(p), ts=T0 + i)
        if rng.random() < 0.8:
            truth[f"r{i}"] = int(p) if rng.random() < 0.7 else 1 - int(p)
    for i in rng.permutation(500):  # feedback comes later, in any order
        if f"r{i}" in truth:
            producer.log_feedback(f"r{i}", truth[f"r{i}"], ts=T0 + 600 + i)

    monitor = Monitor("twin", windows=[Cumulative()])
    monitor.track(ops.Accuracy())
    monitor.process(producer.messages())
    ids = sorted(truth, key=lambda k: int(k[1:]))
    expected = accuracy_score([truth[k] for k in ids], [int(y_pred[int(k[1:])]) for k in ids])
    assert monitor.value("accuracy") == pytest.approx(expected, rel=1e-12)
    assert monitor.value("accuracy") != pytest.approx(float(np.mean(y_pred == 1)))  # not a trivial rate


def test_memory_producer_messages_carry_kind_key_and_per_topic_offsets():
    producer = MemoryProducer(predictions_topic="p", feedback_topic="f")
    producer.log_prediction("a", 1, ts=T0)
    producer.log_feedback("a", 0, ts=T0 + 1)
    producer.log_prediction("b", 0, ts=T0 + 2)
    producer.send({"id": "c", "ts": T0, "prediction": 1}, topic="mixed")
    got = [(m.topic, m.kind, m.key, m.offset) for m in producer.messages()]
    assert got == [("p", "prediction", b"a", 0), ("f", "feedback", b"a", 0), ("p", "prediction", b"b", 1),
                   ("mixed", None, b"c", 0)]
    assert decode_event(producer.messages()[-1].value).kind == "prediction"
    producer.close()
    with pytest.raises(SourceError, match="closed"):
        producer.log_prediction("d", 1)
