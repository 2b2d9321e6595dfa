"""The quantile sketch against the sorted sample: the DDSketch bound across data, merges and subtractions."""

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streammon as sm
from streammon import operators as ops
from streammon.testing import check_operator


def true_quantile(values, q):
    """The rank the sketch documents: 0-based floor(q * (n - 1)) in sorted order."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    return ordered[math.floor(q * (len(ordered) - 1))]


def within_bound(estimate, true, alpha):
    return abs(estimate - true) <= alpha * abs(true) * (1 + 1e-9)


def same_buckets(a, b):
    return (a.zeros == b.zeros
            and all(x.offset == y.offset and np.array_equal(x.counts, y.counts)
                    for x, y in ((a.positive, b.positive), (a.negative, b.negative))))


magnitudes = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False)
values = st.one_of(magnitudes, magnitudes.map(lambda v: -v), st.just(0.0), st.integers(-1000, 1000).map(float))
samples = st.lists(values, min_size=1, max_size=80)
probabilities = st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=5)
alphas = st.sampled_from([0.001, 0.01, 0.05])


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(samples, probabilities, alphas)
def test_every_quantile_is_within_alpha_of_the_sample_quantile(xs, qs, alpha):
    sketch = ops.QuantileSketch(alpha=alpha)
    sketch.update_many(np.array(xs))
    assert sketch.n == len(xs)
    for q in qs:
        assert within_bound(sketch.quantile(q), true_quantile(xs, q), alpha)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(samples, samples, probabilities, alphas)
def test_merge_and_subtract_are_exact_on_buckets(xs, ys, qs, alpha):
    a, b, whole = ops.QuantileSketch(alpha), ops.QuantileSketch(alpha), ops.QuantileSketch(alpha)
    a.update_many(np.array(xs))
    b.update_many(np.array(ys))
    whole.update_many(np.array(xs + ys))
    merged = ops.QuantileSketch(alpha)
    merged.merge(a)
    merged.merge(b)
    assert same_buckets(merged, whole)
    for q in qs:
        assert within_bound(merged.quantile(q), true_quantile(xs + ys, q), alpha)
    merged.subtract(b)
    assert same_buckets(merged, a)
    for q in qs:
        assert within_bound(merged.quantile(q), true_quantile(xs, q), alpha)


@settings(max_examples=60, deadline=None)
@given(st.lists(samples, min_size=2, max_size=8), st.data())
def test_a_sliding_sequence_of_panes_keeps_the_bound(panes, data):
    # Add panes one by one and evict the oldest ones, as a sliding window does.
    total = ops.QuantileSketch()
    sketches = []
    for xs in panes:
        s = ops.QuantileSketch()
        s.update_many(np.array(xs))
        sketches.append(s)
        total.merge(s)
    evicted = data.draw(st.integers(0, len(panes) - 1))
    for s in sketches[:evicted]:
        total.subtract(s)
    left = [x for xs in panes[evicted:] for x in xs]
    q = data.draw(st.floats(0.0, 1.0))
    assert total.n == len(left)
    assert within_bound(total.quantile(q), true_quantile(left, q), 0.01)


def test_update_per_event_equals_update_many_and_revert_restores():
    rng = np.random.default_rng(4)
    xs = np.concatenate([rng.lognormal(0, 3, 300), -rng.lognormal(0, 1, 50), np.zeros(10)])
    batch, events = ops.QuantileSketch(), ops.QuantileSketch()
    batch.update_many(xs)
    for x in xs:
        events.update(x)
    assert same_buckets(batch, events)
    extra = rng.normal(0, 100, 40)
    for x in extra:
        events.update(x)
    for x in extra:
        events.revert(x)
    assert same_buckets(batch, events)
    assert events.get() == batch.get()


def test_pickle_clone_and_empty():
    s = ops.Quantiles([0.1, 0.5], of="features.age", alpha=0.02)
    for op in (s, ops.QuantileSketch()):  # the laws: empty is NaN, pickle round trip, clone is empty, ...
        check_operator(op, (np.arange(1.0, 50.0),), (np.arange(-5.0, 5.0),), empty=math.nan)
    s.update_many(np.arange(1.0, 50.0))
    assert pickle.loads(pickle.dumps(s)).get() == s.get()  # exactly
    fresh = s.clone()
    assert type(fresh) is ops.Quantiles and fresh._params() == {"qs": [0.1, 0.5], "of": "features.age", "alpha": 0.02}
    assert fresh.n == 0 and math.isnan(fresh.get())


def test_quantiles_publishes_one_value_per_q_with_a_quantile_label():
    rng = np.random.default_rng(1)
    xs = rng.exponential(5.0, 1000)
    qs = ops.Quantiles([0.5, 0.9, 0.99])
    qs.update_many(xs)
    got = qs.get()
    assert ops.Quantiles.output_label == "quantile" and list(got) == ["0.5", "0.9", "0.99"]
    for key, value in got.items():
        assert within_bound(value, true_quantile(xs, float(key)), 0.01)


def test_missing_values_are_skipped_and_bad_values_change_nothing():
    s = ops.QuantileSketch()
    s.update_many(np.array([1.0, None, 3.0, float("nan")], dtype=object))
    s.update(None)
    assert s.n == 2
    bad = [(np.array([1.0, np.inf]),), (np.array([1.0, "x"], dtype=object),), (np.array([True, 1.0], dtype=object),)]
    check_operator(ops.QuantileSketch, (np.array([1.0, None, 3.0, float("nan")], dtype=object),), (np.array([2.0]),),
                   bad=bad, raises=(ValueError, TypeError), empty=math.nan)


def test_sketches_with_different_alpha_do_not_combine():
    a, b = ops.QuantileSketch(0.01), ops.QuantileSketch(0.02)
    b.update(1.0)
    with pytest.raises(ValueError, match="alpha"):
        a.merge(b)


def test_memory_follows_the_log_range_of_the_data():
    s = ops.QuantileSketch(alpha=0.01)
    s.update_many(np.geomspace(1e-3, 1e6, 100_000))
    expected = math.log(1e9) / math.log(s.gamma)
    assert len(s.positive.counts) <= expected + 2
    small = ops.QuantileSketch(alpha=0.01)
    small.update_many(np.array([1.0, 2.0]))
    s.merge(small)
    whole = pickle.loads(pickle.dumps(s))
    whole.subtract(s)
    assert whole.n == 0 and len(whole.positive.counts) == 0  # an emptied window holds no buckets


def test_quantiles_through_a_sliding_window_keep_the_bound():
    rng = np.random.default_rng(8)
    n = 800
    ts = np.arange(n) * 0.2
    scores = rng.beta(2, 5, n)
    events = [{"id": f"p{i}", "ts": float(ts[i]), "prediction": 1, "score": float(scores[i])} for i in range(n)]
    window = sm.Sliding("30s", step="5s")
    m = sm.Monitor("t", windows=[window])
    m.track(ops.Quantiles([0.5, 0.9], of="score"), name="score_quantiles")
    m.replay(events)
    w_end = window.end(ts.max())
    inside = scores[(ts >= w_end - 30) & (ts < w_end)]
    for q in (0.5, 0.9):
        assert within_bound(m.value("score_quantiles", quantile=str(q)), true_quantile(inside, q), 0.01)


def test_feedback_delay_through_the_monitor():
    rng = np.random.default_rng(3)
    n = 300
    delays = rng.exponential(600.0, n)
    events = []
    for i in range(n):
        events.append({"id": f"p{i}", "ts": float(i), "prediction": 1})
        events.append({"id": f"p{i}", "ts": float(i + delays[i]), "label": 1})
    m = sm.Monitor("t", windows=[sm.Cumulative()])
    m.track(ops.FeedbackDelay([0.5, 0.99]))
    m.replay(sorted(events, key=lambda e: e["ts"]))
    delay = np.array([e["ts"] for e in events if "label" in e]) - np.arange(n)
    for q in (0.5, 0.99):
        assert within_bound(m.value("feedback_delay_seconds", quantile=str(q)), true_quantile(delay, q), 0.01)
