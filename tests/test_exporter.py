"""/metrics: names, labels, the parser's view of it, serving over HTTP, TLS and basic auth."""

from __future__ import annotations

import base64
import math
import ssl
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import accuracy_score

import streammon as sm
from streammon import operators as ops


def make_events(n=200, seed=0):
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        version = f"v{i % 3}"
        y_pred = int(rng.integers(0, 2))
        events.append({"id": f"e{i}", "ts": 1000 + i, "prediction": y_pred, "score": float(rng.random()),
                       "segment": {"version": version}, "model": "churn"})
        events.append({"id": f"e{i}", "ts": 1000 + i + 5, "label": int(rng.integers(0, 2))})
    return events


@pytest.fixture()
def monitor():
    m = sm.Monitor("shop", windows=[sm.Cumulative(), sm.Sliding("1m", "10s")], segments=["version"])
    m.track(ops.Accuracy())
    m.track(ops.Quantiles([0.5, 0.9], of="score"), name="score_quantiles")
    m.replay(make_events())
    yield m
    m.close()


def parsed(text: str):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_values_are_exactly_what_metrics_shows(monitor):
    text = generate_latest(monitor.registry).decode()
    from_text = sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                       for f in text_string_to_metric_families(text) for s in f.samples)
    from_values = sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in monitor.values())
    assert len(from_text) == len(from_values)
    for a, b in zip(from_text, from_values):
        assert a[:2] == b[:2]
        assert a[2] == pytest.approx(b[2], rel=1e-12, nan_ok=True)


def test_metric_families_names_and_labels(monitor):
    families = parsed(generate_latest(monitor.registry).decode())
    acc = families["streammon_accuracy"]
    assert acc.type == "gauge"
    events = make_events()
    by_version = {}
    for p, f in zip(events[::2], events[1::2]):
        by_version.setdefault(p["segment"]["version"], ([], []))
        by_version[p["segment"]["version"]][0].append(f["label"])
        by_version[p["segment"]["version"]][1].append(p["prediction"])
    cumulative = {s.labels["version"]: s.value for s in acc.samples if s.labels["window"] == "cumulative"}
    assert cumulative.keys() == by_version.keys()
    for version, (y_true, y_pred) in by_version.items():
        assert cumulative[version] == pytest.approx(accuracy_score(y_true, y_pred))
    for s in acc.samples:
        assert set(s.labels) == {"monitor", "model", "window", "version"}
        assert s.labels["monitor"] == "shop" and s.labels["model"] == "churn"
        assert s.labels["window"] in {"cumulative", "1m"}
    counts = families["streammon_accuracy_count"].samples
    assert sum(s.value for s in counts if s.labels["window"] == "cumulative") == 200
    quantiles = families["streammon_score_quantiles"].samples
    assert {s.labels["quantile"] for s in quantiles} == {"0.5", "0.9"}
    assert "quantile" not in families["streammon_score_quantiles_count"].samples[0].labels


def test_self_metrics_are_present_and_consistent(monitor):
    families = parsed(generate_latest(monitor.registry).decode())
    for name in ("streammon_events", "streammon_join_pending", "streammon_joined", "streammon_join_expired",
                 "streammon_duplicates", "streammon_late_events", "streammon_operator_errors",
                 "streammon_processing_seconds", "streammon_stream_time_seconds", "streammon_dead_letters"):
        assert name in families, name
    accepted = {s.labels["topic"]: s.value for s in families["streammon_events"].samples
                if s.name == "streammon_events_total" and s.labels["outcome"] == "accepted"}
    assert accepted == {"predictions": 200, "feedback": 200}
    assert families["streammon_joined"].samples[0].value == 200
    assert families["streammon_stream_time_seconds"].samples[0].value == 1000 + 199 + 5
    assert families["streammon_processing_seconds"].type == "histogram"


def test_no_label_carries_an_id(monitor):
    for s in monitor.values():
        for value in s.labels.values():
            assert not value.startswith("e"), s


def test_empty_window_publishes_nan_with_count_zero():
    m = sm.Monitor("t", windows=[sm.Sliding(10, 1)])
    m.track(ops.Accuracy())
    m.replay([{"id": "a", "ts": 100, "prediction": 1}, {"id": "a", "ts": 101, "label": 1},
              {"id": "b", "ts": 500, "prediction": 1}])
    assert math.isnan(m.value("accuracy"))
    count = [s.value for s in m.values() if s.name == "streammon_accuracy_count"]
    assert count == [0]


def test_segment_cardinality_guard_sends_overflow_to_other():
    m = sm.Monitor("t", windows=[sm.Cumulative()], segments=["version"], max_segment_values=3)
    m.track(ops.Count(of="prediction"), name="volume")
    m.replay([{"id": str(i), "ts": i + 1, "prediction": 1, "segment": {"version": f"v{i}"}} for i in range(10)])
    volume = {s.labels["version"]: s.value for s in m.values() if s.name == "streammon_volume"}
    assert volume == {"v0": 1, "v1": 1, "v2": 1, "__other__": 7}
    overflow = [s.value for s in m.values() if s.name == "streammon_segment_overflow_total" and s.labels["label"] == "version"]
    assert overflow == [7]


def _get(url, *, auth=None, context=None):
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return response.status, response.read().decode()


def test_serve_over_http(monitor):
    server = monitor.serve(port=0)
    status, body = _get(server.url)
    assert status == 200
    assert parsed(body)["streammon_accuracy"].samples


def test_serve_with_basic_auth(monitor):
    server = monitor.serve(port=0, basic_auth=("prom", "s3cret"))
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(server.url)
    assert err.value.code == 401
    with pytest.raises(urllib.error.HTTPError):
        _get(server.url, auth=("prom", "wrong"))
    status, body = _get(server.url, auth=("prom", "s3cret"))
    assert status == 200 and "streammon_accuracy" in body


@pytest.mark.slow
def test_serve_over_tls(monitor, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    server = monitor.serve(port=0, certfile=str(cert), keyfile=str(key))
    assert server.url.startswith("https://")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    status, body = _get(server.url, context=context)
    assert status == 200 and "streammon_accuracy" in body


def test_a_raising_finalizer_is_isolated_and_counted():
    m = sm.Monitor("t", windows=[sm.Cumulative()])

    @m.metric(stat=ops.ConfusionMatrix())
    def fragile(cm):
        raise ZeroDivisionError("boom")

    m.track(ops.Accuracy())
    m.replay(make_events(20))
    values = {s.name: s for s in m.values() if s.name in ("streammon_fragile", "streammon_accuracy")}
    assert math.isnan(values["streammon_fragile"].value)
    assert values["streammon_accuracy"].value == pytest.approx(
        accuracy_score([e["label"] for e in make_events(20)[1::2]], [e["prediction"] for e in make_events(20)[::2]]))
    errors = [s.value for s in m.values() if s.name == "streammon_operator_errors_total" and s.labels["metric"] == "fragile"]
    assert errors and errors[0] >= 1


def test_a_raising_per_event_function_is_isolated_and_counted(caplog):
    m = sm.Monitor("t", windows=[sm.Cumulative(), sm.Sliding(100, 10)])

    @m.metric()
    def picky(y_true, y_pred):
        if y_pred == 1:
            raise ValueError("no ones")
        return float(y_true == y_pred)

    events = make_events(50)
    m.replay(events)
    kept = [(f["label"], p["prediction"]) for p, f in zip(events[::2], events[1::2]) if p["prediction"] != 1]
    assert m.value("picky") == pytest.approx(np.mean([t == p for t, p in kept]))
    assert [s.value for s in m.values() if s.name == "streammon_picky_count" and s.labels["window"] == "cumulative"] == [len(kept)]
    errors = {s.labels["window"]: s.value for s in m.values() if s.name == "streammon_operator_errors_total"}
    assert errors["cumulative"] == 50 - len(kept)
    assert "picky" in caplog.text and "no ones" in caplog.text


def test_an_operator_returning_non_numbers_publishes_nan_instead_of_breaking_the_scrape():
    class Odd:
        output_label = "part"

        def update(self, y_true, y_pred):
            pass

        def merge(self, other):
            pass

        def get(self):
            return {"a": "not a number", "b": 2}

    m = sm.Monitor("t", windows=[sm.Cumulative()])
    m.track(Odd(), name="odd")
    m.replay(make_events(5))
    parts = {s.labels["part"]: s.value for s in m.values() if s.name == "streammon_odd"}
    assert math.isnan(parts["a"]) and parts["b"] == 2


def test_an_integer_beyond_64_bits_is_rejected_not_a_crash():
    m = sm.Monitor("t", windows=[sm.Cumulative()])
    m.track(ops.Accuracy())
    huge = b'{"id": "a", "ts": 1, "prediction": 1' + b"0" * 400 + b"}"
    m.replay([huge, b'{"id": "b", "ts": 1, "prediction": 1}', b'{"id": "b", "ts": 2, "label": 1}'])
    assert m.value("accuracy") == 1.0
    rejected = [s.value for s in m.values() if s.name == "streammon_events_total" and s.labels["outcome"] == "rejected"]
    assert rejected == [1]
    with pytest.raises(sm.EventError, match=r"^prediction: Input should be less than or equal to 9223372036854775807"):
        sm.decode_event(huge)


def test_numbers_numpy_cannot_hold_stay_objects_in_columns():
    from streammon.engine import as_column
    column = as_column([1, 2**64])
    assert column.dtype == object and column.tolist() == [1, 2**64]
