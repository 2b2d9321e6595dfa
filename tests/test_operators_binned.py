"""ROCAUC's sparse cells against the dense computation it replaced and scikit-learn; its memory; old pickles."""

import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

import streammon as sm
from streammon import operators as ops


class DenseAUC:
    """What ROCAUC computed before its state went sparse: counts per class in bins + 1 dense cells."""

    def __init__(self, bins, pos=None, neg=None):
        self.pos = np.zeros(bins + 1, dtype=np.int64) if pos is None else np.asarray(pos, dtype=np.int64)
        self.neg = np.zeros(bins + 1, dtype=np.int64) if neg is None else np.asarray(neg, dtype=np.int64)
        self.bins = bins

    def add(self, rows, sign=1):
        for y, s in rows:
            (self.pos if y == 1 else self.neg)[round(s * self.bins)] += sign

    def pairs(self):
        pos, neg = self.pos.astype(np.float64), self.neg.astype(np.float64)
        n_pairs = pos.sum() * neg.sum()
        if not n_pairs:
            return None
        neg_below = np.cumsum(neg) - neg
        return float((pos * neg_below).sum()), float((pos * neg).sum()), float(n_pairs)

    def get(self):
        p = self.pairs()
        return math.nan if p is None else (p[0] + 0.5 * p[1]) / p[2]

    def error_bound(self):
        p = self.pairs()
        return math.nan if p is None else 0.5 * p[1] / p[2]


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def agrees(op, rows, bins):
    """op equals the dense computation on ``rows`` exactly, and scikit-learn within its error bound."""
    dense = DenseAUC(bins)
    dense.add(rows)
    assert same(op.get(), dense.get())
    assert same(op.error_bound(), dense.error_bound())
    y = np.array([r[0] for r in rows])
    if len(set(y.tolist())) == 2:
        exact = skm.roc_auc_score(y, np.array([r[1] for r in rows]))
        assert abs(op.get() - exact) <= op.error_bound() + 1e-12
    # Memory follows the data: one count per occupied (cell, class), no zeros kept.
    assert op.cells == len({(round(s * bins), y) for y, s in rows}) if rows else op.cells == 0
    assert np.all(op.counts != 0) and np.all(op.keys[1:] > op.keys[:-1])


BINS = st.sampled_from([1, 3, 10, 1000, 10_000])


def scores(bins):
    # Multiples of 1/bins (exact, and ties), arbitrary probabilities, and the ends.
    return st.one_of(st.integers(0, bins).map(lambda c: c / bins), st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0]))


def rows_of(bins, max_size=30):
    return st.lists(st.tuples(st.integers(0, 1), scores(bins)), max_size=max_size)


def columns(rows):
    return np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), bins=BINS)
def test_sparse_roc_auc_equals_the_dense_computation_through_any_sequence(data, bins):
    op, own = ops.ROCAUC(bins=bins), []  # own: the rows op was updated with, which a later step may revert
    partials = []  # operators merged into op, with their rows, which a later step may subtract
    for step in data.draw(st.lists(st.sampled_from(["update_many", "update", "revert", "merge", "subtract", "pickle"]),
                                   min_size=1, max_size=12)):
        if step == "update_many":
            rows = data.draw(rows_of(bins))
            op.update_many(*columns(rows))
            own += rows
        elif step == "update":
            row = data.draw(st.tuples(st.integers(0, 1), scores(bins)))
            op.update(*row)
            own.append(row)
        elif step == "revert" and own:
            op.revert(*own.pop(data.draw(st.integers(0, len(own) - 1))))
        elif step == "merge":
            rows = data.draw(rows_of(bins))
            other = ops.ROCAUC(bins=bins)
            other.update_many(*columns(rows))
            if data.draw(st.booleans()):
                other = pickle.loads(pickle.dumps(other))  # a partial read back from a checkpoint
            before = (other.keys.copy(), other.counts.copy())
            op.merge(other)
            assert np.array_equal(other.keys, before[0]) and np.array_equal(other.counts, before[1])  # nothing shared
            partials.append((other, rows))
        elif step == "subtract" and partials:
            other, _ = partials.pop(data.draw(st.integers(0, len(partials) - 1)))
            op.subtract(other)
        elif step == "pickle":
            op = pickle.loads(pickle.dumps(op, protocol=pickle.HIGHEST_PROTOCOL))
        agrees(op, own + [row for _, rows in partials for row in rows], bins)


@given(rows=rows_of(1000, max_size=60), cut=st.integers(0, 60))
@settings(max_examples=100, deadline=None)
def test_merge_of_two_halves_equals_the_whole_and_subtract_gives_a_half_back(rows, cut):
    a, b, whole = ops.ROCAUC(bins=1000), ops.ROCAUC(bins=1000), ops.ROCAUC(bins=1000)
    a.update_many(*columns(rows[:cut]))
    b.update_many(*columns(rows[cut:]))
    whole.update_many(*columns(rows))
    merged = ops.ROCAUC(bins=1000)
    merged.merge(a)
    merged.merge(b)
    assert np.array_equal(merged.keys, whole.keys) and np.array_equal(merged.counts, whole.counts)
    merged.subtract(b)
    assert np.array_equal(merged.keys, a.keys) and np.array_equal(merged.counts, a.counts)


def test_a_state_holds_its_distinct_cells_not_its_bins():
    rng = np.random.default_rng(0)
    ten = np.arange(1, 11) / 11  # 10 distinct scores, in 10 distinct cells of 10,001
    s = ten[rng.integers(0, 10, 5000)]
    y = (rng.random(5000) < s).astype(np.int64)
    op = ops.ROCAUC()
    op.update_many(y, s)
    assert op.cells == len(set(zip(np.rint(s * 10_000).tolist(), y.tolist()))) <= 20
    assert op.keys.nbytes + op.counts.nbytes <= 20 * 4  # a 2-byte key and a count of 2 bytes (up to 32,767) each
    # What leaves frees its cells: reverting every pair of the first score leaves 9 scores' cells.
    for yt, st_ in zip(y[s == ten[0]].tolist(), s[s == ten[0]].tolist()):
        op.revert(yt, st_)
    assert op.cells <= 18 and not np.any(op.keys >> 1 == round(ten[0] * 10_000))
    assert ops.ROCAUC().cells == 0


def test_sliding_panes_hold_their_distinct_cells():
    rng = np.random.default_rng(1)
    events = []
    for i in range(1200):  # 20 minutes, 1 pair a second, 10 distinct scores
        score = float(rng.integers(1, 11)) / 11
        events.append({"id": f"p{i}", "ts": float(i), "prediction": int(score >= 0.5), "score": score})
        events.append({"id": f"p{i}", "ts": i + 0.5, "label": int(rng.random() < score)})
    monitor = sm.Monitor("t", windows=[sm.Sliding("1d", step="1m")])
    monitor.track(ops.ROCAUC(), name="auc")
    monitor.replay(events)
    [(_, [state])] = monitor._engine.metrics
    [panes] = state.panes.values()
    assert len(panes) >= 20
    assert all(0 < op.cells <= 20 for op, _ in panes.values())
    [(total, _)] = state.totals.values()
    assert 0 < total.cells <= 20


def test_bins_must_match_to_combine():
    a, b = ops.ROCAUC(bins=10), ops.ROCAUC(bins=20)
    b.update(1, 0.5)
    with pytest.raises(ValueError, match="different bins"):
        a.merge(b)


# -- pickles written before the sparse state and the move to streammon.operators.binned -------------------
def written_before(class_name, state):
    """The bytes an earlier version pickled: the class named as streammon.operators.classification.<name>
    (where it was defined then), built from the state its __getstate__ returned."""
    head = b"\x80\x02cstreammon.operators.classification\n" + class_name.encode() + b"\n)\x81"
    return head + pickle.dumps(state, protocol=2)[2:-1] + b"b."


DENSE_POS, DENSE_NEG = [0, 1, 0, 1, 1], [1, 0, 2, 1, 0]
OLD_ROC = {
    "dense": ({"pos_label": 1, "bins": 4, "pos": np.array(DENSE_POS), "neg": np.array(DENSE_NEG)},
              DenseAUC(4, DENSE_POS, DENSE_NEG)),
    "sparse": ({"pos_label": 1, "bins": 20, "_sparse": (21, np.array([2, 4, 7], dtype=np.int32),
                                                         {"pos": np.array([1, 0, 1]), "neg": np.array([0, 1, 0])})},
               DenseAUC(20, np.bincount([2, 7], minlength=21), np.bincount([4], minlength=21))),
    "empty": ({"pos_label": 1, "bins": 20, "pos": None, "neg": None}, DenseAUC(20)),
}


@pytest.mark.parametrize("kind", OLD_ROC)
def test_roc_auc_pickled_by_earlier_versions_loads_and_goes_on(kind):
    state, dense = OLD_ROC[kind]
    op = pickle.loads(written_before("ROCAUC", state))
    assert type(op) is ops.ROCAUC and op.bins == state["bins"]
    assert same(op.get(), dense.get()) and same(op.error_bound(), dense.error_bound())
    assert op.cells == int(np.count_nonzero(dense.pos) + np.count_nonzero(dense.neg))
    rows = [(1, 0.5), (0, 0.25), (0, 1.0)]
    op.update_many(*columns(rows))
    dense.add(rows)
    other = pickle.loads(written_before("ROCAUC", state))
    op.merge(other)
    op.subtract(other)
    assert same(op.get(), dense.get()) and same(op.error_bound(), dense.error_bound())
    again = pickle.loads(pickle.dumps(op))
    assert same(again.get(), dense.get())


def test_calibration_pickled_by_earlier_versions_loads():
    edges = np.linspace(0.0, 1.0, 11)
    sparse = {"pos_label": 1, "bins": 10, "edges": edges, "_sparse": (
        10, np.array([1, 2], dtype=np.int32),
        {"count": np.array([1, 1]), "positives": np.array([1, 0]), "score_sum": np.array([0.1, 0.2])})}
    empty = {"pos_label": 1, "bins": 10, "edges": edges, "count": None, "positives": None, "score_sum": None}
    expected = ops.Calibration()
    expected.update_many(np.array([1, 0]), np.array([0.1, 0.2]))
    op = pickle.loads(written_before("Calibration", sparse))
    assert type(op) is ops.Calibration and op.get() == expected.get()
    op.update(1, 0.9)
    expected.update(1, 0.9)
    assert op.get() == expected.get()
    fresh = pickle.loads(written_before("Calibration", empty))
    assert math.isnan(fresh.get())
    fresh.merge(op)
    assert fresh.get() == expected.get()


def test_the_old_module_still_names_the_binned_operators():
    from streammon.operators import binned, classification

    assert classification.ROCAUC is binned.ROCAUC is ops.ROCAUC
    assert classification.Calibration is binned.Calibration is ops.Calibration
    with pytest.raises(AttributeError):
        _ = classification.NoSuchOperator
