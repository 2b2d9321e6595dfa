"""What a pane's partial costs: counts in the narrowest integer type, widened exactly; loaded arrays own their data."""

import pickle

import numpy as np
import pytest

from streammon import operators as ops
from streammon.operators.counts import add_counts, narrowest

REFERENCE = np.linspace(0.0, 1.0, 200)


def test_counts_take_the_narrowest_type_and_widen_exactly():
    assert narrowest(np.array([0, 127, -128])).dtype == np.int8
    assert narrowest(np.array([128])).dtype == np.int16
    assert narrowest(np.array([1]), at_least=32).dtype == np.int32
    held = np.zeros(3, dtype=np.int8)
    for step in (100, 100, 40_000, 3_000_000_000, -3_000_040_000):
        held, _ = add_counts(held, slice(1, 2), np.array([step]))
    assert held.tolist() == [0, 200, 0] and held.dtype == np.int64  # widened once outgrown, never narrowed


def columns(op, x):
    """The columns ``op`` reads: (y_true, score) for the pair metrics, the values alone for the others."""
    return ((x > 0.5).astype(np.int64), x) if isinstance(op, ops.ROCAUC | ops.Calibration) else (x,)


SKETCH, PSI, KS = (lambda: ops.Quantiles(of="score")), (lambda: ops.PSI(REFERENCE)), (lambda: ops.KS(REFERENCE))


@pytest.mark.parametrize("make", [SKETCH, PSI, KS, ops.ROCAUC])
def test_a_pane_holds_one_byte_counts_and_a_total_widens_them_exactly(make):
    x = np.round(np.random.default_rng(0).random(300), 2)
    cols = columns(make(), x)
    pane, total, once = make(), make(), make()
    pane.update_many(*[c[:50] for c in cols])
    counts = pane.counts if isinstance(pane, ops.ROCAUC) else getattr(pane, "positive", pane).counts
    assert counts.dtype == np.int8
    for _ in range(200):  # 200 x the same 300 values: counts pass 127 and 32,767
        total.update_many(*cols)
    once.update_many(*[np.tile(c, 200) for c in cols])
    assert total.get() == once.get()
    for _ in range(199):
        part = make()
        part.update_many(*cols)
        total.subtract(part)
    single = make()
    single.update_many(*cols)
    assert total.get() == single.get()


@pytest.mark.parametrize("make", [SKETCH, PSI, ops.ROCAUC, ops.Calibration])
def test_a_loaded_operator_owns_its_counts(make):
    op = make()
    cols = columns(op, np.array([0.1, 0.4, 0.4, 0.9]))
    op.update_many(*cols)
    loaded = pickle.loads(pickle.dumps(op, protocol=pickle.HIGHEST_PROTOCOL))
    arrays = {ops.ROCAUC: lambda o: [o.keys, o.counts], ops.Calibration: lambda o: [o.count, o.positives, o.score_sum]}
    held = arrays.get(type(op), lambda o: [getattr(o, "positive", o).counts])(loaded)
    # Unpickled (protocol 5) arrays view the pickle's buffer through three more objects: copies own their data.
    assert all(a.base is None for a in held)
    assert loaded.get() == op.get()
    loaded.update_many(*cols)
    if isinstance(op, ops.Calibration):
        assert loaded.edges is make().edges  # shared again, not one per loaded pane
