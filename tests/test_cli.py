"""The ``streammon`` command line: replay, run and their errors.

Oracles: the same events replayed in-process through a fresh copy of the app, and scikit-learn
(``accuracy_score``, ``log_loss``) over the pairs of ``tests/oracle.py``'s from-scratch join.
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import accuracy_score, log_loss

from oracle import run_oracle
from streammon import Sliding
from streammon.apps import load_app
from streammon.cli import main
from streammon.connectors import write_events
from streammon.demo import simulate
from test_demo import well_formed

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "examples" / "taxi_app.py")
HOUR = 3600.0
BAD_LINE = "{not json"


@pytest.fixture(scope="module")
def events() -> list:
    return [*simulate(seed=4, n_events=6000), BAD_LINE]


@pytest.fixture(scope="module")
def events_file(events, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    write_events(path, events)
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def in_process(events) -> list:
    monitor = load_app(APP + ":monitor")  # a fresh module, so a fresh monitor
    monitor.replay(events)
    return monitor


def expected_rows(monitor) -> dict[tuple, tuple[float, int]]:
    """(name, labels) -> (value, count), read from the monitor's own samples."""
    samples = monitor.values()
    rows = {}
    for tracked in monitor.metrics:
        name = "streammon_" + tracked.name
        for s in samples:
            if s.name != name:
                continue
            count_labels = {k: v for k, v in s.labels.items() if k != tracked.output_label}
            (count,) = [c.value for c in samples if c.name == name + "_count" and c.labels == count_labels]
            rows[(name, tuple(sorted(s.labels.items())))] = (s.value, count)
    return rows


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["name"], tuple(sorted(r["labels"].items()))): r for r in rows}


def test_replay_json_equals_in_process_replay_and_sklearn(capsys, events, events_file):
    code, out, err = run_cli(capsys, "replay", events_file, "--app", APP + ":monitor", "--json")
    assert code == 0, err
    got = by_key(json.loads(out))
    expected = expected_rows(in_process(events))
    assert got.keys() == expected.keys()
    for key, (value, count) in expected.items():
        assert got[key]["count"] == count
        assert got[key]["value"] == (None if math.isnan(value) else value)
    # scikit-learn over the from-scratch join, per version and window
    good = [e for e in events if isinstance(e, dict) and well_formed(e)]
    oracle = run_oracle(good, feedback_ttl=3 * HOUR, prediction_ttl=HOUR, segments=("version",))
    for window, label in ((None, "cumulative"), (Sliding("1h"), "1h")):
        pairs = oracle.select("pair", window)
        for version in ("v3", "v4"):
            rows = [r for r in pairs if r.segment == (version,)]
            labels = tuple(sorted({"monitor": "taxi", "model": "tip", "window": label, "version": version}.items()))
            accuracy, loss = got[("streammon_accuracy", labels)], got[("streammon_log_loss", labels)]
            y_true = [r.y_true for r in rows]
            assert accuracy["value"] == pytest.approx(accuracy_score(y_true, [r.y_pred for r in rows]), abs=1e-12)
            assert loss["value"] == pytest.approx(log_loss(y_true, [r.score for r in rows], labels=[0, 1]), rel=1e-9)
            assert accuracy["count"] == loss["count"] == len(rows)
    assert re.search(r"\b([\d,]+) rejected", err).group(1) == f"{len(events) - len(good):,}"


def test_replay_table_shows_the_same_values_aligned(capsys, events_file):
    _, out, _ = run_cli(capsys, "replay", events_file, "--app", APP, "--json")
    rows = json.loads(out)
    code, table, _ = run_cli(capsys, "replay", events_file, "--app", APP)
    assert code == 0
    header, *lines = table.splitlines()
    assert header.split() == ["metric", "labels", "value", "count"]
    assert len(lines) == len(rows)
    value_end = header.index("value") + len("value")
    for line, row in zip(lines, rows):
        metric, *labels, value, count = line.split()
        assert "streammon_" + metric == row["name"]
        shown = dict(pair.split("=", 1) for pair in labels)
        assert shown == {k: v for k, v in row["labels"].items() if k != "monitor" and v}
        assert int(count) == row["count"]
        assert (value == "nan") if row["value"] is None else float(value) == pytest.approx(row["value"], rel=1e-5)
        assert line.index(value) + len(value) == value_end  # right-aligned under its header


def test_replay_writes_rejected_events_to_the_dead_letter_file(capsys, events, events_file, tmp_path):
    dead = tmp_path / "dead.jsonl"
    code, _, err = run_cli(capsys, "replay", events_file, "--app", APP, "--dead-letter", str(dead))
    assert code == 0, err
    records = [json.loads(line) for line in dead.read_text().splitlines()]
    malformed = [e for e in events if not (isinstance(e, dict) and well_formed(e))]
    assert len(records) == len(malformed) > 1
    assert all(r["reason"] for r in records)
    assert records[-1]["value"] == BAD_LINE


def test_replay_order_time_merges_files_by_event_time(capsys, events, tmp_path):
    good = [e for e in events if isinstance(e, dict) and well_formed(e)]
    preds, fbs = tmp_path / "predictions.jsonl", tmp_path / "feedback.jsonl"
    write_events(preds, [e for e in good if "label" not in e])
    write_events(fbs, [e for e in good if "label" in e])
    merged = sorted([e for e in good if "label" not in e] + [e for e in good if "label" in e], key=lambda e: e["ts"])
    _, by_time, _ = run_cli(capsys, "replay", str(preds), str(fbs), "--app", APP, "--order", "time", "--json")
    _, by_file, _ = run_cli(capsys, "replay", str(preds), str(fbs), "--app", APP, "--json")
    got = by_key(json.loads(by_time))
    expected = expected_rows(in_process(merged))
    assert {k: (r["value"], r["count"]) for k, r in got.items()} == {
        k: (None if math.isnan(v) else v, c) for k, (v, c) in expected.items()}
    assert by_key(json.loads(by_file)) != got  # the flag matters: file order sees all feedback late


def test_app_given_as_a_module_name_or_without_attribute(capsys, events_file, tmp_path, monkeypatch):
    (tmp_path / "cli_test_app_module.py").write_text(Path(APP).read_text())
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "replay", events_file, "--app", "cli_test_app_module:monitor", "--json")
    assert code == 0, err
    code2, out2, _ = run_cli(capsys, "replay", events_file, "--app", "cli_test_app_module.py", "--json")
    assert code2 == 0 and json.loads(out2) == json.loads(out)


@pytest.mark.parametrize("spec, source, message", [
    ("examples/nope.py:monitor", None, "does not exist"),
    ("{app}:nope", None, "has no attribute 'nope'; Monitor objects in it: monitor"),
    ("{app}:ops", None, "is a module, not a streammon.Monitor"),
    ("{app}:balanced_accuracy", None, "is a function, not a streammon.Monitor"),
    ("no_such_module_for_streammon:monitor", None, "no module named 'no_such_module_for_streammon'"),
    ("streammon.demo:build_monitor", None, "is a function, not a streammon.Monitor"),
    ("{tmp}/broken.py:monitor", "import streammon\nmonitor = 1 / 0\n", "raised ZeroDivisionError: division by zero"),
    ("{tmp}/empty.py:monitor", "x = 1\n", "it defines no Monitor"),
    ("{tmp}/badimport.py", "import streammon_no_such_dependency\n", "raised ModuleNotFoundError"),
])
def test_bad_app_spec_exits_2_with_a_helpful_message(capsys, events_file, tmp_path, spec, source, message):
    spec = spec.format(app=APP, tmp=tmp_path)
    if source is not None:
        Path(spec.split(":")[0]).write_text(source)
    code, out, err = run_cli(capsys, "replay", events_file, "--app", spec)
    assert code == 2
    assert out == ""
    assert message in err, err
    assert err.startswith("streammon replay: error: ")


@pytest.mark.parametrize("files, message", [(["missing.jsonl"], "no such file"), (["{app}"], "cannot tell the format")])
def test_bad_input_files_exit_2(capsys, files, message):
    code, _, err = run_cli(capsys, "replay", *[f.format(app=APP) for f in files], "--app", APP)
    assert code == 2 and message in err, err


@pytest.mark.parametrize("options", [[], ["--bootstrap-servers", "localhost:9092", "--source", "x.jsonl"]])
def test_run_needs_exactly_one_source(capsys, options):
    code, _, err = run_cli(capsys, "run", APP, *options)
    assert code == 2 and "--bootstrap-servers" in err and "--source FILE" in err, err


def test_run_refuses_malformed_topics(capsys):
    code, _, err = run_cli(capsys, "run", APP, "--bootstrap-servers", "127.0.0.1:1", "--topics", "only-one")
    assert code == 2 and "--topics takes two names" in err, err


def test_run_with_exit_when_done_processes_the_files_and_returns(capsys, events_file):
    code, out, err = run_cli(capsys, "run", APP, "--source", events_file, "--metrics-port", "0", "--exit-when-done")
    assert code == 0, err
    assert re.match(r"serving http://127\.0\.0\.1:\d+/metrics", out)
    assert "6,001 events read" in err


def test_run_on_a_busy_port_exits_2(capsys, events_file):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli(capsys, "run", APP, "--source", events_file, "--metrics-port", str(port))
    assert code == 2 and f"cannot serve /metrics on 127.0.0.1:{port}" in err


@pytest.mark.slow
def test_run_serves_the_replayed_values_until_sigterm(events, events_file):
    command = [sys.executable, "-m", "streammon", "run", APP, "--source", events_file, "--metrics-port", "0"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", first).group(1)
        deadline = time.monotonic() + 30
        while True:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            families = {f.name: f.samples for f in text_string_to_metric_families(text)}
            read = sum(s.value for s in families["streammon_events"] if s.name == "streammon_events_total")
            if read == len(events) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert read == len(events)
        time.sleep(0.5)
        assert proc.poll() is None  # still serving after the input is done
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    expected = in_process(events).values()
    for name in ("streammon_accuracy", "streammon_log_loss", "streammon_score_quantiles"):
        served = {tuple(sorted(s.labels.items())): s.value for s in families[name] if s.name == name}
        local = {tuple(sorted(s.labels.items())): s.value for s in expected if s.name == name}
        assert served == local and served


def test_kafka_options_reach_the_client_and_a_wrong_name_is_reported(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_text('{"id": "a", "ts": 1, "prediction": 1}\n')
    assert main(["produce", str(events), "--bootstrap-servers", "127.0.0.1:1", "-X", "no_such_setting=1"]) == 2
    assert "'no_such_setting' is not a kafka-python producer setting" in capsys.readouterr().err
    code = main(["run", "tests/kafka_app.py:monitor", "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "0",
                 "-X", "no_such_setting=1", "-X", "session_timeout_ms=2000"])
    assert code == 1 and "Unrecognized configs: {'no_such_setting'}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["run", "tests/kafka_app.py:monitor", "--bootstrap-servers", "127.0.0.1:1", "-X", "oops"])
    assert exit_.value.code == 2 and "'oops' is not KEY=VALUE" in capsys.readouterr().err
