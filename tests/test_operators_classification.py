"""Classification operators against scikit-learn (or numpy) recomputed from scratch, plus the operator laws."""

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

import streammon as sm
from streammon import operators as ops
from streammon.testing import check_operator


def close(x, y, rel=1e-9):
    if isinstance(x, float) and math.isnan(x):
        return isinstance(y, float) and math.isnan(y)
    return math.isclose(x, y, rel_tol=rel, abs_tol=1e-12)


def objects(values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def labels(rng, n, classes):
    return np.asarray(classes)[rng.integers(0, len(classes), n)]


def binary_scores(rng, n):
    y = rng.integers(0, 2, n)
    # Scores lean towards the truth, with exact 0 and 1 among them (clipping must match sklearn).
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.25), 0.0, 1.0)
    return y, s


# -- label metrics ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_accuracy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    cols = [(labels(rng, n, [0, 1, 2]), labels(rng, n, [0, 1, 2])) for n in (300, 200)]
    check_operator(ops.Accuracy, cols[0], cols[1], oracle=lambda t, p: skm.accuracy_score(t, p), close=close, empty=math.nan)


SKLEARN = {ops.Precision: skm.precision_score, ops.Recall: skm.recall_score, ops.F1: skm.f1_score}


@pytest.mark.parametrize("cls", [ops.Precision, ops.Recall, ops.F1])
@pytest.mark.parametrize("average", ["binary", "macro", "micro", "weighted"])
@pytest.mark.parametrize("seed", range(2))
def test_label_metrics_match_sklearn(cls, average, seed):
    rng = np.random.default_rng(seed)
    classes = [0, 1] if average == "binary" else [0, 1, 2, 3]
    cols = [(labels(rng, n, classes), labels(rng, n, classes[:-1])) for n in (150, 90)]
    oracle = lambda t, p: SKLEARN[cls](t, p, average=average, zero_division=0)  # noqa: E731
    check_operator(lambda: cls(average=average), cols[0], cols[1], oracle=oracle, close=close, empty=math.nan)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["cat", "dog", "eel"]), st.sampled_from(["cat", "dog", "fox"])), min_size=1, max_size=40),
       st.sampled_from(["binary", "macro", "micro", "weighted"]), st.sampled_from([ops.Precision, ops.Recall, ops.F1]))
def test_label_metrics_on_string_classes_and_zero_division(pairs, average, cls):
    y_true, y_pred = objects([t for t, _ in pairs]), objects([p for _, p in pairs])
    op = cls(pos_label="cat", average=average)
    op.update_many(y_true, y_pred)
    if average == "binary":
        # One-vs-rest on pos_label: what sklearn gives once the other classes are folded together.
        expected = SKLEARN[cls](y_true == "cat", y_pred == "cat", zero_division=0)
    else:
        expected = SKLEARN[cls](y_true, y_pred, average=average, zero_division=0)
    assert close(op.get(), expected)


def test_average_must_be_a_choice():
    with pytest.raises(ValueError, match="average"):
        ops.F1(average="samples")


# -- probability metrics ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_log_loss_binary_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a, b = binary_scores(rng, 300), binary_scores(rng, 120)
    assert (a[1] == 0).any() and (a[1] == 1).any()
    check_operator(ops.LogLoss, a, b, oracle=lambda t, s: skm.log_loss(t, s, labels=[0, 1]), close=close, empty=math.nan)


@pytest.mark.parametrize("seed", range(3))
def test_log_loss_multiclass_maps_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c"]

    def batch(n):
        probs = rng.dirichlet([1.0, 1.0, 1.0], n)
        probs[: n // 10, 2] = 0.0  # some maps give a class no mass, and leave it out
        probs /= probs.sum(axis=1, keepdims=True)
        maps = [{c: p for c, p in zip(classes, row) if p > 0} for row in probs]
        return labels(rng, n, classes).astype(object), objects(maps)

    def oracle(y, maps):
        matrix = np.array([[m.get(c, 0.0) for c in classes] for m in maps])
        return skm.log_loss(list(y), matrix, labels=classes)

    check_operator(ops.LogLoss, batch(200), batch(80), oracle=oracle, close=close, empty=math.nan)


def test_log_loss_finds_int_classes_in_maps_with_string_keys():
    op = ops.LogLoss()
    y = np.array([0, 2, 1])
    maps = [{"0": 0.7, "1": 0.2, "2": 0.1}, {"0": 0.1, "1": 0.1, "2": 0.8}, {"0": 0.5, "1": 0.5}]
    op.update_many(y, objects(maps))
    matrix = np.array([[m.get(str(c), 0.0) for c in range(3)] for m in maps])
    assert close(op.get(), skm.log_loss(y, matrix, labels=[0, 1, 2]))


@pytest.mark.parametrize("seed", range(3))
def test_brier_score_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a, b = binary_scores(rng, 300), binary_scores(rng, 100)
    check_operator(ops.BrierScore, a, b, oracle=lambda t, s: skm.brier_score_loss(t, s, pos_label=1), close=close, empty=math.nan)


def test_brier_score_with_string_pos_label():
    rng = np.random.default_rng(7)
    y = labels(rng, 200, ["ham", "spam"]).astype(object)
    s = rng.uniform(size=200)
    op = ops.BrierScore(pos_label="spam")
    op.update_many(y, s)
    assert close(op.get(), skm.brier_score_loss(y, s, pos_label="spam"))


def shared_cell_pairs(y, s, bins):
    """Positive-negative pairs whose scores round to the same multiple of 1/bins, counted pair by pair."""
    pos = Counter(round(v * bins) for v, t in zip(s.tolist(), y.tolist()) if t == 1)
    neg = Counter(round(v * bins) for v, t in zip(s.tolist(), y.tolist()) if t != 1)
    return sum(pos[c] * neg[c] for c in pos)


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_within_the_stated_bound_of_sklearn(seed):
    rng = np.random.default_rng(seed)
    y, s = binary_scores(rng, 800)
    op = ops.ROCAUC(bins=1000)
    op.update_many(y, s)
    n_pos, n_neg = int((y == 1).sum()), int((y != 1).sum())
    bound = 0.5 * shared_cell_pairs(y, s, 1000) / (n_pos * n_neg)
    assert close(op.error_bound(), bound)
    assert 0 < bound < 0.01  # the bound is informative, not vacuous
    assert abs(op.get() - skm.roc_auc_score(y, s)) <= bound + 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_roc_auc_is_exact_on_multiples_of_one_over_bins(seed):
    rng = np.random.default_rng(seed)

    def batch(n):
        y = rng.integers(0, 2, n)
        return y, np.clip(rng.integers(0, 41, n) + 10 * y, 0, 40) / 40

    check_operator(lambda: ops.ROCAUC(bins=40), batch(300), batch(150), oracle=lambda t, s: skm.roc_auc_score(t, s), close=close, empty=math.nan)


def test_roc_auc_needs_both_classes():
    op = ops.ROCAUC()
    op.update_many(np.array([1, 1]), np.array([0.2, 0.9]))
    assert math.isnan(op.get()) and math.isnan(op.error_bound())


def ece_oracle(y, s, bins=10):
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for b in range(bins):
        inside = (s >= edges[b]) & ((s < edges[b + 1]) | (b == bins - 1))
        if inside.any():
            total += inside.sum() / len(s) * abs((y[inside] == 1).mean() - s[inside].mean())
    return total


@pytest.mark.parametrize("seed", range(3))
def test_calibration_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    a, b = binary_scores(rng, 400), binary_scores(rng, 150)
    a = (a[0], np.concatenate([a[1][:-11], np.linspace(0, 1, 11)]))  # scores on the bin edges too
    check_operator(ops.Calibration, a, b, oracle=ece_oracle, close=close, empty=math.nan)


def test_probability_operators_take_class_maps_for_pos_label():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.3, 0.6, 0.2])
    maps = objects([{"1": v, "0": 1 - v} for v in p])
    for make in (ops.BrierScore, ops.ROCAUC, ops.Calibration, ops.LogLoss):
        from_float, from_map = make(), make()
        from_float.update_many(y, p)
        from_map.update_many(y, maps)
        assert close(from_map.get(), from_float.get())


@pytest.mark.parametrize("make", [ops.Accuracy, ops.Precision, ops.F1, ops.LogLoss, ops.BrierScore, ops.ROCAUC, ops.Calibration])
def test_update_many_that_raises_changes_nothing(make):
    second = np.array([0.0, 1.0, 1.0]) if make().of == "score" else np.array([1, 1, 0])
    bad = [(np.array([1, 0]), np.array([1, 0, 1]))]  # lengths differ
    if make().of == "score":
        bad += [(np.array([1, 0]), np.array([0.5, 1.5])), (np.array([1, 0]), np.array([0.5, np.nan])),
                (np.array([1, 0]), objects([0.5, "high"]))]
    check_operator(make, (np.array([1, 0, 1]), second), (np.array([0, 1]), second[:2]), bad=bad,
                   raises=(ValueError, TypeError), close=close, empty=math.nan)


# -- through the engine -----------------------------------------------------------------------
def test_operators_through_the_monitor_match_sklearn():
    rng = np.random.default_rng(11)
    y, s = binary_scores(rng, 500)
    pred = (s >= 0.5).astype(int)
    events = []
    for i in range(len(y)):
        events.append({"id": f"p{i}", "ts": i, "prediction": int(pred[i]), "score": float(s[i])})
        events.append({"id": f"p{i}", "ts": i + 0.5, "label": int(y[i])})
    m = sm.Monitor("t", windows=[sm.Cumulative()])
    for op in (ops.Accuracy(), ops.F1(), ops.Precision(average="macro"), ops.LogLoss(), ops.BrierScore(), ops.ROCAUC(bins=1000)):
        m.track(op)
    m.replay(events)
    assert close(m.value("accuracy"), skm.accuracy_score(y, pred))
    assert close(m.value("f1"), skm.f1_score(y, pred))
    assert close(m.value("precision"), skm.precision_score(y, pred, average="macro"))
    assert close(m.value("log_loss"), skm.log_loss(y, s))
    assert close(m.value("brier_score"), skm.brier_score_loss(y, s))
    bound = 0.5 * shared_cell_pairs(y, s, 1000) / ((y == 1).sum() * (y == 0).sum())
    assert abs(m.value("rocauc") - skm.roc_auc_score(y, s)) <= bound + 1e-12


def test_sliding_window_equals_the_oracle_on_the_window_tail():
    rng = np.random.default_rng(5)
    n = 600
    ts = np.arange(n) * 0.37
    y, pred = rng.integers(0, 3, n), rng.integers(0, 3, n)
    events = sorted(
        [{"id": f"p{i}", "ts": float(ts[i]), "prediction": int(pred[i])} for i in range(n)]
        + [{"id": f"p{i}", "ts": float(ts[i]) + 0.5, "label": int(y[i])} for i in range(n)],
        key=lambda e: e["ts"],
    )
    window = sm.Sliding("30s", step="5s")
    m = sm.Monitor("t", windows=[window])
    m.track(ops.F1(average="weighted"))
    m.replay(events)
    w_end = window.end(max(e["ts"] for e in events))
    inside = (ts >= w_end - 30) & (ts < w_end)
    assert close(m.value("f1"), skm.f1_score(y[inside], pred[inside], average="weighted", zero_division=0))


@pytest.mark.parametrize("make", [ops.ROCAUC, ops.Calibration])
@pytest.mark.parametrize("n", [0, 5, 3000])
def test_binned_operators_survive_pickling_sparse_or_dense_and_merge_as_loaded(make, n):
    import pickle
    rng = np.random.default_rng(n)
    y, s = binary_scores(rng, n)
    whole, half_a, half_b = make(), make(), make()
    if n:
        whole.update_many(y, s)
        half_a.update_many(y[: n // 2], s[: n // 2])
        half_b.update_many(y[n // 2:], s[n // 2:])
    # As a checkpoint or scale-out partial is read back: merged while still as loaded, or used directly.
    merged = make()
    merged.merge(pickle.loads(pickle.dumps(half_a)))
    merged.merge(pickle.loads(pickle.dumps(half_b)))
    used = pickle.loads(pickle.dumps(whole))
    for got in (merged, used, pickle.loads(pickle.dumps(pickle.loads(pickle.dumps(whole))))):
        assert close(got.get(), whole.get()) or (math.isnan(got.get()) and math.isnan(whole.get()))
    if n:  # a loaded operator keeps learning, and a loaded one can be subtracted
        used.update_many(y, s)
        twice = make()
        twice.update_many(np.concatenate([y, y]), np.concatenate([s, s]))
        assert close(used.get(), twice.get())
        used.subtract(pickle.loads(pickle.dumps(whole)))
        assert close(used.get(), whole.get())
