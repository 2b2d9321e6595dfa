"""The comparison benchmark's systems give scikit-learn's answers (bench/compare, small N).

Each system runs for real, as in the benchmark: the essay's per-prediction gauges scraped by a
real Prometheus and joined in PromQL, PostgreSQL tables joined in SQL (and the materialized view),
streammon scraped by Prometheus. The expected values are recomputed here with scikit-learn from
the events and the window rule of the design (section 3), not taken from the benchmark's own
oracle. Needs Debian's prometheus and postgresql and psycopg; no timing is asserted.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_score, recall_score

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from compare.data import make_events
from compare.interval import IntervalSpec, run_interval
from compare.measure import measure_postgres, measure_promql_join, measure_streammon, save_events
from compare.postgres import Postgres

N = 1000
SCORES = {"accuracy": accuracy_score, "precision": precision_score, "recall": recall_score}


@pytest.fixture(scope="module")
def events():
    return make_events(N, seed=3)  # its last hour holds about 40 pairs, positives among them


@pytest.fixture(scope="module")
def events_path(events, tmp_path_factory):
    return save_events(events, str(tmp_path_factory.mktemp("compare")))


def expected(events) -> dict[tuple[str, str], float]:
    stream_time = max(events.pred_ts.max(), events.fb_ts.max())
    hi = (math.floor(stream_time / 60) + 1) * 60  # Sliding("1h"): step 60 s, window [hi - 3600, hi)
    last_hour = (events.pred_ts >= hi - 3600) & (events.pred_ts < hi)
    out = {}
    for window, keep in (("cumulative", np.ones(events.n, bool)), ("1h", last_hour)):
        for metric, score in SCORES.items():
            out[(metric, window)] = float(score(events.y_true[keep], events.y_pred[keep]))
    return out


def check(answers: list[dict], want: dict, read: str = "prometheus") -> None:
    got = {(a["metric"], a["window"]): a for a in answers if a["read"] == read}
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key]["value"] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        assert got[key]["status"] == "exact"


def test_the_window_holds_some_but_not_all_pairs(events):
    # Otherwise the 1 h answers would not tell the windows apart.
    want = expected(events)
    assert want[("accuracy", "1h")] != want[("accuracy", "cumulative")]


@pytest.mark.prometheus
def test_promql_join_of_the_essay_equals_sklearn(events, events_path):
    rows, answers = measure_promql_join(events, events_path, reps=1, interval=1.0, essay_interval=None)
    check(answers, expected(events))
    timed = {r["measure"] for r in rows if r["status"] == "ok" and r["value"] != ""}
    assert {f"query_s:{m}:{w}" for m in SCORES for w in ("cumulative", "1h")} <= timed
    scrape = next(r for r in rows if r["measure"] == "scrape_samples")
    assert scrape["value"] == 3 * N  # three gauges per prediction: every series reached Prometheus


@pytest.mark.prometheus
def test_streammon_through_prometheus_equals_sklearn(events, events_path):
    rows, answers = measure_streammon(events, events_path, reps=1, interval=1.0)
    check(answers, expected(events))
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.slow
def test_postgresql_join_and_view_equal_sklearn(events):
    with Postgres() as pg:
        rows, answers = measure_postgres(pg, events, reps=1, batch=300)  # several batches, several refreshes
    want = expected(events)
    for read in ("join", "view"):
        check(answers, want, read=read)
    refreshes = next(r for r in rows if r["measure"] == "refresh_total_s")["note"]
    assert refreshes == f"all {math.ceil(2 * N / 300)} refreshes"


@pytest.mark.slow
def test_scrapes_of_streammon_are_exact_and_gauges_cannot_deliver_more_values_than_scrapes():
    spec = IntervalSpec(rate=2.0, hours=1.2, mean_delay=20.0, incident=(1200.0, 1800.0), intervals=(15.0,))
    rows = run_interval(spec)
    ours = [r for r in rows if r["approach"] == "streammon"]
    assert {r["scrape_interval_s"] for r in ours} == {1.0, 15.0}
    for r in ours:
        assert r["scrapes_checked"] > 0 and r["exact_scrapes"] == r["scrapes_checked"]
        assert r["updates_scraped"] == r["updates"] > 0
    for r in rows:
        if r["approach"] != "streammon":
            scrapes = math.ceil((spec.hours * 3600 + 600) / r["scrape_interval_s"])  # the feedback tail included
            assert r["updates_scraped"] <= scrapes < r["updates"]
            assert r["missed_share"] > 0
