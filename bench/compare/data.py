"""The events every system in the comparison sees, and scikit-learn's answer on them.

N binary predictions spread over one day of event time (so the 1 h sliding window holds about
N / 24 of them), each with feedback after an exponential delay (mean 5 minutes), merged in arrival
order. Ids are ten random capital letters, like the essay's ``generate_labels``. The same seed
gives the same events in every process, so a child process can rebuild them from a small file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, precision_score, recall_score

__all__ = ["Events", "make_events", "window_bounds", "oracle", "METRICS", "WINDOW", "STEP",
           "PREDICTION", "LABEL", "PREDICTION_TS"]

METRICS = ("accuracy", "precision", "recall")
WINDOW = 3600.0  # the sliding window every system answers for: streammon's Sliding("1h")
STEP = WINDOW / 60  # its default step: window bounds are aligned to whole minutes
START = 1_700_000_000.0
DAY = 86_400.0
# The essay's gauges (``BinaryClassificationMetric("taxi_data", ...)``), one series per output_id each,
# plus the prediction's event time, which the 1 h form of the join needs.
PREDICTION, LABEL, PREDICTION_TS = "taxi_data_prediction", "taxi_data_label", "taxi_data_prediction_ts"
_LETTERS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)


@dataclass(frozen=True)
class Events:
    """Predictions (``ids``, ``pred_ts``, ``y_pred``), their feedback (``fb_ts``, ``y_true``) and the arrival order.

    ``order`` lists events as they arrive: ``order[k] = i`` is prediction ``i`` when ``is_feedback[k]``
    is False, else its feedback.
    """

    ids: np.ndarray  # str, shape (n,)
    pred_ts: np.ndarray
    y_pred: np.ndarray
    fb_ts: np.ndarray
    y_true: np.ndarray
    order: np.ndarray
    is_feedback: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def stream_time(self) -> float:
        """The largest event time: where every system's 1 h window ends."""
        return float(max(self.pred_ts.max(), self.fb_ts.max()))

    def save(self, path: str) -> None:
        np.savez(path, ids=self.ids, pred_ts=self.pred_ts, y_pred=self.y_pred, fb_ts=self.fb_ts,
                 y_true=self.y_true, order=self.order, is_feedback=self.is_feedback)

    @classmethod
    def load(cls, path: str) -> Events:
        with np.load(path) as f:
            return cls(**{k: f[k] for k in f.files})


def _unique_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    codes = rng.integers(0, 26, size=(n, 10), dtype=np.uint8)
    ids = _LETTERS[codes].view("S10").ravel().astype("U10")
    while True:  # 26^10 ids: a repeat is rare, but two predictions must never share one
        _, first = np.unique(ids, return_index=True)
        if len(first) == n:
            return ids
        dup = np.setdiff1d(np.arange(n), first)
        ids[dup] = _LETTERS[rng.integers(0, 26, size=(len(dup), 10), dtype=np.uint8)].view("S10").ravel().astype("U10")


def make_events(n: int, *, seed: int = 7, accuracy: float = 0.85, positive_rate: float = 0.3,
                mean_delay: float = 300.0) -> Events:
    """``n`` predictions over one day, every one with feedback; ``accuracy`` of them right."""
    rng = np.random.default_rng(seed + n)
    ids = _unique_ids(rng, n)
    pred_ts = np.round(START + np.sort(rng.uniform(0.0, DAY, n)), 3)
    fb_ts = np.round(pred_ts + rng.exponential(mean_delay, n), 3)
    y_true = (rng.random(n) < positive_rate).astype(np.int64)
    right = rng.random(n) < accuracy
    y_pred = np.where(right, y_true, 1 - y_true)
    ts = np.concatenate([pred_ts, fb_ts])
    kind = np.concatenate([np.zeros(n, dtype=np.int8), np.ones(n, dtype=np.int8)])
    arrival = np.lexsort((kind, ts))  # by time; a prediction before a feedback stamped the same
    return Events(ids=ids, pred_ts=pred_ts, y_pred=y_pred, fb_ts=fb_ts, y_true=y_true,
                  order=(arrival % n).astype(np.int64), is_feedback=arrival >= n)


def window_bounds(stream_time: float, size: float = WINDOW, step: float = STEP) -> tuple[float, float]:
    """``[lo, hi)`` of streammon's ``Sliding(size, step)`` at ``stream_time`` (design section 3)."""
    hi = (math.floor(stream_time / step) + 1) * step
    return hi - size, hi


def oracle(events: Events, lo: float | None = None, hi: float | None = None) -> dict[str, float]:
    """scikit-learn's accuracy, precision and recall over the pairs whose prediction time is in ``[lo, hi)``."""
    keep = np.ones(events.n, dtype=bool)
    if lo is not None:
        keep &= (events.pred_ts >= lo) & (events.pred_ts < hi)
    y, p = events.y_true[keep], events.y_pred[keep]
    return {"accuracy": float(accuracy_score(y, p)), "precision": float(precision_score(y, p, zero_division=0)),
            "recall": float(recall_score(y, p, zero_division=0)), "pairs": int(keep.sum())}
