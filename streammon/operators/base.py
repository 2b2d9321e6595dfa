"""The operator contract: river-compatible ``update`` / ``get`` plus optional capabilities.

An operator knows nothing of time or windows: windows wrap operators (as river's ``Rolling`` wraps
a metric). What a window needs from an operator is detected once, at registration:

========================  ===================================================================
capability                what it buys
========================  ===================================================================
``revert(*args)``         sliding windows by subtract-on-evict (keeps the window's events)
``merge(other)``          sliding windows from per-pane partials; scale-out across workers
``subtract(other)``       with ``merge``: the window total is kept running, O(1) per scrape
``update_many(*cols)``    a whole batch in one call (columns are numpy arrays); must be atomic
``clone()``               a fresh, empty operator with the same parameters
========================  ===================================================================
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Operator", "Revertible", "Mergeable", "Capabilities", "capabilities", "fresh_copy", "Statistic"]


@runtime_checkable
class Operator(Protocol):
    """An incremental metric: any ``river.metrics`` or ``river.stats`` object is one."""

    def update(self, *args: Any) -> None: ...

    def get(self) -> float | Mapping[str, float]: ...


@runtime_checkable
class Revertible(Operator, Protocol):
    def revert(self, *args: Any) -> None: ...


@runtime_checkable
class Mergeable(Operator, Protocol):
    def merge(self, other: Any) -> None: ...


@dataclass(frozen=True)
class Capabilities:
    revert: bool
    merge: bool
    subtract: bool
    update_many: bool

    def describe(self) -> str:
        names = [n for n in ("revert", "merge", "subtract", "update_many") if getattr(self, n)]
        return ", ".join(names) or "none"


def capabilities(op: object) -> Capabilities:
    has = lambda name: callable(getattr(op, name, None))  # noqa: E731
    merge = has("merge")
    return Capabilities(revert=has("revert"), merge=merge, subtract=merge and has("subtract"), update_many=has("update_many"))


def fresh_copy(prototype: object) -> Any:
    """A new, empty operator like ``prototype`` (which is kept pristine by the registry)."""
    clone = getattr(prototype, "clone", None)
    if callable(clone):
        return clone()
    return copy.deepcopy(prototype)


class Statistic:
    """Convenience base for built-ins: mergeable, subtractable sufficient statistics.

    Subclasses define ``update``, ``get``, ``merge`` and ``subtract``; ``clone`` re-runs the
    constructor with the parameters saved by ``_params``.
    """

    #: stream the operator reads when ``track(of=...)`` is not given: "pair", "prediction" or "feedback"
    of: str | None = None
    #: False when the operator reads the prediction's score instead of its predicted value (river's convention)
    requires_labels: bool = True
    #: for operators whose ``get`` returns a mapping: the name of the label its keys go to
    output_label: str | None = None
    #: the metric name when ``track(name=...)`` is not given (default: the class name in snake_case)
    default_name: str | None = None
    #: True for operators that count missing values, so rows without one still reach them
    accepts_missing: bool = False

    def _params(self) -> dict[str, Any]:
        return {}

    def clone(self):
        return type(self)(**self._params())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"
