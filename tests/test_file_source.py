"""File replay (JSONL, Parquet) and the file dead-letter sink.

Oracles: a file replayed through ``monitor.run(FileSource(...))`` must publish exactly what
``monitor.replay`` publishes for the same events in the same order (every series, self metrics
included), and the cumulative metrics must equal scikit-learn / numpy over the events.
"""

from __future__ import annotations

import base64
import json
import math
import re
import tracemalloc
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score

import streammon as sm
from streammon import RegistrationError, SourceError
from streammon import operators as ops
from streammon.connectors import FileDeadLetter, FileSource, Message, Source, write_events

T0 = 1_700_000_000
VERSIONS = ("v1", "v2")


def make_events(n: int = 300, seed: int = 1) -> list[dict]:
    """Predictions in id order with random times, each followed by its feedback (for most): far from time order."""
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        ts = T0 + round(float(rng.uniform(0, 4 * 3600)), 3)
        events.append({"id": f"p{i}", "ts": ts, "prediction": int(rng.integers(0, 2)), "score": float(rng.random()),
                       "features": {"age": int(rng.integers(18, 90)), "city": str(rng.choice(["Lyon", "Oslo"]))},
                       "segment": {"version": str(rng.choice(VERSIONS))}})
        if rng.random() < 0.8:
            delay = min(float(rng.exponential(600)), 1800.0)
            events.append({"id": f"p{i}", "ts": round(ts + delay, 3), "label": int(rng.integers(0, 2))})
    return events


EVENTS = make_events()


def make_monitor(**settings) -> sm.Monitor:
    # run() polls batch_size messages at a time and replay() cuts batches of the same size, so both see the same batches.
    settings.setdefault("batch_size", 97)
    monitor = sm.Monitor("files", windows=[sm.Cumulative(), sm.Sliding("1h", "10m")], segments=("version",), **settings)
    monitor.track(ops.ConfusionMatrix(), name="accuracy")
    monitor.track(ops.Mean(of="score"), name="mean_score")
    return monitor


def snapshot(monitor: sm.Monitor) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for s in monitor.values() if not s.name.startswith("streammon_processing_seconds")}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key


def replayed(events, **settings) -> dict:
    monitor = make_monitor(**settings)
    monitor.replay(events)
    return snapshot(monitor)


def assert_cumulative_oracle(monitor: sm.Monitor, events: list[dict]) -> None:
    preds = {e["id"]: e for e in events if "prediction" in e}
    for version in VERSIONS:
        pairs = [(e["label"], preds[e["id"]]["prediction"]) for e in events
                 if "label" in e and preds[e["id"]]["segment"]["version"] == version]
        y_true, y_pred = zip(*pairs)
        scores = [p["score"] for p in preds.values() if p["segment"]["version"] == version]
        assert monitor.value("accuracy", window="cumulative", version=version) == accuracy_score(y_true, y_pred)
        assert monitor.value("mean_score", window="cumulative", version=version) == pytest.approx(np.mean(scores), rel=1e-12)


# -- equal to replay --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["events.jsonl", "events.ndjson", "events.jsonl.gz", "events.parquet"])
def test_file_replay_equals_list_replay(tmp_path, name):
    path = tmp_path / name
    assert write_events(path, EVENTS) == len(EVENTS)
    monitor = make_monitor()
    source = FileSource(path)
    assert isinstance(source, Source)
    monitor.run(source)
    assert_same(snapshot(monitor), replayed(EVENTS))
    assert_cumulative_oracle(monitor, EVENTS)
    assert source.exhausted
    assert source.committed == {(name, 0): len(EVENTS)}


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_files_give_back_the_events_written(tmp_path, suffix):
    path = tmp_path / f"events.{suffix}"
    write_events(path, EVENTS)
    messages = FileSource(path).poll(len(EVENTS) + 1, 0)
    decoded = [json.loads(m.value) if suffix == "jsonl" else m.value for m in messages]
    assert decoded == EVENTS
    assert [(m.topic, m.partition, m.offset, m.kind) for m in messages] == [(path.name, 0, i, None) for i in range(len(EVENTS))]


def test_models_are_written_as_their_fields(tmp_path):
    events = [sm.decode_event(e) for e in EVENTS[:20]]
    write_events(tmp_path / "models.parquet", events)
    write_events(tmp_path / "models.jsonl", events)
    for path in ("models.parquet", "models.jsonl"):
        messages = FileSource(tmp_path / path).poll(100, 0)
        assert [sm.decode_event(m.value) for m in messages] == events


# -- time order -------------------------------------------------------------------------------
def test_time_order_equals_sorted_replay(tmp_path):
    preds = [e for e in EVENTS if "prediction" in e]
    feedback = [e for e in EVENTS if "label" in e]
    write_events(tmp_path / "predictions.jsonl", preds)
    write_events(tmp_path / "feedback.parquet", feedback)
    paths = [tmp_path / "predictions.jsonl", tmp_path / "feedback.parquet"]

    in_time = make_monitor()
    in_time.run(FileSource(paths, order="time"))
    expected = replayed(sorted(EVENTS, key=lambda e: e["ts"]))
    assert_same(snapshot(in_time), expected)
    assert_cumulative_oracle(in_time, EVENTS)

    # The order matters for these events (sliding windows, late events), so the check above can fail.
    in_files = make_monitor()
    in_files.run(FileSource(paths))
    assert_same(snapshot(in_files), replayed(preds + feedback))
    assert snapshot(in_files) != expected


def test_time_order_puts_unreadable_times_first(tmp_path):
    lines = [
        (json.dumps({"id": "a", "ts": T0 + 5, "prediction": 1}), T0 + 5),
        ('{"id": "b", "ts": ', None),  # malformed
        (json.dumps({"id": "c", "ts": T0 + 1, "prediction": 0}), T0 + 1),
        (json.dumps({"id": "d", "prediction": 1}), None),  # no ts
        (json.dumps({"id": "e", "ts": "2023-11-14T22:13:20", "prediction": 1}), None),  # naive
        (json.dumps({"id": "f", "ts": "2023-11-14T22:13:23Z", "label": 1}), T0 + 3),
        (json.dumps({"id": "g", "ts": math.nan, "label": 1}), None),
        ("[1, 2]", None),
    ]
    path = tmp_path / "mixed.jsonl"
    write_events(path, [text for text, _ in lines])
    source = FileSource(path, order="time")
    got = [m.offset for m in source.poll(100, 0)]
    unreadable = [i for i, (_, ts) in enumerate(lines) if ts is None]
    readable = sorted((i for i, (_, ts) in enumerate(lines) if ts is not None), key=lambda i: lines[i][1])
    assert got == unreadable + readable

    monitor = sm.Monitor("t", windows=[sm.Cumulative()], dead_letter=(dead := sm.connectors.MemoryDeadLetter()))
    monitor.run(FileSource(path, order="time"))
    assert sorted(m.offset for m, _ in dead.items) == unreadable


# -- bad lines and the dead-letter file --------------------------------------------------------
BAD_LINES = [  # (raw line, what the reason must say)
    (b'{"id": "x1", "ts": ', r"malformed JSON"),
    (b'{"id": "x2\xff", "ts": 1700000000, "prediction": 1}', r"(?i)utf-8|unicode"),
    (b"[1, 2]", r"must be a JSON object"),
    (json.dumps({"id": "x3", "ts": T0, "prediction": 1, "score": math.nan}).encode(), r"score.*finite"),
    (b'{"id": "x4", "ts": "2023-11-14T22:13:20", "prediction": 1}', r"no UTC offset"),
    (b'{"id": "x5", "ts": 1700000000}', r"neither 'prediction' nor 'label'"),
]


def test_malformed_lines_are_rejected_counted_and_dead_lettered(tmp_path):
    lines, bad_at = [], {}
    for i, event in enumerate(EVENTS):
        if i % 50 == 7 and len(bad_at) < len(BAD_LINES):
            raw, reason = BAD_LINES[len(bad_at)]
            bad_at[len(lines)] = (raw, reason)
            lines.append(raw)
            lines.append(b"")  # a blank line is no event: skipped, not rejected
        lines.append(json.dumps(event).encode())
    assert len(bad_at) == len(BAD_LINES)
    path = tmp_path / "with-bad-lines.jsonl"
    write_events(path, lines)

    with FileDeadLetter(tmp_path / "dead.jsonl") as sink:
        # One batch: the bad lines would otherwise move the batch edges away from those of the clean replay.
        monitor = make_monitor(dead_letter=sink, batch_size=len(lines))
        monitor.run(FileSource(path))
    rejected = sum(s.value for s in monitor.values() if s.name == "streammon_events_total" and s.labels["outcome"] == "rejected")
    assert rejected == len(BAD_LINES)

    records = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text("utf-8").splitlines()]
    assert [r["offset"] for r in records] == sorted(bad_at)
    for record in records:
        raw, reason = bad_at[record["offset"]]
        value = base64.b64decode(record["value"]) if record.get("value_base64") else record["value"].encode()
        assert value == raw
        is_utf8 = raw.decode("utf-8", "replace").encode() == raw
        assert record.get("value_base64", False) is not is_utf8
        assert re.search(reason, record["reason"]), record["reason"]
        assert (record["topic"], record["partition"], record["key"], record["kind"]) == (path.name, 0, None, None)

    # The good events around the bad lines gave the same metrics as the good events alone.
    good = {k: v for k, v in snapshot(monitor).items() if dict(k[1]).get("outcome") != "rejected" and k[0] != "streammon_dead_letters_total"}
    clean = replayed(EVENTS, batch_size=len(lines))
    assert_same(good, {k: v for k, v in clean.items() if k[0] != "streammon_dead_letters_total"})
    assert_cumulative_oracle(monitor, EVENTS)


def test_parquet_rows_with_maps_nulls_and_timestamps(tmp_path):
    utc = UTC
    table = pa.table({
        "id": ["a", "b", "a", None, "c", "d"],
        "ts": pa.array([datetime(2023, 11, 14, 22, 13, 20, tzinfo=utc), datetime(2023, 11, 14, 22, 13, 21, tzinfo=utc),
                        datetime(2023, 11, 14, 22, 14, tzinfo=utc), datetime(2023, 11, 14, 22, 15, tzinfo=utc),
                        datetime(2023, 11, 14, 22, 16, tzinfo=utc), datetime(2023, 11, 14, 22, 17, tzinfo=utc)],
                       type=pa.timestamp("ms", tz="UTC")),
        "prediction": ["cat", "dog", None, "cat", "cat", "dog"],
        "label": [None, None, "cat", None, None, None],
        "score": pa.array([{"cat": 0.9, "dog": 0.1}, {"cat": None, "dog": 0.8}, None, None, {"cat": math.nan, "dog": 0.2}, None],
                          type=pa.struct([("cat", pa.float64()), ("dog", pa.float64())])),
        "features": pa.array([[("h", 1.5)], [("h", 2.0), ("w", None)], None, None, None, []],
                             type=pa.map_(pa.string(), pa.float64())),
        "segment": pa.array([{"version": "v1"}, {"version": None}, None, None, None, None],
                            type=pa.struct([("version", pa.string())])),
    })
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path)
    values = [m.value for m in FileSource(path, batch_rows=4).poll(10, 0)]
    t = 1_700_000_000.0
    assert values[:3] == [
        {"id": "a", "ts": t, "prediction": "cat", "score": {"cat": 0.9, "dog": 0.1}, "features": {"h": 1.5}, "segment": {"version": "v1"}},
        {"id": "b", "ts": t + 1, "prediction": "dog", "score": {"dog": 0.8}, "features": {"h": 2.0, "w": None}, "segment": {}},
        {"id": "a", "ts": t + 40, "label": "cat"},
    ]
    assert math.isnan(values[4]["score"]["cat"])

    dead = sm.connectors.MemoryDeadLetter()
    monitor = sm.Monitor("p", windows=[sm.Cumulative()], dead_letter=dead)
    monitor.track(ops.ConfusionMatrix(), name="accuracy")
    monitor.run(FileSource(path))
    assert sorted((m.offset, bool(re.search(r"^id: Field required|^score\.cat: Input should be a finite number", r))) for m, r in dead.items) == [(3, True), (4, True)]
    assert monitor.value("accuracy") == accuracy_score(["cat"], ["cat"])


def test_naive_parquet_timestamps_are_refused(tmp_path):
    path = tmp_path / "naive.parquet"
    pq.write_table(pa.table({"id": ["a"], "ts": pa.array([datetime(2023, 11, 14)], type=pa.timestamp("s")), "prediction": [1]}), path)
    dead = sm.connectors.MemoryDeadLetter()
    sm.Monitor("n", dead_letter=dead).run(FileSource(path))
    assert [re.search("no UTC offset", r) is not None for r in dead.reasons] == [True]


# -- the reader itself ------------------------------------------------------------------------
def test_messages_name_file_partition_and_line(tmp_path):
    write_events(tmp_path / "a.jsonl", [EVENTS[0], b"", EVENTS[1]])
    write_events(tmp_path / "b.parquet", EVENTS[2:5])
    source = FileSource([tmp_path / "a.jsonl", tmp_path / "b.parquet"], kind="prediction")
    first, rest = source.poll(2, 0), source.poll(10, 0)
    assert not source.exhausted or rest  # two polls were needed
    got = [(m.topic, m.partition, m.offset, m.kind) for m in first + rest]
    assert got == [("a.jsonl", 0, 0, "prediction"), ("a.jsonl", 0, 2, "prediction")] + [
        ("b.parquet", 1, i, "prediction") for i in range(3)]
    assert source.exhausted and source.poll(10, 0) == []


def test_file_order_streams_without_loading_the_file(tmp_path):
    path = tmp_path / "big.jsonl"
    write_events(path, (EVENTS[i % len(EVENTS)] for i in range(80_000)))
    size = path.stat().st_size
    assert size > 6 << 20
    source = FileSource(path)
    tracemalloc.start()
    try:
        batch = source.poll(500, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        source.close()
    assert [json.loads(m.value) for m in batch] == [EVENTS[i % len(EVENTS)] for i in range(500)]
    assert peak < size / 4


def test_overlong_line_is_cut_and_the_next_lines_still_read(tmp_path):
    path = tmp_path / "long.jsonl"
    long_line = json.dumps({"id": "x", "ts": T0, "prediction": 1, "blob": "y" * 5000})
    write_events(path, [EVENTS[0], long_line, EVENTS[1]])
    messages = FileSource(path, max_line_bytes=1000).poll(10, 0)
    assert [m.offset for m in messages] == [0, 1, 2]
    assert messages[1].value == long_line.encode()[:1001]
    assert [json.loads(messages[i].value) for i in (0, 2)] == EVENTS[:2]
    dead = sm.connectors.MemoryDeadLetter()
    sm.Monitor("l", max_event_bytes=1000, dead_letter=dead).run(FileSource(path, max_line_bytes=1000))
    assert [(m.offset, "exceeds max_event_bytes=1000" in r) for m, r in dead.items] == [(1, True)]


def test_wrong_arguments_and_unreadable_files(tmp_path):
    with pytest.raises(RegistrationError, match=r"\.jsonl"):
        FileSource(tmp_path / "events.csv")
    with pytest.raises(SourceError, match="no such file"):
        FileSource(tmp_path / "missing.jsonl")
    write_events(tmp_path / "ok.jsonl", EVENTS[:1])
    with pytest.raises(RegistrationError, match="order='time'"):
        FileSource(tmp_path / "ok.jsonl", order="ts")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SourceError, match=r"corrupt\.parquet"):
        sm.Monitor("c").run(FileSource(tmp_path / "corrupt.parquet"))
    with pytest.raises(ValueError, match="one type per column"):
        write_events(tmp_path / "mixed.parquet", [{"id": "a", "ts": 1, "prediction": 1}, {"id": "b", "ts": 2, "prediction": "x"}])


# -- FileDeadLetter ---------------------------------------------------------------------------
def test_dead_letter_records_text_and_base64(tmp_path):
    path = tmp_path / "dead.jsonl"
    sent = [
        (Message(b'{"id": 1}', kind="prediction", key=b"k-1", topic="predictions", partition=3, offset=41), "id: not a string"),
        (Message(b"\x00\xff", key=b"\xfe", topic="feedback", partition=1, offset=9), "malformed JSON"),
        (Message({"id": "a", "score": math.nan}), "score: must be finite"),
        (Message("caf\udce9", key="s"), "not UTF-8"),  # text that came from bytes via surrogateescape
    ]
    with FileDeadLetter(path) as sink:
        for message, reason in sent:
            sink.send(message, reason)
    with FileDeadLetter(path) as sink:  # appends
        sink.send(*sent[0])
    records = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert len(records) == len(sent) + 1 and records[-1] == records[0]

    def back(record, field):
        if record.get(f"{field}_base64"):
            return base64.b64decode(record[field])
        return None if record[field] is None else record[field].encode()

    for record, (message, reason) in zip(records, sent):
        assert (record["reason"], record["topic"], record["partition"], record["offset"], record["kind"]) == (
            reason, message.topic, message.partition, message.offset, message.kind)
        key = message.key.encode() if isinstance(message.key, str) else message.key
        assert back(record, "key") == key
        if isinstance(message.value, dict):
            assert "value_base64" not in record and json.loads(record["value"]).keys() == message.value.keys()
        else:
            raw = message.value.encode("utf-8", "surrogateescape") if isinstance(message.value, str) else message.value
            assert back(record, "value") == raw
    assert [("key_base64" in r, "value_base64" in r) for r in records[:4]] == [(False, False), (True, True), (False, False), (False, True)]


def test_dead_letter_writes_per_flush_without_autoflush(tmp_path):
    path = tmp_path / "dead.jsonl"
    sink = FileDeadLetter(path, autoflush=False)
    sink.send(Message(b"x"), "malformed JSON")
    sink.send(Message(b"y"), "malformed JSON")
    assert path.read_text() == ""
    sink.flush()
    assert [json.loads(line)["value"] for line in path.read_text().splitlines()] == ["x", "y"]
    sink.send(Message(b"z"), "malformed JSON")
    sink.close()
    sink.close()
    assert len(path.read_text().splitlines()) == 3
