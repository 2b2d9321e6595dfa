"""The confusion matrix: the sufficient statistic of every label-based classification metric."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
from typing import Any

import numpy as np

from .base import Statistic

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix(Statistic):
    """Counts of (y_true, y_pred) pairs. Mergeable and subtractable; classes appear as seen.

    Finalizers read it through ``n``, ``tp``, ``precision``, ``recall``, ``f1``, ``accuracy``:

    >>> cm = ConfusionMatrix()
    >>> cm.update_many(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 1]))
    >>> cm.accuracy, cm.recall(1), cm.precision(1)
    (0.5, 0.5, 0.5)
    """

    of = "y_pred"

    def __init__(self) -> None:
        self.counts: Counter[tuple[Hashable, Hashable]] = Counter()
        self.n = 0

    def update(self, y_true: Any, y_pred: Any) -> None:
        self.counts[(y_true, y_pred)] += 1
        self.n += 1

    def update_many(self, y_true, y_pred) -> None:
        if len(y_true) != len(y_pred):
            raise ValueError("y_true and y_pred differ in length")
        batch = Counter(zip(y_true.tolist() if isinstance(y_true, np.ndarray) else y_true,
                            y_pred.tolist() if isinstance(y_pred, np.ndarray) else y_pred))
        self.counts.update(batch)
        self.n += len(y_true)

    def revert(self, y_true: Any, y_pred: Any) -> None:
        key = (y_true, y_pred)
        self.counts[key] -= 1
        if not self.counts[key]:
            del self.counts[key]
        self.n -= 1

    def merge(self, other: ConfusionMatrix) -> None:
        self.counts.update(other.counts)
        self.n += other.n

    def subtract(self, other: ConfusionMatrix) -> None:
        self.counts.subtract(other.counts)
        for key in [k for k, v in self.counts.items() if v == 0]:
            del self.counts[key]
        self.n -= other.n

    def get(self) -> float:
        return self.accuracy

    # -- reading ---------------------------------------------------------------------------
    @property
    def classes(self) -> list:
        seen = {c for pair in self.counts for c in pair}
        return sorted(seen, key=repr)

    @property
    def accuracy(self) -> float:
        if not self.n:
            return math.nan
        return sum(v for (t, p), v in self.counts.items() if t == p) / self.n

    def tp(self, c: Hashable) -> int:
        return self.counts.get((c, c), 0)

    def true_count(self, c: Hashable) -> int:
        """Events whose true class is ``c`` (the support)."""
        return sum(v for (t, _), v in self.counts.items() if t == c)

    def pred_count(self, c: Hashable) -> int:
        return sum(v for (_, p), v in self.counts.items() if p == c)

    def precision(self, c: Hashable) -> float:
        d = self.pred_count(c)
        return self.tp(c) / d if d else 0.0

    def recall(self, c: Hashable) -> float:
        d = self.true_count(c)
        return self.tp(c) / d if d else 0.0

    def f1(self, c: Hashable) -> float:
        d = self.pred_count(c) + self.true_count(c)
        return 2 * self.tp(c) / d if d else 0.0
