"""Custom metrics from plain functions: a finalizer over a statistic, or a per-event value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import capabilities, fresh_copy
from .stats import Mean

__all__ = ["Finalized", "PerEventMean"]


class Finalized:
    """``fn(stat)`` at publish time over a statistic updated per event (what ``@monitor.metric(stat=...)`` builds)."""

    def __init__(self, stat: Any, fn: Callable[[Any], float]) -> None:
        self.stat = stat
        self.fn = fn
        self.of = getattr(stat, "of", None)
        self.requires_labels = getattr(stat, "requires_labels", True)
        self.output_label = getattr(stat, "output_label", None)
        caps = capabilities(stat)
        # Only the capabilities the statistic has are offered, so windows choose as for the statistic.
        for name in ("revert", "merge", "subtract", "update_many"):
            if not getattr(caps, name):
                setattr(self, name, None)

    def clone(self) -> Finalized:
        return Finalized(fresh_copy(self.stat), self.fn)

    def update(self, *args: Any) -> None:
        self.stat.update(*args)

    def update_many(self, *cols: Any) -> None:
        self.stat.update_many(*cols)

    def revert(self, *args: Any) -> None:
        self.stat.revert(*args)

    def merge(self, other: Finalized) -> None:
        self.stat.merge(other.stat)

    def subtract(self, other: Finalized) -> None:
        self.stat.subtract(other.stat)

    def get(self) -> Any:
        return self.fn(self.stat)

    def __repr__(self) -> str:
        return f"Finalized({self.stat!r}, {getattr(self.fn, '__name__', self.fn)})"


class PerEventMean(Mean):
    """The running mean of ``fn(*args)`` per event (what ``@monitor.metric()`` builds)."""

    def __init__(self, fn: Callable[..., float], of: str = "y_pred") -> None:
        super().__init__(of)
        self.fn = fn

    def _params(self):
        return {"fn": self.fn, "of": self.of}

    def update(self, *args: Any) -> None:
        super().update(float(self.fn(*args)))

    def update_many(self, *cols: Any) -> None:
        # Compute every value first, so a raise leaves the state untouched (update_many is atomic).
        values = np.fromiter((self.fn(*row) for row in zip(*cols)), dtype=np.float64, count=len(cols[0]))
        super().update_many(values)

    def revert(self, *args: Any) -> None:
        super().revert(float(self.fn(*args)))

    def __repr__(self) -> str:
        return f"PerEventMean({getattr(self.fn, '__name__', self.fn)})"
