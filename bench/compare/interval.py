"""Scrape-interval correctness: what Prometheus can see of a stream that updates faster than it scrapes.

A Prometheus scrape reads the exposition as it is at one instant and stores those values; nothing
that happened between two scrapes reaches it except through what the exposition holds at the next
one. So the experiment replays a stream in event time, one tick per second, and "scrapes" at the
scrape instants by calling ``prometheus_client.generate_latest`` and parsing the text, exactly the
read Prometheus makes (minus wall-clock jitter). Three ways to publish accuracy are read:

* ``last_pair_gauge``: a gauge set to 1/0 (right/wrong) for each prediction as its feedback comes
  in; the hour's accuracy is ``avg_over_time(correct[1h])``.
* ``batch_gauge``: a gauge set to the accuracy of each second's feedback batch;
  ``avg_over_time(batch_accuracy[1h])``.
* ``streammon``: ``streammon_accuracy{window="1h"}``, read at every scrape.

Each value read at a scrape instant is compared with numpy's accuracy over the pairs that had
joined by then, in the same 1 h window (streammon's ``Sliding("1h")`` rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import streammon as sm
from streammon import operators as ops
from streammon.connectors.base import Message

from .data import WINDOW, window_bounds

__all__ = ["IntervalSpec", "run_interval"]


@dataclass(frozen=True)
class IntervalSpec:
    rate: float = 20.0  # predictions per second
    hours: float = 2.0
    mean_delay: float = 30.0  # seconds to feedback
    accuracy: float = 0.9
    incident: tuple[float, float] = (2400.0, 3300.0)  # seconds into the stream where the model degrades
    incident_accuracy: float = 0.6
    intervals: tuple[float, ...] = (5.0, 15.0, 60.0)
    seed: int = 11


def _stream(spec: IntervalSpec):
    rng = np.random.default_rng(spec.seed)
    duration = spec.hours * 3600
    n = rng.poisson(spec.rate * duration)
    start = 1_700_000_000.0
    pred_ts = np.round(start + np.sort(rng.uniform(0, duration, n)), 3)
    fb_ts = np.round(pred_ts + rng.exponential(spec.mean_delay, n), 3)
    y_true = (rng.random(n) < 0.3).astype(np.int64)
    offset = pred_ts - start
    in_incident = (offset >= spec.incident[0]) & (offset < spec.incident[1])
    p_right = np.where(in_incident, spec.incident_accuracy, spec.accuracy)
    y_pred = np.where(rng.random(n) < p_right, y_true, 1 - y_true)
    return start, duration, pred_ts, fb_ts, y_true, y_pred


def _read(registry: CollectorRegistry, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return math.nan


def run_interval(spec: IntervalSpec = IntervalSpec()) -> list[dict]:
    start, _duration, pred_ts, fb_ts, y_true, y_pred = _stream(spec)
    n = len(pred_ts)
    right = (y_true == y_pred).astype(np.float64)
    ids = [f"p{i}" for i in range(n)]
    monitor = sm.Monitor("interval", windows=[sm.Cumulative(), sm.Sliding(WINDOW)])
    monitor.track(ops.Accuracy())
    gauges = CollectorRegistry()
    correct = Gauge("taxi_correct", "1 if the last labelled prediction was right", registry=gauges)
    batch_accuracy = Gauge("taxi_batch_accuracy", "Accuracy of the last feedback batch", registry=gauges)

    # Arrivals per one-second tick, predictions before feedback within a tick (feedback always comes later).
    ts = np.concatenate([pred_ts, fb_ts])
    kind = np.concatenate([np.zeros(n, np.int8), np.ones(n, np.int8)])
    order = np.lexsort((kind, ts))
    tick_of = np.floor(ts[order] - start).astype(np.int64)
    ticks = int(tick_of[-1]) + 1  # until the last feedback is in
    bounds = np.searchsorted(tick_of, np.arange(ticks + 1), side="left").tolist()

    finest = 1.0
    scrape_every = {iv: int(iv) for iv in (finest, *spec.intervals)}
    pair_updates = batch_updates = 0
    samples: dict[str, list[tuple[float, float, int]]] = {"last_pair_gauge": [], "batch_gauge": []}
    checks: list[tuple[float, float, float, bool]] = []  # (s, streammon 1h, truth 1h, same pair count)
    stream_time = -math.inf
    for tick in range(ticks):
        arrivals = order[bounds[tick]:bounds[tick + 1]]
        msgs, pairs = [], []
        for a in arrivals.tolist():
            i = a % n
            if a < n:
                msgs.append(Message(b'{"id":"%s","ts":%.3f,"prediction":%d}' % (ids[i].encode(), pred_ts[i], y_pred[i]),
                                    kind="prediction"))
                stream_time = max(stream_time, pred_ts[i])
            else:
                msgs.append(Message(b'{"id":"%s","ts":%.3f,"label":%d}' % (ids[i].encode(), fb_ts[i], y_true[i]),
                                    kind="feedback"))
                stream_time = max(stream_time, fb_ts[i])
                pairs.append(i)
        if msgs:
            monitor.process(msgs)
        for i in pairs:  # the app sets the gauge once per labelled prediction
            correct.set(right[i])
            pair_updates += 1
        if pairs:
            batch_accuracy.set(float(right[pairs].mean()))
            batch_updates += 1
        s = start + tick + 1  # the instant after this tick: every scrape reads the state here
        if tick + 1 >= WINDOW and (tick + 1) % scrape_every[finest] == 0:
            lo, hi = window_bounds(stream_time)
            joined = fb_ts < s
            in_window = joined & (pred_ts >= lo) & (pred_ts < hi)
            truth = float(right[in_window].mean()) if in_window.any() else math.nan
            checks.append((s, _read(monitor.registry, "streammon_accuracy", window="1h"), truth,
                           _read(monitor.registry, "streammon_accuracy_count", window="1h") == in_window.sum()))
        samples["last_pair_gauge"].append((s, _read(gauges, "taxi_correct"), pair_updates))
        samples["batch_gauge"].append((s, _read(gauges, "taxi_batch_accuracy"), batch_updates))

    truth_at = {s: t for s, _, t, _ in checks}
    joined = int((fb_ts < s).sum())  # pairs complete at the last scrape, and how many streammon had counted
    counted = int(_read(monitor.registry, "streammon_accuracy_count", window="cumulative"))
    rows = []
    for iv in (finest, *spec.intervals):
        step = scrape_every[iv]
        mine = [(s, v, t, c) for s, v, t, c in checks if round(s - start) % step == 0]
        errors = [abs(v - t) for _, v, t, _ in mine if not (math.isnan(v) and math.isnan(t))]
        exact = sum(1 for _, v, t, c in mine
                    if c and ((math.isnan(v) and math.isnan(t)) or math.isclose(v, t, rel_tol=1e-12)))
        rows.append({"approach": "streammon", "scrape_interval_s": iv, "updates": joined, "updates_scraped": counted,
                     "scrapes_checked": len(mine), "exact_scrapes": exact,
                     "mean_abs_err_pp": 100 * float(np.mean(errors)), "max_abs_err_pp": 100 * float(np.max(errors)),
                     "note": "streammon_accuracy{window=\"1h\"}: every pair counts, whenever the scrape comes"})
        if iv == finest:
            continue
        for approach, total in (("last_pair_gauge", pair_updates), ("batch_gauge", batch_updates)):
            scraped = [(s, v, k) for s, v, k in samples[approach] if round(s - start) % step == 0]
            seen = len({k for _, _, k in scraped if k > 0})
            times = np.array([s for s, _, _ in scraped])
            values = np.array([v for _, v, _ in scraped])
            errs = []
            for s, _, _ in scraped:
                if s not in truth_at:
                    continue
                keep = (times > s - WINDOW) & (times <= s) & ~np.isnan(values)
                errs.append(abs(float(values[keep].mean()) - truth_at[s]))  # PromQL avg_over_time(g[1h]) at s
            rows.append({"approach": approach, "scrape_interval_s": iv, "updates": total, "updates_scraped": seen,
                         "scrapes_checked": len(errs), "exact_scrapes": sum(1 for e in errs if e <= 1e-12),
                         "mean_abs_err_pp": 100 * float(np.mean(errs)), "max_abs_err_pp": 100 * float(np.max(errs)),
                         "note": "avg_over_time(g[1h]) against the true accuracy of the hour"})
    for r in rows:
        r["missed_share"] = 1 - r["updates_scraped"] / r["updates"] if r["updates"] else 0.0
    return rows
