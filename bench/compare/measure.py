"""One measurement per system and size: keep the metrics fresh, read them, check the answer.

Each function returns ``(rows, answers)``: ``rows`` are timing/memory figures
``{system, measure, value, unit, status, note}``; ``answers`` compare every value a system gave
with scikit-learn on the same events. A query whose answer is wrong is reported as wrong and its
time is left out.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import statistics
import subprocess
import sys
import tempfile

from .data import LABEL, METRICS, PREDICTION, PREDICTION_TS, Events, oracle, window_bounds
from .postgres import Postgres, run_postgres
from .prom import Job, Prometheus
from .timing import repeat

__all__ = ["promql_join_queries", "measure_promql_join", "measure_streammon", "measure_postgres", "same"]

HERE = os.path.dirname(os.path.abspath(__file__))
WINDOWS = ("cumulative", "1h")


def same(value: float | None, expected: float) -> bool:
    """Equal to scikit-learn's answer: both are ratios of the same integer counts, so exact up to rounding."""
    return value is not None and math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-15)


def promql_join_queries(lo: float | None = None, hi: float | None = None) -> dict[str, str]:
    """The essay's accuracy/precision/recall joins on ``output_id``; with ``lo, hi``, only predictions stamped in
    ``[lo, hi)``, selected through the third gauge."""
    on = "on (output_id)"
    L, P = LABEL, PREDICTION  # noqa: N806 - the essay's two gauges
    w = "" if lo is None else f" and {on} (({PREDICTION_TS} >= {lo!r}) < {hi!r})"
    return {
        "accuracy": f"count((abs({L} - {on} {P}) < 0.5){w}) / count(({L} - {on} {P}){w})",
        "precision": f"count(((({L} * {on} {P}) > 0.5)){w}) / count((({P} and {on} {L}) > 0.5){w})",
        "recall": f"count(((({L} * {on} {P}) > 0.5)){w}) / count((({L} and {on} {P}) == 1){w})",
    }


class Child:
    """A system under test in its own process (its memory is its own); it prints one JSON line when it serves."""

    def __init__(self, script: str, data_path: str, timeout: float) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, script), data_path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.ready = self._reply(timeout)

    def _reply(self, timeout: float) -> dict:
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.close()
                raise RuntimeError(f"child gave no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited with code {self.proc.wait()}")
        return json.loads(line)

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return self._reply(60)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait()


def _row(system: str, measure: str, value, unit: str, status: str = "ok", note: str = "") -> dict:
    return {"system": system, "measure": measure, "value": value, "unit": unit, "status": status, "note": note}


def _timed_queries(system: str, prom: Prometheus, queries: dict[tuple[str, str], str], expected: dict,
                   at: float, reps: int) -> tuple[list[dict], list[dict]]:
    rows, answers = [], []
    for (metric, window), expr in queries.items():
        times, value, error = [], None, ""
        try:
            times, (_, value) = repeat(lambda expr=expr: prom.scalar(expr, at), reps)  # the HTTP round trip, parsed
        except RuntimeError as exc:  # a query timeout or a limit: a failure, reported as such
            error = str(exc)
        want = expected[window][metric]
        ok = not error and same(value, want)
        answers.append({"system": system, "read": "prometheus", "window": window, "metric": metric,
                        "value": value, "sklearn": want, "status": "exact" if ok else ("failed" if error else "wrong")})
        measure = f"query_s:{metric}:{window}"
        if ok:
            rows.append(_row(system, measure, statistics.median(times), "s", note=f"median of {len(times)}"))
        else:
            rows.append(_row(system, measure, "", "s", "failed" if error else "wrong",
                             error or f"answered {value}, scikit-learn {want}"))
    return rows, answers


def _just_after(scrape: dict) -> float:
    """The instant the queries are evaluated at: just after the scrape's samples, before any later staleness marker
    (once scraping stops, Prometheus marks the series stale from about the next scrape's time on)."""
    return scrape["at"] + 0.001


def _expected(events: Events) -> dict:
    lo, hi = window_bounds(events.stream_time)
    return {"cumulative": oracle(events), "1h": oracle(events, lo, hi)}


def measure_promql_join(events: Events, data_path: str, *, reps: int, interval: float | None = None,
                        essay_interval: float | None = 5.0) -> tuple[list[dict], list[dict]]:
    """The essay's approach end to end: gauges in a process, a real Prometheus scraping it, joins through its API."""
    system, n = "promql_join", events.n
    # The scrape must finish for there to be any answer: give it time (the essay's 5 s is tried separately below).
    interval = interval or float(math.ceil(10 + 100e-6 * n))
    app = Child("gauge_app.py", data_path, timeout=600 + 1e-3 * n)
    rows = [_row(system, "ingest_us_per_event", 1e6 * app.ready["ingest_s"] / app.ready["events"], "us",
                 note="Gauge.labels(output_id).set() per event, in the app")]
    answers: list[dict] = []
    target = f"127.0.0.1:{app.ready['port']}"
    try:
        with Prometheus([Job("join", target, interval, interval)]) as prom:
            scrape = prom.wait_scrape("join", timeout=2 * interval + 60)
            prom.reload([])  # no scrape competes with the timed queries; what was scraped stays queryable
            mem = app.stats()
            rows += [_row(system, "app_rss_bytes", mem["rss_bytes"], "B"),
                     _row(system, "app_state_bytes", mem["rss_bytes"] - app.ready["baseline_rss_bytes"], "B",
                          note="RSS after ingest minus RSS before")]
            if not scrape["up"]:
                rows.append(_row(system, "scrape_s", scrape["duration_s"] or "", "s", "failed",
                                 f"scrape_timeout {interval:g}s: {scrape['error']}"))
                return rows, answers
            rows += [_row(system, "scrape_s", scrape["duration_s"], "s", note=f"Prometheus scrape_duration_seconds, "
                          f"scrape_timeout {interval:g}s"),
                     _row(system, "scrape_samples", scrape["samples"], "samples")]
            lo, hi = window_bounds(events.stream_time)
            queries = {(m, "cumulative"): q for m, q in promql_join_queries().items()}
            queries.update({(m, "1h"): q for m, q in promql_join_queries(lo, hi).items()})
            got_rows, answers = _timed_queries(system, prom, queries, _expected(events), _just_after(scrape), reps)
            rows += got_rows
            rss, peak = prom.memory()
            rows += [_row(system, "prometheus_rss_bytes", rss, "B"),
                     _row(system, "prometheus_peak_rss_bytes", peak, "B")]
            if essay_interval is None:
                return rows, answers
            # The essay scraped every 5 s (so a scrape may take at most 5 s): does that scrape still succeed?
            prom.reload([Job("essay", target, essay_interval, essay_interval)])
            essay = prom.wait_scrape("essay", timeout=4 * essay_interval + 30)
            rows.append(_row(system, "essay_interval_scrape_up", int(essay["up"]), "bool",
                             "ok" if essay["up"] else "failed",
                             f"scrape_interval {essay_interval:g}s: took {essay['duration_s']} s "
                             f"{essay['error']}".strip()))
    finally:
        app.close()
    return rows, answers


def measure_streammon(events: Events, data_path: str, *, reps: int,
                      interval: float = 5.0) -> tuple[list[dict], list[dict]]:
    """streammon in a process, a real Prometheus scraping it, plain selectors through the HTTP API."""
    system = "streammon"
    app = Child("streammon_app.py", data_path, timeout=600 + 1e-3 * events.n)
    rows = [_row(system, "ingest_us_per_event", 1e6 * app.ready["ingest_s"] / app.ready["events"], "us",
                 note="Monitor.process on JSON bytes, batches of 4096"),
            _row(system, "inprocess_scrape_s", app.ready["scrape_s"], "s",
                 note="generate_latest(monitor.registry), median of 21")]
    answers: list[dict] = []
    try:
        with Prometheus([Job("streammon", f"127.0.0.1:{app.ready['port']}", interval, interval)]) as prom:
            scrape = prom.wait_scrape("streammon", timeout=2 * interval + 60)
            mem = app.stats()
            rows += [_row(system, "app_rss_bytes", mem["rss_bytes"], "B"),
                     _row(system, "app_state_bytes", mem["rss_bytes"] - app.ready["baseline_rss_bytes"], "B",
                          note="RSS after ingest minus RSS before")]
            if not scrape["up"]:
                rows.append(_row(system, "scrape_s", scrape["duration_s"] or "", "s", "failed", scrape["error"]))
                return rows, answers
            rows += [_row(system, "scrape_s", scrape["duration_s"], "s", note=f"Prometheus scrape_duration_seconds, "
                          f"scrape_interval {interval:g}s"),
                     _row(system, "scrape_samples", scrape["samples"], "samples")]
            queries = {(m, w): f'streammon_{m}{{window="{w}"}}' for w in WINDOWS for m in METRICS}
            got_rows, answers = _timed_queries(system, prom, queries, _expected(events), _just_after(scrape), reps)
            rows += got_rows
            rss, peak = prom.memory()
            rows += [_row(system, "prometheus_rss_bytes", rss, "B"),
                     _row(system, "prometheus_peak_rss_bytes", peak, "B")]
    finally:
        app.close()
    return rows, answers


def measure_postgres(pg: Postgres, events: Events, *, reps: int, batch: int) -> tuple[list[dict], list[dict]]:
    system = "postgresql"
    r = run_postgres(pg, events, batch=batch, reps=reps)
    events_n = len(events.order)
    rows = [_row(system, "ingest_us_per_event", 1e6 * r["insert_s"] / events_n, "us",
                 note=f"COPY into indexed tables, one transaction per {batch} arrivals"),
            _row(system, "refresh_last_s", r["refresh_last_s"], "s",
                 note="REFRESH MATERIALIZED VIEW after the last batch"),
            _row(system, "refresh_total_s", r["refresh_total_s"], "s", note=f"all {r['batches']} refreshes"),
            _row(system, "refresh_us_per_event", 1e6 * r["refresh_total_s"] / events_n, "us"),
            _row(system, "table_bytes", r["bytes"], "B", note="both tables with their indexes"),
            _row(system, "view_bytes", r["view_bytes"], "B")]
    answers = []
    for name, seconds in r["queries"].items():
        read, window = (name.split("_") + ["cumulative"])[:2]
        got, want = r["answers"][name]
        ok = all(same(got[m], want[m]) for m in METRICS)
        for m in METRICS:
            answers.append({"system": system, "read": read, "window": window, "metric": m, "value": got[m],
                            "sklearn": want[m], "status": "exact" if same(got[m], want[m]) else "wrong"})
        rows.append(_row(system, f"query_s:{read}:{window}", seconds if ok else "", "s", "ok" if ok else "wrong",
                         "one query for all three metrics, median"))
    return rows, answers


def save_events(events: Events, directory: str) -> str:
    path = os.path.join(directory, f"events-{events.n}.npz")
    events.save(path)
    return path


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="compare-")
