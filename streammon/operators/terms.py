"""The mean of a per-pair term: the shape shared by accuracy, log loss, Brier score, MAE, MSE..."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Statistic

__all__ = ["MeanOfTerms", "one_row"]


def one_row(x: Any) -> np.ndarray:
    """A one-element object column, so ``update`` can share ``update_many``'s code."""
    arr = np.empty(1, dtype=object)
    arr[0] = x
    return arr


class MeanOfTerms(Statistic):
    """Mean of a per-pair term, kept as (n, sum) so that panes merge and subtract.

    Subclasses define ``_terms(y_true, other)``: the term of every pair of two columns.
    """

    of = "y_pred"

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0

    def _terms(self, y_true: Any, other: Any) -> np.ndarray:
        raise NotImplementedError

    def _add(self, n: int, total: float) -> None:
        self.n += n
        # Back to exactly zero when empty, rather than keep the rounding left by subtracting floats.
        self.total = self.total + total if self.n else 0.0

    def update(self, y_true: Any, other: Any) -> None:
        self._add(1, float(self._terms(one_row(y_true), one_row(other))[0]))

    def update_many(self, y_true: Any, other: Any) -> None:
        terms = self._terms(y_true, other)
        self._add(len(terms), float(terms.sum()))

    def revert(self, y_true: Any, other: Any) -> None:
        self._add(-1, -float(self._terms(one_row(y_true), one_row(other))[0]))

    def merge(self, other: MeanOfTerms) -> None:
        self._add(other.n, other.total)

    def subtract(self, other: MeanOfTerms) -> None:
        self._add(-other.n, -other.total)

    def get(self) -> float:
        return self.total / self.n if self.n else math.nan
