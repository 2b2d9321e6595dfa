"""Class distribution, null rate and mean score against numpy recomputed from scratch, plus the operator laws."""

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streammon as sm
from streammon import operators as ops
from streammon.testing import check_operator


def objects(values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def shares(values):
    """Oracle: share of each class among the present values, keyed as the operator documents."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    keys = [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in present]
    return {k: c / len(keys) for k, c in Counter(keys).items()} if keys else math.nan


def null_rate(values):
    return sum(v is None or (isinstance(v, float) and math.isnan(v)) for v in values) / len(values) if values else math.nan


def same(x, y):
    if isinstance(x, float) or isinstance(y, float):
        return isinstance(x, float) and isinstance(y, float) and (x == y or (math.isnan(x) and math.isnan(y)))
    return x.keys() == y.keys() and all(math.isclose(x[k], y[k], rel_tol=1e-12) for k in x)


classes = st.one_of(st.sampled_from(["cat", "dog", "eel"]), st.integers(0, 3), st.sampled_from([1.0, 2.5, float("nan")]), st.none(), st.booleans())
features = st.one_of(st.none(), st.just(float("nan")), st.floats(-10, 10), st.integers(0, 5), st.sampled_from(["a", "b"]))


@settings(max_examples=100, deadline=None)
@given(st.lists(classes, max_size=30), st.lists(classes, max_size=30))
def test_class_distribution_laws(a, b):
    check_operator(ops.ClassDistribution, (objects(a),), (objects(b),), oracle=lambda column: shares(list(column)), close=same,
                   empty=math.nan)


@settings(max_examples=100, deadline=None)
@given(st.lists(features, max_size=30), st.lists(features, max_size=30))
def test_null_rate_laws(a, b):
    check_operator(lambda: ops.NullRate("features.x"), (objects(a),), (objects(b),),
                   oracle=lambda column: null_rate(list(column)), close=same, empty=math.nan)


@pytest.mark.parametrize("dtype", [np.int64, np.float64])
def test_numeric_columns_count_like_objects(dtype):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 4, 500).astype(dtype)
    by_array, by_objects = ops.ClassDistribution(), ops.ClassDistribution()
    by_array.update_many(xs)
    by_objects.update_many(objects(xs.tolist()))
    assert by_array.get() == by_objects.get() == shares(xs.tolist())
    rate = ops.NullRate("features.x")
    rate.update_many(xs)
    assert rate.get() == 0.0


def test_integral_floats_and_ints_name_the_same_class():
    d = ops.ClassDistribution()
    d.update_many(np.array([1, 2]))
    d.update_many(np.array([1.0, 2.5]))
    assert d.get() == {"1": 0.5, "2": 0.25, "2.5": 0.25}


def test_float_nan_counts_as_null_in_numeric_columns():
    rate = ops.NullRate("features.x")
    rate.update_many(np.array([1.0, np.nan, 3.0, np.nan]))
    assert rate.get() == 0.5
    assert ops.NullRate.accepts_missing is True


def test_label_distribution_reads_feedback_and_mean_score_reads_scores():
    assert ops.LabelDistribution().of == "label" and ops.LabelDistribution.output_label == "class"
    assert isinstance(ops.MeanScore(), ops.Mean) and ops.MeanScore().of == "score"
    m = ops.MeanScore()
    xs = np.random.default_rng(2).uniform(size=100)
    m.update_many(xs)
    assert math.isclose(m.get(), float(np.mean(xs)), rel_tol=1e-12)
    assert type(m.clone()) is ops.MeanScore


def test_update_many_that_raises_changes_nothing():
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no name")

    check_operator(ops.ClassDistribution, (np.array([1, 2, 2]),), (np.array([3]),), bad=[(objects([3, Unprintable()]),)],
                   raises=RuntimeError, close=same, empty=math.nan)


def test_distributions_through_the_monitor():
    rng = np.random.default_rng(6)
    n = 400
    preds = rng.choice(["low", "mid", "high"], n, p=[0.5, 0.3, 0.2])
    truth = rng.choice(["low", "mid", "high"], n)
    ages = [None if rng.uniform() < 0.2 else int(rng.integers(18, 90)) for _ in range(n)]
    scores = rng.uniform(size=n)
    events = []
    for i in range(n):
        features = {} if i % 7 == 0 else {"age": ages[i]}  # an absent feature is missing too
        events.append({"id": f"p{i}", "ts": i, "prediction": str(preds[i]), "score": float(scores[i]), "features": features})
        events.append({"id": f"p{i}", "ts": i + 0.5, "label": str(truth[i])})
    m = sm.Monitor("t", windows=[sm.Cumulative()])
    m.track(ops.ClassDistribution())
    m.track(ops.LabelDistribution())
    m.track(ops.NullRate("features.age"), name="age_null_rate")
    m.track(ops.MeanScore())
    m.replay(events)
    for name, values in (("class_distribution", preds), ("label_distribution", truth)):
        for key, share in shares(values.tolist()).items():
            assert math.isclose(m.value(name, **{"class": key}), share, rel_tol=1e-12)
    ages_seen = [None if i % 7 == 0 else ages[i] for i in range(n)]
    assert math.isclose(m.value("age_null_rate"), null_rate(ages_seen), rel_tol=1e-12)
    assert math.isclose(m.value("mean_score"), float(np.mean(scores)), rel_tol=1e-12)
