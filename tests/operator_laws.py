"""The operator laws, shared by the tests of every built-in (design section 4, style habit 7).

For batches A and B, an operator made by ``make()`` must satisfy, with ``close`` the comparison
that suits its values:

- empty: ``get()`` is NaN;
- ``update_many(A)`` equals the oracle on A, and equals ``update`` once per row of A;
- ``merge(A, B)`` equals the oracle on A + B; a pickle round trip keeps the value;
- ``subtract(B)`` after it restores A; so does ``update`` then ``revert`` of B's rows;
- ``clone()`` is an empty operator of the same type and parameters;
- an ``update_many`` that raises leaves the state unchanged (it is atomic).
"""

from __future__ import annotations

import math
import pickle
from typing import Any, Callable, Sequence

import numpy as np
import pytest

Columns = Sequence[np.ndarray]


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def update_each(op: Any, cols: Columns) -> Any:
    """``update`` once per row of the columns (the per-event path)."""
    for row in zip(*cols):
        op.update(*row)
    return op


def revert_each(op: Any, cols: Columns) -> Any:
    for row in zip(*cols):
        op.revert(*row)
    return op


def check_empty_is_nan(op: Any) -> None:
    assert is_nan(op.get()), op


def check_pickle_round_trip(op: Any, close: Callable[[Any, Any], bool]) -> Any:
    restored = pickle.loads(pickle.dumps(op))
    assert close(restored.get(), op.get())
    return restored


def check_clone_is_empty(op: Any) -> Any:
    fresh = op.clone()
    assert type(fresh) is type(op) and fresh._params() == op._params()
    check_empty_is_nan(fresh)
    return fresh


def check_atomic(op: Any, *bad_cols: np.ndarray, raises: type | tuple[type, ...] = (ValueError, TypeError)) -> None:
    """``update_many(*bad_cols)`` raises and leaves ``op`` exactly as it was (compared as pickled bytes)."""
    before = pickle.dumps(op)
    with pytest.raises(raises):
        op.update_many(*bad_cols)
    assert pickle.dumps(op) == before


def check_laws(make: Callable[[], Any], cols_a: Columns, cols_b: Columns, oracle: Callable[..., Any],
               close: Callable[[Any, Any], bool]) -> Any:
    """Every law on two batches of columns; ``oracle(*cols)`` recomputes the value from scratch.

    Returns the operator updated with A.
    """
    a = make()
    check_empty_is_nan(a)
    a.update_many(*cols_a)
    assert close(a.get(), oracle(*cols_a))
    assert close(update_each(make(), cols_a).get(), a.get())
    b = make()
    b.update_many(*cols_b)
    ab = make()
    ab.merge(a)
    ab.merge(b)
    both = [np.concatenate([x, y]) for x, y in zip(cols_a, cols_b)]
    assert close(ab.get(), oracle(*both))
    check_pickle_round_trip(ab, close)
    ab.subtract(b)
    assert close(ab.get(), a.get())
    reverted = make()
    reverted.update_many(*cols_a)
    revert_each(update_each(reverted, cols_b), cols_b)
    assert close(reverted.get(), a.get())
    assert close(reverted.get(), oracle(*cols_a))
    check_clone_is_empty(a)
    return a
