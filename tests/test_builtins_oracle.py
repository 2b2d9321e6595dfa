"""Every built-in operator, tracked on a Monitor, in every window kind and by both time bases, against the oracle.

Streams come from hypothesis, with out-of-order, duplicate, missing, early and late events. The
oracle is ``tests/oracle.py`` (a sequential join and the window rule of design section 3); each
published series is then recomputed from scratch per (model, segment) with scikit-learn, numpy or
scipy: exactly for exact operators, within the documented bound for sketches and binned ones.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pytest
import sklearn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm

import streammon as sm
from streammon import operators as ops
from tests.oracle import Row, run_oracle

EXAMPLES = int(os.environ.get("BUILTINS_EXAMPLES", 60))
FEEDBACK_TTL, PREDICTION_TTL = 30.0, 12.0
SEGMENTS = ("version",)
# A cumulative window, a sliding one of four panes, and one whose grace is zero.
WINDOWS = [sm.Cumulative(), sm.Sliding(40, 10), sm.Sliding(30, 15, grace=0)]
BASES = ("prediction", "feedback")
QS = (0.1, 0.5, 0.9, 0.99)
ALPHA = 0.01
# Multiples of 1/1000 like the scores: KS's cuts are then every distinct reference value, so it is exact.
REFERENCE = np.random.default_rng(0).integers(0, 1001, 400) / 1000
COARSE_KS_BOUND = ops.KS(REFERENCE, cut_points=10).error_bound


# -- the oracle of one series: the rows of one (model, segment) group in one window --------------
class Group:
    """Columns of one series' rows in one window, and a memo shared by the windows that hold the same rows."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.memo: dict[Callable, Any] = {}
        self.y_true = np.array([r.y_true for r in rows])
        self.y_pred = np.array([r.y_pred for r in rows])
        self.score = np.array([r.score for r in rows], dtype=np.float64)
        self.delay = np.array([r.fb_ts - r.pred_ts if r.stream == "pair" else math.nan for r in rows])
        self.age = [(r.features or {}).get("age") for r in rows]
        self.ages = np.array([a for a in self.age if a is not None], dtype=np.float64)


def sample_quantiles(values: np.ndarray) -> dict[str, float] | float:
    """The documented rank: 0-based floor(q * (n - 1)) of the sorted sample."""
    if not len(values):
        return math.nan
    ordered = np.sort(values)
    return {str(q): float(ordered[math.floor(q * (len(ordered) - 1))]) for q in QS}


def class_shares(values) -> dict[str, float] | float:
    """Share of each class, named as ``str`` of the value with integral floats written as ints."""
    keys = [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values]
    if not keys:
        return math.nan
    names, counts = np.unique(keys, return_counts=True)
    return {str(k): c / len(keys) for k, c in zip(names, counts)}


def mean_or_nan(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def roc_auc(g: Group) -> float:
    return skm.roc_auc_score(g.y_true, g.score) if len(set(g.y_true.tolist())) == 2 else math.nan


def roc_auc_and_bound(g: Group, bins: int = 100) -> tuple[float, float]:
    """(exact AUC, the documented bound: half the positive-negative pairs sharing a cell of round(s * bins))."""
    exact = roc_auc(g)
    if math.isnan(exact):
        return exact, math.nan
    cells = np.rint(g.score * bins)
    pos, neg = cells[g.y_true == 1], cells[g.y_true != 1]
    shared = sum(int((neg == c).sum()) for c in pos)
    return exact, 0.5 * shared / (len(pos) * len(neg))


def expected_calibration_error(g: Group, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    y, s = g.y_true, g.score
    total = 0.0
    for b in range(bins):
        inside = (s >= edges[b]) & ((s < edges[b + 1]) | (b == bins - 1))
        if inside.any():
            total += inside.sum() / len(s) * abs((y[inside] == 1).mean() - s[inside].mean())
    return total


def psi(g: Group, bins: int = 10, eps: float = 1e-4) -> float:
    edges = np.unique(np.quantile(REFERENCE, np.linspace(0, 1, bins + 1)[1:-1]))
    # np.histogram's bins are [a, b): a value on an edge counts in the bin above, as documented.
    cut = np.concatenate([[-np.inf], edges, [np.inf]])
    expected = np.maximum(np.histogram(REFERENCE, cut)[0] / len(REFERENCE), eps)
    actual = np.maximum(np.histogram(g.score, cut)[0] / len(g.score), eps)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(g: Group) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's p-value on tiny samples; D is unaffected
        return float(stats.ks_2samp(g.score, REFERENCE).statistic)


def prf(g: Group, average: str) -> tuple[float, float, float]:
    p, r, f, _ = skm.precision_recall_fscore_support(g.y_true, g.y_pred, average=average, pos_label=1, zero_division=0)
    return float(p), float(r), float(f)


def balanced_accuracy(g: Group) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true": expected here
        return float(skm.balanced_accuracy_score(g.y_true, g.y_pred))


def r2(g: Group) -> float:
    return float(skm.r2_score(g.y_true, g.y_pred)) if len(g.rows) >= 2 else math.nan


# -- how a published value agrees with the oracle --------------------------------------------------
def exactly(got: Any, expected: Any) -> bool:
    """Equal up to float rounding; NaN (or no sample at all, for a mapping) when the oracle is NaN."""
    if isinstance(expected, dict):
        return (isinstance(got, dict) and got.keys() == expected.keys()
                and all(exactly(got[k], expected[k]) for k in got))
    if isinstance(expected, float) and math.isnan(expected):
        return got is None or (isinstance(got, float) and math.isnan(got))
    return isinstance(got, float) and math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)


def within_alpha(got: Any, expected: Any) -> bool:
    """The sketch's bound: every quantile within ALPHA * |true| of the sample's value at the documented rank."""
    if isinstance(expected, float):
        return exactly(got, expected)
    if isinstance(got, float):
        got = {"0.5": got}  # QuantileSketch publishes the median alone
        expected = {"0.5": expected["0.5"]}
    return (isinstance(got, dict) and got.keys() == expected.keys()
            and all(abs(got[k] - e) <= ALPHA * abs(e) * (1 + 1e-9) for k, e in expected.items()))


def within_bound(got: Any, expected: tuple[float, float]) -> bool:
    value, bound = expected
    if math.isnan(value):
        return exactly(got, value)
    return isinstance(got, float) and abs(got - value) <= bound + 1e-12


def below_by_at_most_bound(got: Any, expected: float) -> bool:
    """KS on coarse cuts: ``0 <= exact - got <= error_bound``."""
    if math.isnan(expected):
        return exactly(got, expected)
    return isinstance(got, float) and -1e-12 <= expected - got <= COARSE_KS_BOUND + 1e-12


def close_variance(got: Any, expected: tuple[float, float]) -> bool:
    # Moments keeps power sums: their rounding is relative to mean**2, not to the variance.
    value, mean = expected
    if math.isnan(value):
        return exactly(got, value)
    return isinstance(got, float) and math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12 * max(1.0, mean * mean))


def variance(values: np.ndarray) -> tuple[float, float]:
    return (float(np.var(values)), float(np.mean(values))) if len(values) else (math.nan, math.nan)


# -- what is tracked ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One metric: the stream it reads, how to make it, and its oracle over a group's rows."""

    stream: str  # "pair", "prediction" or "feedback"
    make: Callable[[], Any]  # a fresh operator, or the statistic of a finalizer
    oracle: Callable[[Group], Any]
    agree: Callable[[Any, Any], bool] = exactly
    needs_score: bool = False  # rows without a score cannot feed it
    finalize: Callable[[Any], float] | None = None  # registered as @monitor.metric(stat=make())

    def register(self, monitor: sm.Monitor, name: str, time: str) -> None:
        if self.finalize is None:
            monitor.track(self.make(), name=name, time=time)
        else:
            monitor.metric(self.finalize, stat=self.make(), name=name, time=time)

    @property
    def bases(self) -> tuple[str, ...]:
        # Only a pair has two event times; predictions and feedback have one each.
        return BASES if self.stream == "pair" else ("prediction",)


pair, prediction, feedback = (partial(Spec, stream) for stream in ("pair", "prediction", "feedback"))


def balanced_accuracy_of(cm: ops.ConfusionMatrix) -> float:
    return float(np.mean([cm.recall(c) for c in cm.classes if cm.true_count(c)]))


def log_loss(g: Group) -> float:
    return float(skm.log_loss(g.y_true, g.score, labels=[0, 1]))


def brier_score(g: Group) -> float:
    return float(skm.brier_score_loss(g.y_true, g.score, pos_label=1))


def size(g: Group) -> float:
    return float(len(g.rows))


def score_quantiles(g: Group) -> dict[str, float] | float:
    return sample_quantiles(g.score)


COMMON = {
    "pairs": pair(lambda: ops.Count(of="y_true"), size),
    "mean_y_true": pair(lambda: ops.Mean(of="y_true"), lambda g: mean_or_nan(g.y_true)),
    "delay": pair(lambda: ops.FeedbackDelay(QS, alpha=ALPHA), lambda g: sample_quantiles(g.delay), within_alpha),
    "volume": prediction(ops.Count, size),
    "feedback_volume": feedback(lambda: ops.Count(of="label"), size),
    "label_distribution": feedback(ops.LabelDistribution, lambda g: class_shares(g.y_true.tolist())),
}

CLASSIFICATION = {
    **COMMON,
    "accuracy": pair(ops.Accuracy, lambda g: float(skm.accuracy_score(g.y_true, g.y_pred))),
    "precision": pair(ops.Precision, lambda g: prf(g, "binary")[0]),
    "recall": pair(ops.Recall, lambda g: prf(g, "binary")[1]),
    "f1": pair(ops.F1, lambda g: prf(g, "binary")[2]),
    "precision_macro": pair(lambda: ops.Precision(average="macro"), lambda g: prf(g, "macro")[0]),
    "recall_macro": pair(lambda: ops.Recall(average="macro"), lambda g: prf(g, "macro")[1]),
    "f1_macro": pair(lambda: ops.F1(average="macro"), lambda g: prf(g, "macro")[2]),
    "balanced_accuracy": pair(ops.ConfusionMatrix, balanced_accuracy, finalize=balanced_accuracy_of),
    "log_loss": pair(ops.LogLoss, log_loss, needs_score=True),
    "brier_score": pair(ops.BrierScore, brier_score, needs_score=True),
    "rocauc": pair(lambda: ops.ROCAUC(bins=1000), roc_auc, needs_score=True),
    "rocauc_coarse": pair(lambda: ops.ROCAUC(bins=100), roc_auc_and_bound, within_bound, needs_score=True),
    "calibration": pair(ops.Calibration, expected_calibration_error, needs_score=True),
    "class_distribution": prediction(ops.ClassDistribution, lambda g: class_shares(g.y_pred.tolist())),
    "mean_score": prediction(ops.MeanScore, lambda g: mean_or_nan(g.score), needs_score=True),
    "score_quantiles": prediction(lambda: ops.Quantiles(QS, of="score", alpha=ALPHA), score_quantiles, within_alpha,
                                  needs_score=True),
    "score_median": prediction(lambda: ops.QuantileSketch(alpha=ALPHA, of="score"), score_quantiles, within_alpha,
                               needs_score=True),
    "psi": prediction(lambda: ops.PSI(REFERENCE), psi, needs_score=True),
    "ks": prediction(lambda: ops.KS(REFERENCE), ks, needs_score=True),
    "ks_coarse": prediction(lambda: ops.KS(REFERENCE, cut_points=10), ks, below_by_at_most_bound, needs_score=True),
    "age_null_rate": prediction(lambda: ops.NullRate("features.age"), lambda g: g.age.count(None) / len(g.age)),
    "age_mean": prediction(lambda: ops.Mean(of="features.age"), lambda g: mean_or_nan(g.ages)),
    "age_quantiles": prediction(lambda: ops.Quantiles(QS, of="features.age", alpha=ALPHA),
                                lambda g: sample_quantiles(g.ages), within_alpha),
    "age_variance": prediction(lambda: ops.Moments(of="features.age"), lambda g: variance(g.ages), close_variance,
                               finalize=lambda m: m.variance),
}

REGRESSION = {
    **COMMON,
    "mae": pair(ops.MAE, lambda g: float(skm.mean_absolute_error(g.y_true, g.y_pred))),
    "mse": pair(ops.MSE, lambda g: float(skm.mean_squared_error(g.y_true, g.y_pred))),
    "rmse": pair(ops.RMSE, lambda g: float(skm.root_mean_squared_error(g.y_true, g.y_pred))),
    "mean_error": pair(ops.MeanError, lambda g: float(np.mean(g.y_pred - g.y_true))),
    "r2": pair(ops.R2, r2),
    "prediction_quantiles": prediction(lambda: ops.Quantiles(QS, of="prediction", alpha=ALPHA),
                                       lambda g: sample_quantiles(g.y_pred), within_alpha),
    "prediction_variance": prediction(lambda: ops.Moments(of="prediction"), lambda g: variance(g.y_pred),
                                      close_variance, finalize=lambda m: m.variance),
}


def name_of(key: str, basis: str) -> str:
    return key if basis == "prediction" else f"{key}_by_feedback"


# -- streams ----------------------------------------------------------------------------------------
@st.composite
def streams(draw, flavour: str):
    """Predictions with jittered times; feedback after a random delay (sometimes before its prediction
    arrives, sometimes never); duplicates of both sides; shuffled so arrival order differs from event time.
    Classification: y in {0, 1} and scores k / 1000 (some missing); regression: multiples of 1/8."""
    n = draw(st.integers(1, 60))
    events = []
    for i in range(n):
        ts = float(draw(st.integers(10, 110)))
        model = draw(st.sampled_from(["m0", "m1"]))
        if flavour == "classification":
            y, y_pred = draw(st.integers(0, 1)), draw(st.integers(0, 1))
        else:
            y = draw(st.integers(-800, 800)) / 8
            y_pred = y + draw(st.integers(-40, 40)) / 8
        pred = {"id": f"p{i}", "ts": ts, "prediction": y_pred, "model": model,
                "segment": {"version": draw(st.sampled_from(["v0", "v1"]))}}
        if draw(st.integers(0, 9)) < 8:  # multiples of 1/10 too: tied scores, and scores on calibration bin edges
            pred["score"] = draw(st.one_of(st.integers(0, 1000), st.integers(0, 10).map(lambda j: 100 * j))) / 1000
        age = draw(st.integers(0, 9))  # a number, null, an absent feature, or no features at all
        if age < 8:
            pred["features"] = {"age": draw(st.integers(18, 90))} if age < 6 else {"age": None} if age == 6 else {}
        events.append((ts, pred))
        if draw(st.integers(0, 9)) < 8:  # 20% never get feedback
            delay = float(draw(st.integers(-3, 40)))  # negative: feedback time before the prediction's
            fb = {"id": f"p{i}", "ts": ts + delay, "label": y}
            if draw(st.booleans()):
                fb["model"] = model
            events.append((ts + delay + draw(st.integers(-15, 15)), fb))  # arrival jitter: early feedback happens
            if draw(st.integers(0, 9)) == 0:
                other = 1 - y if flavour == "classification" else y + 1.0
                events.append((ts + delay + draw(st.integers(0, 50)), {**fb, "label": other}))  # duplicate
        if draw(st.integers(0, 9)) == 0:
            other = 1 - y_pred if flavour == "classification" else y_pred - 1.0
            events.append((ts + draw(st.integers(0, 50)), {**pred, "prediction": other}))  # duplicate
    events.sort(key=lambda x: x[0])
    return [e for _, e in events]


# -- the check ------------------------------------------------------------------------------------
def build_monitor(specs: dict[str, Spec], batch_size: int) -> sm.Monitor:
    monitor = sm.Monitor("builtins", windows=WINDOWS, segments=SEGMENTS, feedback_ttl=FEEDBACK_TTL,
                         prediction_ttl=PREDICTION_TTL, batch_size=batch_size, max_future_seconds=1e12)
    for key, spec in specs.items():
        for basis in spec.bases:
            spec.register(monitor, name_of(key, basis), basis)
    return monitor


def published(monitor: sm.Monitor) -> tuple[dict, dict]:
    """(values, counts): values by (metric, model, version, window), a mapping per series for multi-output
    metrics; counts by (metric, window) then (model, version)."""
    names = {t.name for t in monitor.metrics}
    values: dict[tuple, Any] = {}
    counts: dict[tuple, float] = {}
    for s in monitor.values():
        metric = s.name[len("streammon_"):]
        key = (s.labels.get("model"), s.labels.get("version"), s.labels.get("window"))
        if metric.endswith("_count") and metric[:-len("_count")] in names:
            series = counts.setdefault((metric[:-len("_count")], key[2]), {})
            assert key[:2] not in series, s
            series[key[:2]] = s.value
        elif metric in names:
            output = {k: v for k, v in s.labels.items() if k in ("quantile", "class")}
            if output:
                values.setdefault((metric, *key), {})[next(iter(output.values()))] = s.value
            else:
                assert (metric, *key) not in values, s
                values[(metric, *key)] = s.value
    return values, counts


def rows_by_series(result, spec: Spec, window, basis: str) -> dict[tuple, list[Row]]:
    """The rows a metric reads in ``window`` (None: cumulative), by (model, segment) series."""
    by_series: dict[tuple, list[Row]] = {}
    for r in result.select(spec.stream, window, basis):
        if r.score is not None or not spec.needs_score:
            by_series.setdefault((r.model, r.segment[0]), []).append(r)
    return by_series


def check_against_oracle(specs: dict[str, Spec], events: list[dict], batch_size: int) -> None:
    monitor = build_monitor(specs, batch_size)
    monitor.replay(events)
    result = run_oracle(events, feedback_ttl=FEEDBACK_TTL, prediction_ttl=PREDICTION_TTL, segments=SEGMENTS)
    values, counts = published(monitor)
    assert {(n, w, m, v) for n, m, v, w in values} <= {(*nw, *mv) for nw, c in counts.items() for mv in c}, \
        "every value series has its _count"
    groups: dict[tuple, Group] = {}  # rows (by identity) -> Group, shared across windows and bases
    with sklearn.config_context(skip_parameter_validation=True):
        for key, spec in specs.items():
            for basis in spec.bases:
                name = name_of(key, basis)
                ever = set(rows_by_series(result, spec, None, basis))
                for window in WINDOWS:
                    spec_window = None if isinstance(window, sm.Cumulative) else window
                    by_series = rows_by_series(result, spec, spec_window, basis)
                    where = (name, window.label)
                    series = counts.get(where, {})
                    # A series is published in every window once it has had a row, whatever the batch cuts.
                    assert series.keys() == ever, where
                    # Every series with rows in the window is published with its count; no other has rows.
                    assert {k: c for k, c in series.items() if c} == {k: len(g) for k, g in by_series.items()}, where
                    for k, c in series.items():
                        if not c:  # an emptied window shows NaN (no sample for a mapping), never a stale number
                            assert exactly(values.get((name, *k, window.label)), math.nan), (where, k)
                    for k, rows_k in by_series.items():
                        group = groups.setdefault(tuple(map(id, rows_k)), Group(rows_k))
                        if spec.oracle not in group.memo:
                            group.memo[spec.oracle] = spec.oracle(group)
                        expected = group.memo[spec.oracle]
                        got = values.get((name, *k, window.label))
                        assert spec.agree(got, expected), (where, k, got, expected, batch_size)


PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.slow
@PROPERTY
@given(events=streams("classification"), batch_size=st.sampled_from([1, 3, 17, 4096]))
def test_classification_and_distribution_builtins_equal_the_oracle(events, batch_size):
    check_against_oracle(CLASSIFICATION, events, batch_size)


@pytest.mark.slow
@PROPERTY
@given(events=streams("regression"), batch_size=st.sampled_from([1, 3, 17, 4096]))
def test_regression_builtins_equal_the_oracle(events, batch_size):
    check_against_oracle(REGRESSION, events, batch_size)


def test_every_built_in_operator_is_covered():
    covered = {type(spec.make()) for specs in (CLASSIFICATION, REGRESSION) for spec in specs.values()}
    exported = [getattr(ops, n) for n in ops.__all__]
    built_ins = {c for c in exported if isinstance(c, type) and issubclass(c, ops.Statistic) and c is not ops.Statistic}
    assert built_ins - covered == set()
    assert 0 < COARSE_KS_BOUND < 0.5  # the coarse KS is a real approximation, with an informative bound
