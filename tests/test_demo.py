"""The demo: its simulated stream has the promised drift and mess, and ``streammon demo`` serves it.

Oracles: scikit-learn's ``accuracy_score`` on pairs joined here by id, numpy for PSI, a validity
check written from design section 2, and ``tests/oracle.py`` for the join counts.
"""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import accuracy_score

from oracle import run_oracle
from streammon.cli import main
from streammon.demo import DRIFT_AT, START, build_monitor, simulate, summarize

ROOT = Path(__file__).resolve().parents[1]
HOUR = 3600.0
WALL_NOW = time.time()


def well_formed(e: dict) -> bool:
    """Design section 2, written out: what the monitor must accept (and reject everything else)."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def scalar(x):
        return isinstance(x, (bool, int, float, str)) and (not isinstance(x, float) or math.isfinite(x))

    if not (isinstance(e.get("id"), str) and e["id"]) or not number(e.get("ts")):
        return False
    if e["ts"] < 0 or e["ts"] > WALL_NOW + 86400:
        return False
    if e.get("kind") not in (None, "prediction", "feedback"):
        return False
    if "label" in e:
        return scalar(e["label"])
    if "prediction" not in e or not scalar(e["prediction"]):
        return False
    score = e.get("score")
    return score is None or number(score) or (isinstance(score, dict) and all(number(v) for v in score.values()))


def first_pairs(events: list[dict]) -> list[tuple[dict, dict]]:
    """(prediction, feedback) by id, first of each side wins, among well-formed events."""
    preds, fbs = {}, {}
    for e in filter(well_formed, events):
        (fbs if "label" in e else preds).setdefault(e["id"], e)
    return [(p, fbs[i]) for i, p in preds.items() if i in fbs]


@pytest.fixture(scope="module")
def long_run() -> list[dict]:
    return list(simulate(seed=3, duration=DRIFT_AT + 3 * HOUR))


def accuracy_between(pairs, lo: float, hi: float) -> tuple[float, int]:
    chosen = [(f["label"], p["prediction"]) for p, f in pairs if lo <= p["ts"] - START < hi]
    y_true, y_pred = zip(*chosen)
    return accuracy_score(y_true, y_pred), len(chosen)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    edges = np.quantile(reference, np.linspace(0, 1, bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    ref = np.clip(np.histogram(reference, edges)[0] / len(reference), 1e-6, None)
    cur = np.clip(np.histogram(current, edges)[0] / len(current), 1e-6, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def test_a_seed_gives_the_same_events_and_n_events_bounds_them():
    a = list(simulate(seed=5, n_events=3000))
    assert a == list(simulate(seed=5, n_events=3000))
    assert a != list(simulate(seed=6, n_events=3000))
    assert len(a) == 3000


def test_duration_bounds_the_simulated_clock():
    events = list(simulate(seed=2, duration=1800))
    times = [e["ts"] for e in events if well_formed(e)]
    assert times and min(times) > START and max(times) <= START + 1800
    assert max(times) > START + 1700  # it ran to the end, not short of it


def test_sliding_accuracy_drops_after_the_drift(long_run):
    pairs = first_pairs(long_run)
    before, n_before = accuracy_between(pairs, DRIFT_AT - HOUR, DRIFT_AT)
    after, n_after = accuracy_between(pairs, DRIFT_AT + HOUR, DRIFT_AT + 2 * HOUR)
    earlier, _ = accuracy_between(pairs, DRIFT_AT - 2 * HOUR, DRIFT_AT - HOUR)
    assert n_before > 2000 and n_after > 2000
    assert after < before - 0.1, (before, after)
    assert abs(earlier - before) < 0.05  # stable until the drift: the drop is the drift's doing


def test_score_distribution_moves_after_the_drift(long_run):
    scores = lambda lo, hi: np.array([e["score"] for e in long_run  # noqa: E731
                                      if well_formed(e) and "prediction" in e and lo <= e["ts"] - START < hi])
    reference = scores(0, HOUR)
    assert psi(reference, scores(DRIFT_AT - HOUR, DRIFT_AT)) < 0.05
    assert psi(reference, scores(DRIFT_AT + HOUR, DRIFT_AT + 2 * HOUR)) > 0.1


def test_feedback_is_delayed_and_sometimes_missing_duplicated_or_malformed(long_run):
    good = [e for e in long_run if well_formed(e)]
    malformed = len(long_run) - len(good)
    preds = [e for e in good if "prediction" in e]
    fbs = [e for e in good if "label" in e]
    pred_ts = {}
    for p in preds:
        pred_ts.setdefault(p["id"], p["ts"])
    delays = np.array([f["ts"] - pred_ts[f["id"]] for f in fbs if f["id"] in pred_ts])
    assert malformed > 0
    assert (delays > 0).all() and np.std(delays) > 60  # always later, by varying amounts
    assert max(Counter(f["id"] for f in fbs).values()) > 1  # feedback sent twice
    assert max(Counter(p["id"] for p in preds).values()) > 1  # predictions retried
    end = max(e["ts"] for e in good)
    settled = [i for i, ts in pred_ts.items() if ts < end - 3 * HOUR]  # old enough for any delay
    labelled = {f["id"] for f in fbs}
    never = sum(1 for i in settled if i not in labelled)
    assert 0 < never < len(settled) / 2


@pytest.mark.slow
def test_the_demo_monitor_agrees_with_the_oracle():
    events = list(simulate(seed=11, n_events=12000))
    monitor = build_monitor(seed=11)
    monitor.replay(events)
    good = [e for e in events if well_formed(e)]
    oracle = run_oracle(good, feedback_ttl=3 * HOUR, prediction_ttl=HOUR, segments=("version",))
    values = monitor.values()

    def one(name, **labels):
        found = [s.value for s in values if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    rejected = sum(s.value for s in values if s.name == "streammon_events_total" and s.labels["outcome"] == "rejected")
    assert rejected == len(events) - len(good) > 0
    assert one("streammon_joined_total") == oracle.joined
    assert one("streammon_duplicates_total", side="feedback") == oracle.duplicates["feedback"] > 0
    assert one("streammon_duplicates_total", side="prediction") == oracle.duplicates["prediction"] > 0
    for window in (None, monitor.settings.windows[1]):
        label = "cumulative" if window is None else window.label
        pairs = oracle.select("pair", window)
        for version in ("v3", "v4"):
            rows = [r for r in pairs if r.segment == (version,)]
            expected = accuracy_score([r.y_true for r in rows], [r.y_pred for r in rows])
            got = one("streammon_accuracy", window=label, version=version)
            assert got == pytest.approx(expected, abs=1e-12)
            assert one("streammon_accuracy_count", window=label, version=version) == len(rows)
    headline = summarize(monitor)
    predictions = sum(1 for r in oracle.rows if r.stream == "prediction")
    assert headline["coverage"] == pytest.approx(oracle.joined / predictions)
    assert headline["rejected"] == rejected


@pytest.mark.kafka  # the demo runs on the embedded broker
def test_demo_without_serving_prints_its_summary_and_stops_after_duration(capsys):
    started = time.monotonic()
    code = main(["demo", "--no-serve", "--duration", "1.5", "--rate", "3000", "--report-every", "0.5", "--seed", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert 1.5 <= time.monotonic() - started < 10
    assert "(not served)" in out.splitlines()[0]
    rates = [float(m) for m in re.findall(r"\|\s+(\d+) ev/s", out)]
    assert len(rates) >= 3 and max(rates) > 1000  # paced near the rate asked (the machine may lag a little)


def test_demo_rejects_a_bad_rate(capsys):
    assert main(["demo", "--rate", "0", "--no-serve"]) == 2
    assert "--rate and --duration must be positive" in capsys.readouterr().err


def scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def start_demo(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "streammon", "demo", "--port", "0", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", first)
    assert match, first + proc.stderr.read()
    return proc, match.group(1)


@pytest.mark.kafka  # the demo runs on the embedded broker
def test_demo_command_serves_parseable_metrics_for_its_duration():
    proc, url = start_demo("--duration", "4", "--rate", "2000", "--report-every", "1", "--seed", "0")
    try:
        deadline = time.monotonic() + 3.5
        families = scrape(url)
        while time.monotonic() < deadline and not (
            any(s.value > 0 for s in families.get("streammon_accuracy_count", []))
            and any(s.labels["outcome"] == "rejected" for s in families.get("streammon_events", []))
        ):
            time.sleep(0.2)
            families = scrape(url)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    accuracy = {(s.labels["window"], s.labels["version"]): s.value for s in families["streammon_accuracy"]}
    assert {w for w, _ in accuracy} == {"cumulative", "1h"}
    assert all(0.0 <= v <= 1.0 for v in accuracy.values() if not math.isnan(v))
    for self_metric in ("streammon_events", "streammon_join_pending", "streammon_joined", "streammon_duplicates",
                        "streammon_late_events", "streammon_processing_seconds"):
        assert self_metric in families, self_metric
    # Read aligned by event time, what the demo had processed when scraped is a prefix of each topic
    # partition, not of the sequence simulate(seed=0) produced: its rejected events are malformed ones
    # from the start of that sequence (exact counts: tests/test_align.py and tests/test_kafka_order.py).
    read = sum(s.value for s in families["streammon_events"] if s.name == "streammon_events_total")
    rejected = sum(s.value for s in families["streammon_events"]
                   if s.name == "streammon_events_total" and s.labels["outcome"] == "rejected")
    produced = list(simulate(seed=0, n_events=int(read) + 20_000))
    assert 0 < rejected <= sum(1 for e in produced if not well_formed(e))
    summaries = [line for line in out.splitlines() if "accuracy cumulative" in line]
    assert len(summaries) >= 3 and url in summaries[-1]


@pytest.mark.kafka  # the demo runs on the embedded broker
def test_demo_stops_cleanly_on_sigint():
    proc, url = start_demo("--rate", "500")
    try:
        assert "streammon_events_total" in urllib.request.urlopen(url, timeout=5).read().decode()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "accuracy cumulative" in out  # the final summary was printed on the way out
