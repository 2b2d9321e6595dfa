"""``streammon demo``: a taxi-tip classifier in production, simulated on one machine, no broker.

A frozen model (river's ``LogisticRegression``, trained on trips from before the drift) predicts
whether a taxi ride ends with a tip. Two versions share the traffic (``segment={"version": ...}``):
v3 predicts a tip when the score is at least 0.5, the v4 canary when it is at least 0.6. At
``drift_at`` the world changes under the model: more airport runs and cash rides (the score
distribution moves) and card riders stop tipping by default (accuracy drops). Feedback, the true
tip, comes minutes later; some never comes, some comes twice, some predictions are retried or
delivered late, and a few events are malformed. Event time runs on a simulated clock, one
prediction per simulated second on average, so hour-long windows move within a short demo.

:func:`simulate` is a plain generator of wire events, reusable by tests and benchmarks;
:func:`build_monitor` is the monitor the demo serves; :func:`run_demo` paces the events in wall
time and prints a live summary.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from river import linear_model, optim, preprocessing

from .. import operators as ops
from ..monitor import Monitor
from ..windows import Cumulative, Sliding

__all__ = ["simulate", "build_monitor", "reference_scores", "run_demo", "summarize", "report_progress", "clock_text",
           "START", "DRIFT_AT"]

#: 2024-01-01T00:00:00Z. Fixed, so that a seed always gives the same events; in the past, so that
#: the monitor's "too far in the future" check never fires in a long demo.
START = 1_704_067_200.0
#: simulated seconds after ``start`` when the drift begins
DRIFT_AT = 3 * 3600.0

_SECONDS_PER_PREDICTION = 1.0
_THRESHOLDS = {"v3": 0.5, "v4": 0.6}
_CANARY_SHARE = 0.2  # of the traffic, on v4
_MISSING_FEEDBACK = 0.08  # feedback that never arrives
_DUPLICATE_FEEDBACK = 0.03
_DUPLICATE_PREDICTION = 0.005  # a model server's retry
_LATE_PREDICTION = 0.002  # delivered 70-120 minutes after its event time
_MALFORMED = 0.003
_MEDIAN_DELAY = 300.0  # seconds until the tip is known
_MAX_DELAY = 2 * 3600.0


class _TaxiWorld:
    """Trips, their true tipping behaviour before and after the drift, and the frozen model."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.model = self._train()

    def trip(self, clock: float, drifted: bool) -> dict[str, Any]:
        rng = self.rng
        airport = rng.random() < (0.25 if drifted else 0.06)
        distance = rng.uniform(12.0, 22.0) if airport else rng.lognormvariate(0.9, 0.6)
        return {
            "trip_distance": round(distance, 2),
            "fare_amount": round(max(3.5, 3.0 + 2.6 * distance + rng.gauss(0.0, 1.5)), 2),
            "payment_type": "card" if rng.random() < (0.5 if drifted else 0.72) else "cash",
            "passenger_count": None if rng.random() < 0.02 else rng.choice((1, 1, 1, 2, 2, 3, 4)),
            "pickup_hour": int(clock // 3600 % 24),
            "airport": int(airport),
        }

    def tipped(self, f: dict[str, Any], drifted: bool) -> int:
        card = f["payment_type"] == "card"
        if drifted:  # the payment terminals lost their default tip screen; airport riders stopped tipping
            logit = -0.2 + 0.6 * card + 0.03 * f["trip_distance"] - 1.2 * f["airport"]
        else:
            logit = -1.6 + 3.0 * card + 0.03 * f["trip_distance"] + 0.5 * f["airport"]
        return int(self.rng.random() < 1.0 / (1.0 + math.exp(-logit)))

    def score(self, f: dict[str, Any]) -> float:
        return round(self.model.predict_proba_one(_model_input(f)).get(True, 0.0), 4)

    def _train(self):
        model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
        for i in range(4000):
            f = self.trip(START + i * 37.0, drifted=False)
            model.learn_one(_model_input(f), bool(self.tipped(f, drifted=False)))
        return model


def _model_input(f: dict[str, Any]) -> dict[str, float]:
    return {
        "trip_distance": f["trip_distance"], "fare_amount": f["fare_amount"],
        "card": float(f["payment_type"] == "card"), "airport": float(f["airport"]),
        "passengers": float(f["passenger_count"] or 1),
    }


def _malformed(rng: random.Random, good: dict[str, Any]) -> dict[str, Any]:
    """One of the ways a real producer gets an event wrong (each is rejected by the schema)."""
    broken: list[Callable[[], dict[str, Any]]] = [
        lambda: {**good, "id": ""},
        lambda: {k: v for k, v in good.items() if k != "ts"},
        lambda: {**good, "ts": "yesterday"},
        lambda: {**good, "ts": 4_102_444_800.0},  # 2100-01-01: a clock gone wrong
        lambda: {**good, "prediction": [good["prediction"]]},
        lambda: {**good, "score": "high"},
        lambda: {**good, "kind": "click"},
        lambda: {"id": good["id"], "ts": good["ts"], "label": None},
        lambda: {"id": good["id"], "ts": good["ts"]},
    ]
    return rng.choice(broken)()


def simulate(seed: int = 0, *, n_events: int | None = None, duration: float | None = None,
             drift_at: float = DRIFT_AT, start: float = START) -> Iterator[dict[str, Any]]:
    """Wire events (dicts) in arrival order: predictions, delayed feedback, retries, malformed events.

    Stops after ``n_events`` events, or when the simulated clock passes ``start + duration``
    seconds, whichever comes first; with neither it never stops.

    >>> events = list(simulate(seed=1, n_events=50))
    >>> len(events), sorted(events[0])
    (50, ['features', 'id', 'model', 'prediction', 'score', 'segment', 'ts'])
    """
    events = _events(seed, duration, drift_at, start)
    return events if n_events is None else itertools.islice(events, n_events)


def _events(seed: int, duration: float | None, drift_at: float, start: float) -> Iterator[dict[str, Any]]:
    world = _TaxiWorld(seed)
    rng = world.rng
    later: list[tuple[float, int, dict[str, Any]]] = []  # (arrival time, tie-breaker, event)
    order = itertools.count()
    end = math.inf if duration is None else start + duration
    clock = start
    for n in itertools.count():
        clock += rng.expovariate(1.0 / _SECONDS_PER_PREDICTION)
        if clock > end:
            return
        while later and later[0][0] <= clock:
            yield heapq.heappop(later)[2]
        drifted = clock - start >= drift_at
        features = world.trip(clock, drifted)
        version = "v4" if rng.random() < _CANARY_SHARE else "v3"
        score = world.score(features)
        prediction = {"id": f"trip-{n:08d}", "ts": round(clock, 3), "model": "tip",
                      "prediction": int(score >= _THRESHOLDS[version]), "score": score, "features": features,
                      "segment": {"version": version}}
        if rng.random() < _MALFORMED:
            yield _malformed(rng, prediction)
        if rng.random() < _LATE_PREDICTION:
            heapq.heappush(later, (clock + rng.uniform(4200.0, 7200.0), next(order), prediction))
        else:
            yield prediction
        if rng.random() < _DUPLICATE_PREDICTION:
            heapq.heappush(later, (clock + rng.uniform(0.5, 30.0), next(order), dict(prediction)))
        label = world.tipped(features, drifted)
        if rng.random() < _MISSING_FEEDBACK:
            continue
        arrives = clock + min(rng.lognormvariate(math.log(_MEDIAN_DELAY), 1.0), _MAX_DELAY)
        feedback = {"id": prediction["id"], "ts": round(arrives, 3), "label": label, "model": "tip"}
        heapq.heappush(later, (arrives, next(order), feedback))
        if rng.random() < _DUPLICATE_FEEDBACK:
            heapq.heappush(later, (arrives + rng.uniform(1.0, 600.0), next(order), dict(feedback)))


def reference_scores(seed: int = 0, n: int = 2000, *, drift_at: float = DRIFT_AT, start: float = START) -> list[float]:
    """Scores of the model on fresh trips spread over the time before the drift: the reference
    sample for PSI and KS. The world is rebuilt from ``seed``, so the model is the one :func:`simulate` uses."""
    world = _TaxiWorld(seed)
    return [world.score(world.trip(start + i * drift_at / n, drifted=False)) for i in range(n)]


def build_monitor(name: str = "taxi", *, seed: int = 0) -> Monitor:
    """The demo's monitor: pair, prediction and feedback metrics per model version, over the
    cumulative window and a sliding hour (feedback waits three simulated hours, then expires)."""
    monitor = Monitor(name, windows=[Cumulative(), Sliding("1h")], segments=("version",), feedback_ttl="3h")
    # pair metrics: need the feedback
    monitor.track(ops.Accuracy())
    monitor.track(ops.F1())
    monitor.track(ops.LogLoss())
    monitor.track(ops.ROCAUC(), name="roc_auc")
    # prediction metrics: known at once, so they show the drift before any feedback does
    monitor.track(ops.Count(of="prediction"), name="predictions")
    monitor.track(ops.MeanScore())
    monitor.track(ops.Quantiles([0.1, 0.5, 0.9], of="score"), name="score_quantiles")
    monitor.track(ops.PSI(reference_scores(seed), of="score"), name="score_psi")
    monitor.track(ops.NullRate("features.passenger_count"), name="passenger_count_null_rate")
    # feedback metrics
    monitor.track(ops.Mean(of="label"), name="tip_rate")
    monitor.track(ops.FeedbackDelay([0.5, 0.9, 0.99]), name="feedback_delay_seconds")
    return monitor


# -- the live demo ----------------------------------------------------------------------------
def summarize(monitor: Monitor) -> dict[str, float]:
    """Headline numbers over every series: accuracy per window, feedback coverage, pending, rejected."""
    acc: dict[str, list[float]] = {}
    counts: dict[tuple, float] = {}
    events = {"accepted_predictions": 0.0, "rejected": 0.0, "joined": 0.0, "pending": 0.0, "stream_time": math.nan}
    values = monitor.values()
    for s in values:
        if s.name == "streammon_accuracy_count":
            counts[tuple(sorted(s.labels.items()))] = s.value
    for s in values:
        if s.name == "streammon_accuracy" and not math.isnan(s.value):
            n = counts.get(tuple(sorted(s.labels.items())), 0.0)
            acc.setdefault(s.labels["window"], [0.0, 0.0])
            acc[s.labels["window"]][0] += s.value * n
            acc[s.labels["window"]][1] += n
        elif s.name == "streammon_events_total":
            if s.labels["outcome"] == "rejected":
                events["rejected"] += s.value
            elif s.labels["topic"] == "predictions" and s.labels["outcome"] == "accepted":
                events["accepted_predictions"] += s.value
        elif s.name == "streammon_joined_total":
            events["joined"] += s.value
        elif s.name == "streammon_join_pending" and s.labels["side"] == "prediction":
            events["pending"] += s.value
        elif s.name == "streammon_stream_time_seconds":
            events["stream_time"] = s.value
    out = {f"accuracy_{w}": (total / n if n else math.nan) for w, (total, n) in acc.items()}
    predictions = events.pop("accepted_predictions")
    out["coverage"] = events["joined"] / predictions if predictions else math.nan
    return {**out, **events}


def run_demo(*, seed: int = 0, rate: float = 1000.0, duration: float | None = None, port: int = 9108,
             host: str = "127.0.0.1", serve: bool = True, report_every: float = 5.0, out: TextIO | None = None,
             stop: threading.Event | None = None) -> Monitor:
    """Feed :func:`simulate` to :func:`build_monitor` at ``rate`` events per wall second, serving
    ``/metrics`` and printing a summary every ``report_every`` seconds, until ``duration`` or ``stop``."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    stop = stop or threading.Event()
    out = out or sys.stdout
    monitor = build_monitor(seed=seed)
    events = simulate(seed)
    url = monitor.serve(port, host=host).url if serve else "(not served)"
    per_prediction = 1 + (1 - _MISSING_FEEDBACK) * (1 + _DUPLICATE_FEEDBACK) + _DUPLICATE_PREDICTION + _MALFORMED
    drift_in = DRIFT_AT / _SECONDS_PER_PREDICTION * per_prediction / rate
    print(f"streammon demo: taxi-tip model, seed {seed}, {rate:g} events/s; the drift begins at simulated "
          f"{clock_text(START + DRIFT_AT)}, about {drift_in:.0f} s in; metrics at {url}", file=out, flush=True)
    began = last_report = time.monotonic()
    sent = reported = 0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if duration is not None and now - began >= duration:
                break
            due = int((now - began) * rate) - sent
            if due > 0:
                batch = list(itertools.islice(events, due))
                monitor.replay(batch)
                sent += len(batch)
            if now - last_report >= report_every:
                report_progress(out, monitor, sent - reported, now - last_report, now - began, url)
                last_report, reported = now, sent
            stop.wait(0.05)
        report_progress(out, monitor, sent - reported, max(time.monotonic() - last_report, 1e-9), time.monotonic() - began, url)
    finally:
        monitor.close()
    return monitor


def clock_text(ts: float) -> str:
    """An event time as the demo prints it (UTC, to the minute)."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def report_progress(out: TextIO, monitor: Monitor, n: int, seconds: float, elapsed: float, url: str) -> None:
    """One progress line of the demo: events per second, stream time, and the headline metrics."""
    s = summarize(monitor)
    drift = " DRIFTED" if s["stream_time"] >= START + DRIFT_AT else ""
    fmt = lambda v: "  -  " if math.isnan(v) else f"{v:.3f}"  # noqa: E731
    stream = clock_text(s["stream_time"]) if math.isfinite(s["stream_time"]) else "-"
    print(f"[{elapsed:5.0f}s] sim {stream}{drift} | {n / seconds:6.0f} ev/s | accuracy cumulative "
          f"{fmt(s.get('accuracy_cumulative', math.nan))} 1h {fmt(s.get('accuracy_1h', math.nan))} | coverage "
          f"{fmt(s['coverage'])} | pending {s['pending']:.0f} | rejected {s['rejected']:.0f} | {url}",
          file=out, flush=True)
