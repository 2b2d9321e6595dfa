"""Bad input (design section 9): one test per case, each through the monitor's public path.

Every case is fed in the middle of a batch of good events, twice: as ``monitor.replay`` gets it in
a mixed stream, and as ``monitor.process`` gets it from a topic (bytes, kind and key known). Each
test checks that the monitor does not raise, counts exactly one rejected event, hands the original
message to the dead-letter sink with a reason that names the problem, logs that reason, and still
computes the metrics of the good events (oracle: scikit-learn and numpy over the good events).
``decode_event`` must reject the same input with the same reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

import streammon as sm
from streammon import EventError, EventPolicy, decode_event
from streammon import operators as ops
from streammon.connectors import MemoryDeadLetter, Message

T0 = 1_700_000_000


def _good_events(n: int = 30, seed: int = 7) -> list[dict]:
    rng = np.random.default_rng(seed)
    preds, feedback = [], []
    for i in range(n):
        preds.append({"id": f"g{i}", "ts": T0 + i, "prediction": int(rng.integers(0, 2)),
                      "score": float(rng.random()), "features": {"age": int(rng.integers(18, 90))}})
        feedback.append({"id": f"g{i}", "ts": T0 + 100 + i, "label": int(rng.integers(0, 2))})
    return preds + feedback


GOOD = _good_events()
Y_PRED = [e["prediction"] for e in GOOD if "prediction" in e]
Y_TRUE = [e["label"] for e in GOOD if "label" in e]
SCORES = [e["score"] for e in GOOD if "score" in e]
BASE = {"id": "bad-1", "ts": T0 + 50, "prediction": 1, "score": 0.5}
_UNSET = object()


@pytest.fixture(params=["replay", "topic"])
def path(request):
    return request.param


def _as_bytes(value):
    if isinstance(value, dict):
        return json.dumps(value).encode()  # json.dumps writes NaN / Infinity, as a careless producer would
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return value


def _topic_message(value, kind, key, offset) -> Message:
    return Message(_as_bytes(value), kind=kind, key=key, topic="predictions" if kind == "prediction" else "feedback",
                   partition=0, offset=offset)


def _events_total(monitor: sm.Monitor, outcome: str) -> float:
    return sum(s.value for s in monitor.values() if s.name == "streammon_events_total" and s.labels["outcome"] == outcome)


def _series(monitor: sm.Monitor, name: str) -> float:
    [value] = [s.value for s in monitor.values() if s.name == name]
    return value


def check_rejected(bad, reason: str, *, path: str, caplog, kind: str = "prediction", key=_UNSET, **settings) -> str:
    """Feed ``bad`` among the good events and check every promise of section 9; return the reason."""
    dead = MemoryDeadLetter()
    monitor = sm.Monitor("bad_input", windows=[sm.Cumulative()], dead_letter=dead, **settings)
    monitor.track(ops.ConfusionMatrix(), name="accuracy")
    monitor.track(ops.Mean(of="score"), name="mean_score")
    mid = len(GOOD) // 2
    if key is _UNSET:  # a producer keys by id when there is one
        key = bad["id"].encode() if isinstance(bad, dict) and isinstance(bad.get("id"), str) else None

    with caplog.at_level(logging.WARNING, logger="streammon"):
        if path == "replay":
            sent = bad if key is None else Message(bad, key=key)
            monitor.replay([*GOOD[:mid], sent, *GOOD[mid:]])
            decode_kind = None
        else:
            good = [_topic_message(e, "feedback" if "label" in e else "prediction", e["id"].encode(), i)
                    for i, e in enumerate(GOOD)]
            sent = _topic_message(bad, kind, key, len(GOOD))
            monitor.process([*good[:mid], sent, *good[mid:]])
            decode_kind = kind

    assert _events_total(monitor, "rejected") == 1
    assert _events_total(monitor, "accepted") == len(GOOD)
    assert len(dead.items) == 1
    message, why = dead.items[0]
    if isinstance(sent, Message):
        assert message is sent
    else:
        assert message.value is sent
    assert re.search(reason, why), why
    assert why in caplog.text
    assert _series(monitor, "streammon_dead_letters_total") == 1

    # The good events around the bad one were all processed.
    assert monitor.value("accuracy") == accuracy_score(Y_TRUE, Y_PRED)
    assert _series(monitor, "streammon_accuracy_count") == len(Y_TRUE)
    assert monitor.value("mean_score") == pytest.approx(float(np.mean(SCORES)), rel=1e-12)

    with pytest.raises(EventError) as raised:
        decode_event(message.value, kind=decode_kind, key=message.key,
                     policy=EventPolicy(**{k: v for k, v in settings.items() if k in EventPolicy.model_fields}))
    assert re.search(reason, raised.value.reason), raised.value.reason
    return why


# -- not JSON, or not an object ---------------------------------------------------------------
@pytest.mark.parametrize("raw", [b'{"id": "bad-1", "ts": 1700000000, "prediction": 1', b'{"id": "bad-1"} trailing',
                                 b"{'id': 'bad-1'}", b"", b"   "], ids=["truncated", "trailing", "quotes", "empty", "blank"])
def test_malformed_json(raw, path, caplog):
    check_rejected(raw, r"malformed JSON", path=path, caplog=caplog)


@pytest.mark.parametrize("raw", [b'[{"id": "bad-1", "ts": 1700000000, "prediction": 1}]', b"42", b'"text"', b"true",
                                 b"null"], ids=["array", "number", "string", "bool", "null"])
def test_json_array_or_scalar_instead_of_object(raw, path, caplog):
    check_rejected(raw, r"(must be a JSON object|Input should be an object)", path=path, caplog=caplog)


# -- schema violations ------------------------------------------------------------------------
def test_unknown_kind(path, caplog):
    check_rejected({**BASE, "kind": "forecast"}, r"kind: .*'prediction'", path=path, caplog=caplog)


@pytest.mark.parametrize("kind", [["prediction"], {"name": "prediction"}, 1], ids=["list", "object", "number"])
def test_kind_of_wrong_type(kind, path, caplog):
    check_rejected({**BASE, "kind": kind}, r"kind: ", path=path, caplog=caplog)


def test_neither_prediction_nor_label(path, caplog):
    bad = {"id": "bad-1", "ts": T0 + 50, "model": "m", "score": 0.5}
    check_rejected(bad, r"(neither 'prediction' nor 'label'|prediction: Field required)", path=path, caplog=caplog)


# -- wrong types ------------------------------------------------------------------------------
@pytest.mark.parametrize("id_", [12345, 1.5, True], ids=["int", "float", "bool"])
def test_id_as_number(id_, path, caplog):
    check_rejected({**BASE, "id": id_}, r"^id: Input should be a valid string", path=path, caplog=caplog)


@pytest.mark.parametrize("prediction", [{"class": 1}, [1, 0], None], ids=["object", "array", "null"])
def test_prediction_of_wrong_type(prediction, path, caplog):
    check_rejected({**BASE, "prediction": prediction}, r"^prediction: expected bool or int or float or str", path=path, caplog=caplog)


@pytest.mark.parametrize("score", ["0.9", "high", {"cat": "0.9", "dog": "0.1"}], ids=["numeric", "word", "map"])
def test_score_as_string(score, path, caplog):
    check_rejected({**BASE, "score": score}, r"^score\b", path=path, caplog=caplog)


def test_score_as_boolean(path, caplog):
    check_rejected({**BASE, "score": True}, r"^score\b", path=path, caplog=caplog)


def test_features_as_list(path, caplog):
    check_rejected({**BASE, "features": [1.0, 2.0]}, r"^features: Input should be (a valid dictionary|an object)", path=path, caplog=caplog)


@pytest.mark.parametrize("value", [3, None, ["v3"], True], ids=["int", "null", "array", "bool"])
def test_segment_values_not_strings(value, path, caplog):
    check_rejected({**BASE, "segment": {"version": value}}, r"^segment\.version: Input should be a valid string",
                   path=path, caplog=caplog)


@pytest.mark.parametrize("ts", [True, "yesterday", "1700000000", {"s": 1}], ids=["bool", "word", "digits", "object"])
def test_ts_of_wrong_type(ts, path, caplog):
    check_rejected({**BASE, "ts": ts}, r"^ts\b", path=path, caplog=caplog)


# -- missing or empty fields ------------------------------------------------------------------
def test_missing_id(path, caplog):
    check_rejected({k: v for k, v in BASE.items() if k != "id"}, r"^id: Field required", path=path, caplog=caplog)


def test_missing_ts(path, caplog):
    check_rejected({k: v for k, v in BASE.items() if k != "ts"}, r"^ts: Field required", path=path, caplog=caplog)


def test_empty_id(path, caplog):
    check_rejected({**BASE, "id": ""}, r"^id: String should have at least 1 character", path=path, caplog=caplog)


# -- size, encoding, key ----------------------------------------------------------------------
@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])
def test_oversize_message(as_text, path, caplog):
    limit = max(len(json.dumps(e)) for e in GOOD) + 20  # every good event fits
    raw = json.dumps({**BASE, "blob": "x" * 2 * limit})
    why = check_rejected(raw if as_text else raw.encode(), rf"{len(raw)} bytes exceeds max_event_bytes={limit}",
                         path=path, caplog=caplog, max_event_bytes=limit)
    assert len(why) < 200  # the reason names the size; it does not echo the payload


def test_non_utf8_key(path, caplog):
    check_rejected(BASE, r"key is not valid UTF-8", path=path, caplog=caplog, key=b"bad-\xff")


@pytest.mark.parametrize("key", [b"bad-2", "bad-2"], ids=["bytes", "str"])
def test_key_differs_from_id(key, path, caplog):
    check_rejected(BASE, r"key 'bad-2' differs from id 'bad-1'", path=path, caplog=caplog, key=key)


@pytest.mark.parametrize("raw", [b'{"id": "bad-1", "ts": 1700000050, "prediction": "caf\xe9"}',
                                 b'{"id": "bad-\xff\xfe", "ts": 1700000050, "prediction": 1}',
                                 '{"id": "bad-1", "ts": 1700000050, "prediction": "caf\udce9"}'],
                         ids=["latin-1 value", "invalid bytes in id", "surrogate-escaped text"])
def test_non_utf8_bytes_in_value(raw, path, caplog):
    check_rejected(raw, r"(?i)(utf-8|unicode)", path=path, caplog=caplog)


# -- event time -------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["epoch", "rfc3339"])
def test_timestamp_far_in_future(form, path, caplog):
    future = time.time() + 2 * 3600
    ts = future if form == "epoch" else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(future))
    check_rejected({**BASE, "ts": ts}, r"is more than 3600 s in the future", path=path, caplog=caplog,
                   max_future_seconds=3600)


def test_naive_rfc3339_time(path, caplog):
    check_rejected({**BASE, "ts": "2023-11-14T22:13:20"}, r"^ts: .*has no UTC offset", path=path, caplog=caplog)


@pytest.mark.parametrize("ts", [-1, -0.5, "1969-12-31T23:59:59Z"], ids=["int", "float", "rfc3339"])
def test_negative_ts(ts, path, caplog):
    check_rejected({**BASE, "ts": ts}, r"^ts: Input should be greater than or equal to 0", path=path, caplog=caplog)


# -- NaN and infinities: JSON text as json.dumps writes it, and Python floats in a dict --------
NON_FINITE = pytest.mark.parametrize("x", [math.nan, math.inf, -math.inf], ids=["NaN", "Infinity", "-Infinity"])
FORM = pytest.mark.parametrize("form", ["json", "dict"])


def _non_finite(event: dict, form: str):
    text = json.dumps(event)
    assert re.search(r"NaN|Infinity", text)
    return text if form == "json" else event


@NON_FINITE
@FORM
def test_non_finite_score(x, form, path, caplog):
    check_rejected(_non_finite({**BASE, "score": x}, form), r"^score: Input should be a finite number",
                   path=path, caplog=caplog)


@NON_FINITE
@FORM
def test_non_finite_in_score_map(x, form, path, caplog):
    bad = _non_finite({**BASE, "prediction": "cat", "score": {"cat": x, "dog": 0.1}}, form)
    check_rejected(bad, r"^score\.cat: Input should be a finite number", path=path, caplog=caplog)


@NON_FINITE
@FORM
def test_non_finite_ts(x, form, path, caplog):
    check_rejected(_non_finite({**BASE, "ts": x}, form), r"^ts: Input should be a finite number", path=path, caplog=caplog)


@NON_FINITE
@FORM
def test_non_finite_prediction(x, form, path, caplog):
    check_rejected(_non_finite({**BASE, "prediction": x}, form), r"^prediction: Input should be a finite number",
                   path=path, caplog=caplog)


@NON_FINITE
@FORM
def test_non_finite_label(x, form, path, caplog):
    bad = _non_finite({"id": "bad-1", "ts": T0 + 50, "label": x}, form)
    check_rejected(bad, r"^label: Input should be a finite number", path=path, caplog=caplog, kind="feedback")


@NON_FINITE
@FORM
def test_non_finite_feature(x, form, path, caplog):
    bad = _non_finite({**BASE, "features": {"age": x}}, form)
    check_rejected(bad, r"^features\.age: Input should be a finite number", path=path, caplog=caplog)
