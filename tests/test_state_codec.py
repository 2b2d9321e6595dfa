"""Operator state as data (streammon.state_codec): every operator's state survives the trip exactly, and bytes
that do not fit the reader's operator are refused with the reason, never run."""

from __future__ import annotations

import math
import pickle
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import metrics as river_metrics
from river import stats as river_stats

import streammon as sm
from streammon import operators as ops
from streammon.scaleout.partials import _window_partials
from streammon.state_codec import StateShapeError, decode_state, encode_state
from tests.test_engine_properties import METRICS, streams

EVERY_BUILT_IN = {
    "accuracy": ops.Accuracy(), "precision": ops.Precision(), "recall": ops.Recall(), "f1": ops.F1(),
    "log_loss": ops.LogLoss(), "brier": ops.BrierScore(), "roc_auc": ops.ROCAUC(), "calibration": ops.Calibration(),
    "mae": ops.MAE(), "mse": ops.MSE(), "rmse": ops.RMSE(), "mean_error": ops.MeanError(), "r2": ops.R2(),
    "cm": ops.ConfusionMatrix(), "delay": ops.FeedbackDelay([0.5, 0.99]),
}
BY_PREDICTION = {
    "count": ops.Count(of="prediction"), "mean_score_builtin": ops.MeanScore(), "moments": ops.Moments(of="score"),
    "quantiles": ops.Quantiles([0.1, 0.5, 0.9], of="score"), "sketch": ops.QuantileSketch(of="score"),
    "classes": ops.ClassDistribution(of="prediction"), "null_rate": ops.NullRate(of="score"),
    "psi": ops.PSI(reference=[0.1, 0.2, 0.3, 0.5, 0.8], of="score"), "ks": ops.KS(reference=[0.1, 0.4, 0.6, 0.9], of="score"),
    "river_mean": river_stats.Mean(), "river_var": river_stats.Var(),
}


def realistic_monitor() -> sm.Monitor:
    monitor = sm.Monitor("codec", windows=[sm.Cumulative(), sm.Sliding(40, 10)], segments=["version"], max_future_seconds=1e12)
    for name, op in EVERY_BUILT_IN.items():
        monitor.track(op, name=name)
    for name, op in BY_PREDICTION.items():
        monitor.track(op, name=name, **({"of": "score"} if name.startswith("river") else {}))
    monitor.track(ops.LabelDistribution(), name="labels")
    for register, _, _ in METRICS.values():  # user operators, finalizers, per-event functions, river metrics
        register(monitor)
    return monitor


def partial_operators(monitor: sm.Monitor):
    for tracked, states in monitor._engine.metrics:
        if not tracked.caps.merge:
            continue  # partials are of mergeable metrics only (river's Accuracy keeps events in its sliding window)
        for state in states:
            for panes in _window_partials(state).values():
                for _, op, _ in panes:
                    yield tracked, op


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def alike(a, b, where="") -> None:
    """``a`` and ``b`` are the same value all the way down: types (containers, keys, numpy scalars), attributes,
    order of mappings, array dtypes and contents; only object identity (shared references) may differ."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b], where
        if isinstance(a, defaultdict):
            assert a.default_factory == b.default_factory or pickle.dumps(a.default_factory) == pickle.dumps(b.default_factory), where
        for k in a:
            alike(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            alike(x, y, f"{where}[{i}]")
    elif isinstance(a, (set, frozenset)):
        assert a == b, where
    elif isinstance(a, (float, np.floating)):
        assert a == b or (math.isnan(a) and math.isnan(b)), where
    elif isinstance(a, (type(None), bool, int, str, bytes, np.generic)) or (callable(a) and not hasattr(a, "update")):
        assert a == b or a is b, where
    else:
        attributes = {name: getattr(a, name) for cls in type(a).__mro__ for name in getattr(cls, "__slots__", ()) if hasattr(a, name)}
        attributes.update(vars(a) if hasattr(a, "__dict__") else {})
        other = {name: getattr(b, name) for name in attributes if hasattr(b, name)}
        assert attributes.keys() == other.keys(), where
        for name in attributes:
            alike(attributes[name], other[name], f"{where}.{name}")


@settings(max_examples=25, deadline=None)
@given(events=streams())
def test_every_operator_decoded_after_its_prototype_is_the_operator_it_was(events):
    monitor = realistic_monitor()
    monitor.replay(events)
    seen = set()
    for tracked, op in partial_operators(monitor):
        decoded = decode_state(encode_state(op), tracked.prototype)
        seen.add(tracked.name)
        assert type(decoded) is type(op), tracked.name
        alike(decoded, op, tracked.name)
        assert same(decoded.get(), op.get()), tracked.name
        if callable(getattr(op, "merge", None)):  # and it still works as an operator: merged into a fresh one
            a, b = sm.operators.base.fresh_copy(tracked.prototype), sm.operators.base.fresh_copy(tracked.prototype)
            a.merge(op)
            b.merge(decoded)
            assert same(a.get(), b.get()), tracked.name
    assert "volume" in seen  # every stream has a prediction


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: (st.lists(children, max_size=4) | st.tuples(children, children)
                      | st.dictionaries(st.integers() | st.text() | st.tuples(st.integers(), st.text()), children, max_size=4)),
    max_leaves=20)


@given(value=plain)
def test_plain_data_comes_back_equal_and_of_the_same_types(value):
    decoded = decode_state(encode_state(value))
    alike(decoded, value)


@given(values=st.lists(st.integers(-2**31, 2**31 - 1), max_size=50), dtype=st.sampled_from(["i1", "i2", "i4", "i8", "u4", "f4", "f8", "?"]))
def test_numpy_arrays_and_scalars_keep_dtype_shape_and_values(values, dtype):
    array = np.array(values).astype(dtype).reshape(-1, 1) if values else np.zeros((0, 2), dtype=dtype)
    decoded = decode_state(encode_state({"a": array, "s": array.dtype.type(1)}))
    assert decoded["a"].dtype == array.dtype and decoded["a"].shape == array.shape and np.array_equal(decoded["a"], array)
    assert decoded["a"].flags.writeable and decoded["a"].base is None
    assert type(decoded["s"]) is array.dtype.type


def test_containers_take_the_templates_types_and_factories():
    template = {"d": defaultdict(int), "c": Counter(), "f": frozenset()}
    value = {"d": defaultdict(int, {(1, "a"): 3}), "c": Counter("aab"), "f": frozenset({1, 2})}
    decoded = decode_state(encode_state(value), template)
    assert decoded == value and type(decoded["d"]) is defaultdict and type(decoded["c"]) is Counter
    decoded["d"][(9, "z")] += 1  # the factory works
    assert decoded["d"][(9, "z")] == 1


def test_an_operator_of_another_class_is_refused_by_name():
    with pytest.raises(StateShapeError, match="a Precision where this app's operator holds a Recall"):
        decode_state(encode_state(ops.Precision()), ops.Recall())
    with pytest.raises(StateShapeError, match="no object to rebuild it after"):
        decode_state(encode_state(ops.Mean()))


def test_functions_are_the_readers_own():
    def mine(cm):
        return 1.0

    monitor = sm.Monitor("f")
    monitor.metric(lambda cm: 0.5, stat=ops.ConfusionMatrix(), name="theirs")
    written = encode_state(monitor.metrics[0].prototype)
    reader = sm.Monitor("f")
    reader.metric(mine, stat=ops.ConfusionMatrix(), name="theirs")
    assert decode_state(written, reader.metrics[0].prototype).fn is mine
    with pytest.raises(StateShapeError, match="function of the writer's app"):
        decode_state(encode_state({"f": mine}))


def test_a_pickle_or_garbage_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for data in (pickle.dumps(Payload()), b"\x00garbage", b"", encode_state([1, 2])[:-1]):
        with pytest.raises(StateShapeError):
            decode_state(data, ops.Mean())
    assert not marker.exists()


@pytest.mark.parametrize("tree", [
    [5, "O8", [1], b"\x00" * 8],  # an object array
    [5, "<f8", [3], b"\x00" * 8],  # a shape its bytes do not fill
    [6, "V8", b"\x00" * 8],  # a void scalar
    [7, "Mean", "not a list"],
    [42],
])
def test_malformed_trees_are_refused_with_a_reason(tree):
    import msgspec
    with pytest.raises(StateShapeError):
        decode_state(msgspec.msgpack.encode(tree), ops.Mean())


def test_an_object_array_cannot_be_encoded():
    with pytest.raises(StateShapeError, match="numbers and bools only"):
        encode_state(np.array([object()]))


def test_a_river_metric_round_trips():
    metric = river_metrics.ROCAUC()
    for y, p in [(1, 0.9), (0, 0.2), (1, 0.4), (0, 0.7)]:
        metric.update(y, p)
    decoded = decode_state(encode_state(metric), river_metrics.ROCAUC())
    assert decoded.get() == metric.get()
    alike(decoded, metric)


def test_a_reference_cycle_or_a_deep_nest_is_refused_not_a_crash():
    class Node:
        def __init__(self):
            self.me = self

    with pytest.raises(StateShapeError, match="reference cycle"):
        encode_state(Node())
    deep = b"\x92\x00" * 100_000 + b"\xc0"  # [0, [0, [0, ... None]]]: 100,000 lists deep
    with pytest.raises(StateShapeError, match=r"too deep|not encoded state"):
        decode_state(deep)
