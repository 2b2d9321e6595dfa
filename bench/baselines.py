"""What a team would write without streammon, to measure streammon against.

* :class:`RiverLoop` (baseline A): ``json.loads`` per event, a plain ``dict`` join, and per event
  the same metric set as plain river objects, per version, in a cumulative and an exact 1 h
  sliding window (river metrics reverted as pairs leave a deque of the window's events).
* :class:`NaiveRecompute` (baseline B): keep every joined pair and prediction in numpy columns and
  recompute every metric from scratch with numpy / scikit-learn over the cumulative and the
  last-hour window at each publish (every ``publish_every`` seconds of event time).
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from river import metrics, stats
from sklearn.metrics import roc_auc_score

__all__ = ["RiverLoop", "NaiveRecompute", "QS", "HOUR"]

QS = (0.5, 0.9, 0.99)
HOUR = 3600.0
_EDGES = np.linspace(0.0, 1.0, 11)[1:-1]  # calibration bins as streammon's Calibration draws them
_EDGE_LIST = _EDGES.tolist()


class _Calibration:
    """Expected calibration error over 10 bins; river has none, so plain Python with revert."""

    def __init__(self) -> None:
        self.count = [0] * 10
        self.positives = [0] * 10
        self.score_sum = [0.0] * 10
        self.n = 0

    def _add(self, y_true: int, score: float, sign: int) -> None:
        b = bisect.bisect_right(_EDGE_LIST, score)
        self.count[b] += sign
        self.positives[b] += sign * (y_true == 1)
        self.score_sum[b] += sign * score
        self.n += sign

    def update(self, y_true: int, score: float) -> None:
        self._add(y_true, score, 1)

    def revert(self, y_true: int, score: float) -> None:
        self._add(y_true, score, -1)

    def get(self) -> float:
        return sum(abs(p - s) for p, s in zip(self.positives, self.score_sum)) / self.n if self.n else math.nan


class _PairMetrics:
    """The 10 pair metrics: label metrics read (y_true, y_pred); probability metrics (y_true, score)."""

    def __init__(self) -> None:
        self.on_label = {"accuracy": metrics.Accuracy(), "precision": metrics.Precision(), "recall": metrics.Recall(),
                         "f1": metrics.F1(), "mae": metrics.MAE(), "mse": metrics.MSE()}
        # river has no Brier score: it is the MSE of the probability.
        self.on_score = {"log_loss": metrics.LogLoss(), "brier_score": metrics.MSE(), "roc_auc": metrics.ROCAUC(),
                         "calibration": _Calibration()}
        self._label = list(self.on_label.values())
        self._score = list(self.on_score.values())

    def update(self, y_true: int, y_pred: int, score: float) -> None:
        for m in self._label:
            m.update(y_true, y_pred)
        for m in self._score:
            m.update(y_true, score)

    def revert(self, y_true: int, y_pred: int, score: float) -> None:
        for m in self._label:
            m.revert(y_true, y_pred)
        for m in self._score:
            m.revert(y_true, score)

    def values(self) -> dict[str, float]:
        return {k: m.get() for k, m in {**self.on_label, **self.on_score}.items()}


class _Series:
    """Everything kept for one version: pair metrics, prediction metrics, feedback delay, both windows."""

    def __init__(self, per_hour: float, rolling_quantiles: bool) -> None:
        window = max(1, int(per_hour))
        self.pairs = _PairMetrics()
        self.pairs_1h = _PairMetrics()
        self.mean_score, self.mean_score_1h = stats.Mean(), stats.Mean()
        # river quantiles cannot be reverted: the sliding one is river's count window sized to an hour.
        self.quantiles = [stats.Quantile(q) for q in QS]
        self.quantiles_1h = [stats.RollingQuantile(q, window) for q in QS] if rolling_quantiles else []
        self.classes, self.classes_1h = Counter(), Counter()
        self.delay = [stats.Quantile(q) for q in QS]
        self.delay_1h = [stats.RollingQuantile(q, window) for q in QS] if rolling_quantiles else []

    def values(self) -> dict[str, Any]:
        n = sum(self.classes.values())
        return {**self.pairs.values(), **{f"{k}_1h": v for k, v in self.pairs_1h.values().items()},
                "mean_score": self.mean_score.get(), "quantiles": [q.get() for q in self.quantiles],
                "class_distribution": {k: c / n for k, c in self.classes.items()},
                "feedback_delay": [q.get() for q in self.delay]}


class RiverLoop:
    """Baseline A: per-event Python loop over plain river objects (see the module docstring).

    ``rolling_quantiles=False`` leaves out the sliding-hour quantiles (score and delay), whose river
    object (``RollingQuantile``, a sorted window) costs O(window) per update: the loop then does
    less work than streammon, which makes it the stricter baseline.
    """

    def __init__(self, rate: float, version_share: dict[str, float], *, rolling_quantiles: bool = True) -> None:
        self._per_hour = {v: rate * HOUR * share for v, share in version_share.items()}
        self._rolling_quantiles = rolling_quantiles
        self.series: dict[str, _Series] = {}
        self.pending: dict[str, tuple] = {}  # id -> (ts, y_pred, score, series)
        self.early: dict[str, tuple] = {}  # feedback that came before its prediction
        self.joined: set[str] = set()  # to count a second feedback as a duplicate
        self.window_pairs: deque = deque()
        self.window_predictions: deque = deque()
        self.stream_time = -math.inf
        self.counts = Counter()  # join health: accepted, joined, duplicates

    def _series(self, version: str) -> _Series:
        s = self.series.get(version)
        if s is None:
            s = self.series[version] = _Series(self._per_hour.get(version, 1.0), self._rolling_quantiles)
        return s

    def process(self, batch: Sequence[Any]) -> None:
        for msg in batch:
            event = json.loads(msg.value)
            ts = event["ts"]
            if ts > self.stream_time:
                self.stream_time = ts
            if msg.kind == "prediction":
                self._prediction(event, ts)
            else:
                self._feedback(event, ts)
        self._evict()

    def _prediction(self, event: dict, ts: float) -> None:
        id_ = event["id"]
        if id_ in self.pending or id_ in self.joined:
            self.counts["duplicate_prediction"] += 1
            return
        self.counts["prediction"] += 1
        s = self._series(event.get("segment", {}).get("version", ""))
        score, y_pred = event["score"], event["prediction"]
        s.mean_score.update(score)
        s.mean_score_1h.update(score)
        for q in s.quantiles:
            q.update(score)
        for q in s.quantiles_1h:
            q.update(score)
        s.classes[y_pred] += 1
        s.classes_1h[y_pred] += 1
        self.window_predictions.append((ts, s, score, y_pred))
        early = self.early.pop(id_, None)
        if early is not None:
            self._pair(id_, (ts, y_pred, score, s), early[0], early[1])
        else:
            self.pending[id_] = (ts, y_pred, score, s)

    def _feedback(self, event: dict, ts: float) -> None:
        id_ = event["id"]
        if id_ in self.joined or id_ in self.early:
            self.counts["duplicate_feedback"] += 1
            return
        self.counts["feedback"] += 1
        waiting = self.pending.pop(id_, None)
        if waiting is None:
            self.early[id_] = (ts, event["label"])
        else:
            self._pair(id_, waiting, ts, event["label"])

    def _pair(self, id_: str, pred: tuple, fb_ts: float, y_true: int) -> None:
        p_ts, y_pred, score, s = pred
        self.joined.add(id_)
        self.counts["joined"] += 1
        s.pairs.update(y_true, y_pred, score)
        s.pairs_1h.update(y_true, y_pred, score)
        delay = fb_ts - p_ts
        for q in s.delay:
            q.update(delay)
        for q in s.delay_1h:
            q.update(delay)
        self.window_pairs.append((p_ts, s, y_true, y_pred, score))

    def _evict(self) -> None:
        # Exact sliding hour by prediction time; pairs arrive nearly in prediction-time order.
        horizon = self.stream_time - HOUR
        pairs = self.window_pairs
        while pairs and pairs[0][0] < horizon:
            _, s, y_true, y_pred, score = pairs.popleft()
            s.pairs_1h.revert(y_true, y_pred, score)
        preds = self.window_predictions
        while preds and preds[0][0] < horizon:
            _, s, score, y_pred = preds.popleft()
            s.mean_score_1h.revert(score)
            s.classes_1h[y_pred] -= 1

    def values(self, version: str) -> dict[str, Any]:
        return self.series[version].values()


class _Column:
    """A growable numpy column (amortised doubling), so appends stay cheap and reads are views."""

    def __init__(self, dtype: Any) -> None:
        self.data = np.empty(1024, dtype=dtype)
        self.n = 0

    def append(self, value: Any) -> None:
        if self.n == len(self.data):
            self.data = np.concatenate([self.data, np.empty_like(self.data)])
        self.data[self.n] = value
        self.n += 1

    def view(self) -> np.ndarray:
        return self.data[: self.n]


def _pair_values(y: np.ndarray, y_pred: np.ndarray, p: np.ndarray, delay: np.ndarray) -> dict[str, Any]:
    if len(y) == 0:
        return {}
    tp = int(((y == 1) & (y_pred == 1)).sum())
    fp = int(((y == 0) & (y_pred == 1)).sum())
    fn = int(((y == 1) & (y_pred == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    clipped = np.clip(p, 1e-15, 1 - 1e-15)
    bins = np.searchsorted(_EDGES, p, side="right")
    err = y_pred - y
    return {
        "accuracy": float((y == y_pred).mean()), "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "brier_score": float(np.mean((p - y) ** 2)),
        "roc_auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan,
        "mae": float(np.abs(err).mean()), "mse": float((err ** 2).mean()),
        "calibration": float(np.abs(np.bincount(bins, weights=y, minlength=10)
                                    - np.bincount(bins, weights=p, minlength=10)).sum() / len(y)),
        "feedback_delay": np.quantile(delay, QS).tolist(),
    }


def _prediction_values(score: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    if len(score) == 0:
        return {}
    classes, counts = np.unique(y_pred, return_counts=True)
    return {"mean_score": float(score.mean()), "quantiles": np.quantile(score, QS).tolist(),
            "class_distribution": dict(zip(classes.tolist(), (counts / len(score)).tolist()))}


class NaiveRecompute:
    """Baseline B: keep everything, recompute every metric from scratch at each publish."""

    def __init__(self, publish_every: float = 15.0) -> None:
        self.publish_every = publish_every
        self.pending: dict[str, tuple] = {}
        self.early: dict[str, tuple] = {}
        self.versions: dict[str, int] = {}
        self.pairs = {k: _Column(t) for k, t in (("ts", np.float64), ("delay", np.float64), ("y", np.int64),
                                                   ("y_pred", np.int64), ("score", np.float64), ("version", np.int64))}
        self.preds = {k: _Column(t) for k, t in (("ts", np.float64), ("y_pred", np.int64), ("score", np.float64),
                                                   ("version", np.int64))}
        self.stream_time = -math.inf
        self.next_publish = math.inf
        self.publishes: list[tuple[int, int, float]] = []  # (pairs held, predictions held, seconds)
        self.last: dict = {}

    def process(self, batch: Sequence[Any]) -> None:
        for msg in batch:
            event = json.loads(msg.value)
            ts = event["ts"]
            if ts > self.stream_time:
                if self.next_publish == math.inf:
                    self.next_publish = ts + self.publish_every
                self.stream_time = ts
                if ts >= self.next_publish:
                    self.publish()
                    self.next_publish += self.publish_every * (1 + (ts - self.next_publish) // self.publish_every)
            id_ = event["id"]
            if msg.kind == "prediction":
                if id_ in self.pending:
                    continue
                code = self.versions.setdefault(event.get("segment", {}).get("version", ""), len(self.versions))
                row = (ts, event["prediction"], event["score"], code)
                for col, v in zip(self.preds.values(), row):
                    col.append(v)
                early = self.early.pop(id_, None)
                if early is not None:
                    self._pair(row, *early)
                else:
                    self.pending[id_] = row
            else:
                row = self.pending.pop(id_, None)
                if row is None:
                    self.early[id_] = (ts, event["label"])
                else:
                    self._pair(row, ts, event["label"])

    def _pair(self, row: tuple, fb_ts: float, y_true: int) -> None:
        ts, y_pred, score, code = row
        for col, v in zip(self.pairs.values(), (ts, fb_ts - ts, y_true, y_pred, score, code)):
            col.append(v)

    def publish(self) -> None:
        started = time.perf_counter()
        pairs = {k: c.view() for k, c in self.pairs.items()}
        preds = {k: c.view() for k, c in self.preds.items()}
        horizon = self.stream_time - HOUR
        out = {}
        for version, code in self.versions.items():
            for window in ("cumulative", "1h"):
                pm = pairs["version"] == code
                qm = preds["version"] == code
                if window == "1h":
                    pm &= pairs["ts"] >= horizon
                    qm &= preds["ts"] >= horizon
                out[(version, window)] = {
                    **_pair_values(pairs["y"][pm], pairs["y_pred"][pm], pairs["score"][pm], pairs["delay"][pm]),
                    **_prediction_values(preds["score"][qm], preds["y_pred"][qm]),
                }
        self.last = out
        self.publishes.append((self.pairs["ts"].n, self.preds["ts"].n, time.perf_counter() - started))
