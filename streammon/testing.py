"""The laws every operator must obey, for your tests: :func:`check_operator`.

streammon updates an operator per event or a batch at a time, merges the partials of panes and of
partitions, subtracts or reverts what leaves a sliding window, and pickles state into checkpoints.
Each path must give the value one operator updated with every event gives, or a sliding window
drifts from the truth without an error. ``check_operator`` runs every law that the operator's
capabilities call for (``merge``, ``subtract``, ``revert``, ``update_many``, ``clone`` are detected,
as the monitor detects them) on two batches of your data, and raises ``AssertionError`` naming the
first law broken and both values:

>>> from streammon.testing import check_operator
>>> class MeanAbsError:
...     def __init__(self): self.n, self.total = 0, 0.0
...     def update(self, y_true, y_pred): self.n, self.total = self.n + 1, self.total + abs(y_true - y_pred)
...     def revert(self, y_true, y_pred): self.n, self.total = self.n - 1, self.total - abs(y_true - y_pred)
...     def merge(self, other): self.n, self.total = self.n + other.n, self.total + other.total
...     def get(self): return self.total / self.n if self.n else float("nan")
>>> a = ([1.0, 2.0, 3.0], [1.5, 2.0, 5.0])  # (y_true, y_pred): one column per argument of update
>>> b = ([0.0], [4.0])
>>> check_operator(MeanAbsError, a, b, checkpoint=False)  # a class typed at the prompt cannot be pickled

The examples are yours (draw them with hypothesis if you like): this module needs neither pytest
nor hypothesis. ``oracle`` recomputes the value from scratch (scikit-learn, numpy); without one the
reference is a fresh operator updated once per row.
"""

from __future__ import annotations

import copy
import math
import numbers
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .engine import as_column
from .operators.base import capabilities

__all__ = ["check_operator"]

Batch = Sequence[Sequence[Any]]


class _Unchecked:
    def __repr__(self) -> str:
        return "not checked"


_UNCHECKED: Any = _Unchecked()


def check_operator(
    operator: Any,
    a: Batch,
    b: Batch,
    *,
    oracle: Callable[..., Any] | None = None,
    close: Callable[[Any, Any], bool] | None = None,
    empty: Any = _UNCHECKED,
    bad: Iterable[Batch] = (),
    raises: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    checkpoint: bool = True,
) -> None:
    """Check ``operator`` against the operator laws on batches ``a`` and ``b``.

    ``operator`` is a zero-argument factory (a class, a lambda) or an empty instance, which is
    deep-copied as the monitor copies its prototype. A batch holds the arguments of ``update`` as
    columns: one sequence per argument, ``(y_true, y_pred)`` for a pair metric, ``(values,)`` for
    one that reads a single value. Columns become numpy arrays as the monitor builds them (plain
    numbers numeric, anything else objects) for ``update_many``; ``update`` gets them row by row.

    The laws, each checked when the operator has what it needs:

    - ``get()`` of a fresh operator equals ``empty``, when given (the built-ins return NaN);
    - ``update_many(*A)`` and ``update`` once per row of A both equal the reference on A: ``oracle(*A)``,
      or without an oracle, a fresh operator updated once per row;
    - ``merge``: an empty operator merged with the operators of A and of B equals the reference on
      A + B, and leaves them unchanged (no shared state);
    - a pickle round trip keeps the value (checkpoints pickle operators; ``checkpoint=False`` skips it
      for an operator never run with a state directory);
    - ``subtract(B)`` after that merge gives A's value again; so does ``update`` then ``revert`` of B's rows;
    - ``clone()`` is an empty operator of the same type that, updated with A, equals the one it was cloned from;
    - for each batch in ``bad``, ``update_many`` raises ``raises`` and leaves the operator exactly as it
      was: the monitor then retries the batch row by row, so a half-applied batch would count rows twice.

    ``close(got, expected)`` compares two values of ``get()``; the default allows a relative error of
    1e-9, takes NaN as equal to NaN and compares mappings key by key.

    >>> class Mean:
    ...     def __init__(self): self.n, self.mean = 0, 0.0
    ...     def update(self, x): self.n += 1; self.mean += (x - self.mean) / self.n
    ...     def merge(self, other): self.n += other.n; self.mean = (self.mean + other.mean) / 2  # unweighted
    ...     def get(self): return self.mean
    >>> check_operator(Mean, ([1.0, 2.0, 3.0],), ([10.0],), checkpoint=False)
    Traceback (most recent call last):
    ...
    AssertionError: Mean breaks the merge law: an empty operator merged with the operators of A and of B gives 5.5, but a fresh operator updated once per row of A + B gives 4.0
    """
    make = _factory(operator)
    name = type(make()).__name__
    close = close or _close
    caps = capabilities(make())
    cols_a, cols_b = _columns(a, "a"), _columns(b, "b")
    both = [np.concatenate([x, y]) for x, y in zip(cols_a, cols_b)]

    def reference(cols: list[np.ndarray], of: str) -> tuple[Any, str]:
        if oracle is not None:
            # The oracle's own errors are the caller's: not wrapped.
            return oracle(*cols), f"oracle(*{of})" if " " not in of else f"oracle(*({of}))"
        with _law(name, "update"):
            return _update_each(make(), cols).get(), f"a fresh operator updated once per row of {of}"

    def expect(law: str, what: str, got: Any, want: tuple[Any, str]) -> None:
        if not close(got, want[0]):
            raise AssertionError(f"{name} breaks the {law} law: {what} gives {_show(got)}, but {want[1]} gives {_show(want[0])}")

    ref_a = reference(cols_a, "A")
    with _law(name, "empty"):
        if empty is not _UNCHECKED:
            expect("empty", "get() before any update", make().get(), (empty, "empty="))
    with _law(name, "update"):
        if oracle is not None:
            expect("update", "update once per row of A", _update_each(make(), cols_a).get(), ref_a)
    with _law(name, "update_many"):
        op_a, op_b = _batch(make(), caps, cols_a), _batch(make(), caps, cols_b)
        if caps.update_many:
            expect("update_many", "update_many(*A)", op_a.get(), ref_a)
    value_a, value_b = op_a.get(), op_b.get()
    as_a = (value_a, "the operator of A")

    if not caps.merge and checkpoint:
        with _law(name, "pickle"):
            expect("pickle", "the operator of A, pickled and unpickled", _round_trip(op_a, name).get(), as_a)
    if caps.merge:
        with _law(name, "merge"):
            ab = make()
            ab.merge(op_a)
            ab.merge(op_b)
            ref_ab = reference(both, "A + B")
            expect("merge", "an empty operator merged with the operators of A and of B", ab.get(), ref_ab)
        if checkpoint:  # what follows runs on the unpickled copy, as a worker restored from a checkpoint does
            with _law(name, "pickle"):
                ab = _round_trip(ab, name)
                expect("pickle", "the merged operator, pickled and unpickled", ab.get(), ref_ab)
        if caps.subtract:
            with _law(name, "subtract"):
                ab.subtract(op_b)
                expect("subtract", "merge(A), merge(B), then subtract(B)", ab.get(), as_a)
        with _law(name, "merge"):
            for which, op, value in (("A", op_a, value_a), ("B", op_b, value_b)):
                if not close(op.get(), value):
                    raise AssertionError(f"{name} breaks the merge law: merging the operator of {which} into another "
                                         f"changed it ({_show(value)} -> {_show(op.get())}): merge must copy the "
                                         f"other's state, not share it")

    if caps.revert:
        with _law(name, "revert"):
            reverted = _revert_each(_update_each(_batch(make(), caps, cols_a), cols_b), cols_b)
            expect("revert", "A, then update and revert of each row of B", reverted.get(), as_a)

    if callable(getattr(op_a, "clone", None)):
        with _law(name, "clone"):
            fresh = op_a.clone()
            if type(fresh) is not type(op_a):
                raise AssertionError(f"{name} breaks the clone law: clone() returned a {type(fresh).__name__}")
            params = getattr(op_a, "_params", None)  # streammon's Statistic keeps its constructor's parameters
            if callable(params) and fresh._params() != params():
                raise AssertionError(f"{name} breaks the clone law: clone() has parameters {fresh._params()!r}, "
                                     f"not {params()!r}")
            if empty is not _UNCHECKED:
                expect("clone", "get() of a clone of the operator of A", fresh.get(), (empty, "empty="))
            expect("clone", "a clone of the operator of A, updated with A", _batch(fresh, caps, cols_a).get(),
                   (value_a, "the operator of A (a clone starts empty, with the same parameters)"))

    for i, batch in enumerate(bad):
        if not caps.update_many:
            raise TypeError(f"bad= checks update_many, which {name} does not have")
        cols = _columns(batch, f"bad[{i}]", same_length=False)  # unequal columns are one way to be bad
        before, value = _state(op_a, checkpoint), op_a.get()
        law = f"{name} breaks the atomic update_many law: update_many(*bad[{i}])"
        try:
            op_a.update_many(*cols)
        except raises:
            pass
        except Exception as exc:
            raise AssertionError(f"{law} raised {type(exc).__name__}: {exc}, not {_names(raises)}") from exc
        else:
            raise AssertionError(f"{law} was accepted; it should raise {_names(raises)}")
        if _state(op_a, checkpoint) != before or not close(op_a.get(), value):
            raise AssertionError(f"{law} raised but changed the operator (get() {_show(value)} -> {_show(op_a.get())}); the "
                                 f"monitor retries a refused batch row by row, so its rows would count twice")


@contextmanager
def _law(name: str, law: str) -> Iterator[None]:
    # A method that raises breaks the law being checked: say which, keep the original as the cause.
    try:
        yield
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"{name} breaks the {law} law: {type(exc).__name__}: {exc}") from exc


def _factory(operator: Any) -> Callable[[], Any]:
    if isinstance(operator, type) or not hasattr(operator, "update"):
        if not callable(operator):
            raise TypeError(f"check_operator needs an operator or a zero-argument factory, not {operator!r}")
        made = operator()
        if not (callable(getattr(made, "update", None)) and callable(getattr(made, "get", None))):
            raise TypeError(f"{operator!r}() made {made!r}, which has no update() and get(): not an operator")
        return operator
    return lambda: copy.deepcopy(operator)


def _columns(batch: Any, what: str, *, same_length: bool = True) -> list[np.ndarray]:
    if isinstance(batch, np.ndarray) or not isinstance(batch, Sequence) or isinstance(batch, str):
        raise TypeError(f"{what} must hold one column per argument of update: for one argument write ({what},), "
                        f"for pairs (y_true, y_pred)")
    cols = [as_column(c) for c in batch]
    if same_length and len({len(c) for c in cols}) > 1:
        raise TypeError(f"the columns of {what} differ in length: {[len(c) for c in cols]}")
    return cols


def _update_each(op: Any, cols: Sequence[np.ndarray]) -> Any:
    for row in zip(*cols):
        op.update(*row)
    return op


def _revert_each(op: Any, cols: Sequence[np.ndarray]) -> Any:
    for row in zip(*cols):
        op.revert(*row)
    return op


def _batch(op: Any, caps: Any, cols: Sequence[np.ndarray]) -> Any:
    if caps.update_many:
        op.update_many(*cols)
        return op
    return _update_each(op, cols)


def _round_trip(op: Any, name: str) -> Any:
    try:
        data = pickle.dumps(op)
    except Exception as exc:
        raise AssertionError(
            f"{name} breaks the pickle law: {type(exc).__name__}: {exc}. Checkpoints pickle operators: "
            f"define the class at module level and keep its state in plain attributes (numbers, lists, dicts, numpy "
            f"arrays); pass checkpoint=False only for an operator never run with a state directory") from exc
    return pickle.loads(data)


def _state(op: Any, checkpoint: bool) -> Any:
    return pickle.dumps(op) if checkpoint else None


def _show(value: Any) -> str:
    # numpy 2 writes np.float64(0.5): show values as the user reads them.
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_show(v)}" for k, v in value.items()) + "}"
    return repr(value.item() if isinstance(value, np.generic) else value)


def _names(raises: type[BaseException] | tuple[type[BaseException], ...]) -> str:
    return " or ".join(e.__name__ for e in (raises if isinstance(raises, tuple) else (raises,)))


def _close(x: Any, y: Any) -> bool:
    if isinstance(x, Mapping) and isinstance(y, Mapping):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, numbers.Real) and isinstance(y, numbers.Real):
        x, y = float(x), float(y)
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
    return bool(x == y)
