"""PSI and KS against numpy / scipy recomputed from scratch; the reference loader on real files."""

import math
import warnings
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import streammon as sm
from streammon import operators as ops
from streammon.testing import check_operator


def psi_oracle(reference, window, bins=10, eps=1e-4):
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    # np.histogram bins are [e_i, e_i+1) except the last, which ends at +inf here: the documented rule.
    cut = np.concatenate([[-np.inf], edges, [np.inf]])
    expected = np.histogram(reference, cut)[0] / len(reference)
    actual = np.histogram(window, cut)[0] / len(window)
    a, e = np.maximum(actual, eps), np.maximum(expected, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_oracle(reference, window):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's p-value on tiny samples; D is unaffected
        return float(stats.ks_2samp(window, reference).statistic)


def close(x, y):
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("bins", [5, 10, 20])
def test_psi_matches_numpy(seed, bins):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 1, 2000)
    a, b = rng.normal(0.3, 1.2, 400), rng.normal(-0.5, 0.7, 150)
    check_operator(lambda: ops.PSI(ref, bins=bins), (a,), (b,), oracle=lambda w: psi_oracle(ref, w, bins), close=close,
                   empty=math.nan)


def test_psi_with_a_tied_reference_and_empty_bins():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 4, 1000).astype(float)  # quantile edges repeat: they are deduplicated
    psi = ops.PSI(ref, bins=10)
    assert len(psi.edges) < 9
    window = np.full(50, 2.0)  # all in one bin: the others are floored at eps
    psi.update_many(window)
    assert close(psi.get(), psi_oracle(ref, window))
    assert psi.get() > 1.0


def test_psi_puts_values_on_an_edge_in_the_bin_above():
    ref = np.arange(101.0)  # quartiles are exactly 25, 50, 75
    window = np.array([25.0, 25.0, 25.0, 50.0, 50.0, 60.0, 75.0, 100.0])
    psi = ops.PSI(ref, bins=4)
    assert np.array_equal(psi.edges, [25.0, 50.0, 75.0])
    psi.update_many(window)
    assert close(psi.get(), psi_oracle(ref, window, bins=4))


def test_psi_is_zero_for_the_reference_itself():
    ref = np.random.default_rng(2).lognormal(size=500)
    psi = ops.PSI(ref)
    psi.update_many(ref)
    assert abs(psi.get()) < 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_ks_is_exact_when_every_reference_value_is_a_cut(seed):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 1, 500)
    a, b = rng.normal(0.2, 1, 300), rng.normal(0, 2, 100)
    check_operator(lambda: ops.KS(ref), (a,), (b,), oracle=lambda w: ks_oracle(ref, w), close=close, empty=math.nan)
    op = ops.KS(ref)
    op.update_many(a)
    assert op.error_bound == 0.0


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=40), st.lists(st.integers(-7, 7), min_size=1, max_size=40),
       st.lists(st.floats(-10, 10), min_size=0, max_size=10))
def test_ks_on_ties_and_values_beyond_the_reference(ref, window, extra):
    window = np.array(window + extra, dtype=float)
    ks = ops.KS(np.array(ref, dtype=float))
    ks.update_many(window)
    assert close(ks.get(), ks_oracle(np.array(ref, dtype=float), window))


@pytest.mark.parametrize("seed", range(4))
def test_ks_with_few_cut_points_is_within_its_error_bound(seed):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 1, 5000)
    window = rng.normal(0.1 * seed, 1, 700)
    ks = ops.KS(ref, cut_points=100)
    ks.update_many(window)
    # The bound recomputed from its definition: the largest reference share strictly between two cuts.
    cuts = ks.cuts
    between = max(((ref > lo) & (ref < hi)).sum() for lo, hi in pairwise(cuts)) / len(ref)
    assert cuts[0] == ref.min() and cuts[-1] == ref.max() and len(cuts) <= 100
    assert close(ks.error_bound, between) and 0 < between <= 1.5 / 100
    exact = ks_oracle(ref, window)
    assert ks.get() <= exact + 1e-12 and exact - ks.get() <= ks.error_bound + 1e-12


def test_clone_shares_the_fitted_reference_and_starts_empty():
    ref = np.random.default_rng(0).uniform(size=300)
    for op in (ops.PSI(ref, of="features.age", bins=4), ops.KS(ref, of="features.age", cut_points=50)):
        op.update_many(ref[:10])
        fresh = op.clone()
        assert fresh.of == "features.age" and fresh.n == 0 and op.n == 10
        fitted = "edges" if isinstance(op, ops.PSI) else "cuts"
        assert np.array_equal(getattr(fresh, fitted), getattr(op, fitted))


@pytest.mark.parametrize("make", [lambda r: ops.PSI(r), lambda r: ops.KS(r)])
def test_missing_values_are_skipped_and_bad_values_change_nothing(make):
    op = make(np.arange(100.0))
    with_missing = np.array([1.0, None, 50.0, float("nan")], dtype=object)
    op.update_many(with_missing)
    assert op.n == 2
    bad = [(np.array([1.0, np.inf]),), (np.array([1.0, "x"], dtype=object),)]
    check_operator(lambda: make(np.arange(100.0)), (with_missing,), (np.array([3.0]),), bad=bad, raises=(ValueError, TypeError), close=close,
                   empty=math.nan)


def test_a_reference_without_numbers_is_refused():
    for make in (ops.PSI, ops.KS):
        with pytest.raises(ValueError, match="reference"):
            make([None, float("nan")])


def test_differently_fitted_operators_do_not_combine():
    a, b = ops.KS(np.arange(10.0)), ops.KS(np.arange(20.0))
    with pytest.raises(ValueError):
        a.merge(b)


def test_load_reference_reads_parquet_and_csv(tmp_path):
    rng = np.random.default_rng(4)
    values = rng.normal(size=200)
    column = pa.array([None if i % 17 == 0 else float(v) for i, v in enumerate(values)], type=pa.float64())
    table = pa.table({"score": column, "other": pa.array(range(200))})
    pq.write_table(table, tmp_path / "ref.parquet")
    pcsv.write_csv(table, tmp_path / "ref.csv")
    expected = np.array([float(v) for i, v in enumerate(values) if i % 17])
    for name in ("ref.parquet", "ref.csv"):
        got = ops.load_reference(tmp_path / name, "score")
        assert got.dtype == np.float64 and np.allclose(got, expected, rtol=1e-15, atol=0)
    psi_file, psi_array = ops.PSI(ops.load_reference(tmp_path / "ref.parquet", "score")), ops.PSI(expected)
    assert np.array_equal(psi_file.edges, psi_array.edges)
    with pytest.raises(KeyError, match="other"):
        ops.load_reference(tmp_path / "ref.parquet", "scores")
    with pytest.raises(KeyError, match="other"):
        ops.load_reference(tmp_path / "ref.csv", "scores")
    (tmp_path / "ref.txt").write_text("score\n1\n")
    with pytest.raises(ValueError, match="parquet"):
        ops.load_reference(tmp_path / "ref.txt", "score")


def test_drift_through_the_monitor_matches_scipy_and_numpy():
    rng = np.random.default_rng(12)
    ref = rng.beta(2, 5, 1000)
    scores = rng.beta(3, 4, 600)
    ages = rng.normal(40, 10, 600)
    events = [{"id": f"p{i}", "ts": i, "prediction": 1, "score": float(scores[i]), "features": {"age": float(ages[i])}}
              for i in range(len(scores))]
    m = sm.Monitor("t", windows=[sm.Cumulative()])
    m.track(ops.PSI(ref))
    m.track(ops.KS(ref))
    age_ref = rng.normal(45, 10, 300)
    m.track(ops.KS(age_ref, of="features.age"), name="age_ks")
    m.replay(events)
    assert close(m.value("psi"), psi_oracle(ref, scores))
    assert close(m.value("ks"), ks_oracle(ref, scores))
    assert close(m.value("age_ks"), ks_oracle(age_ref, ages))
