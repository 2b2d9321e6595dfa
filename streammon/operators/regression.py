"""Regression metrics over (y_true, y_pred) pairs of numbers: exact, mergeable, subtractable sums."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Statistic
from .terms import MeanOfTerms

__all__ = ["MAE", "MSE", "RMSE", "MeanError", "R2"]


def _numbers(xs: Any) -> np.ndarray:
    arr = np.asarray(xs)
    if arr.dtype == object and any(isinstance(v, (str, bytes)) for v in arr.tolist()):
        raise TypeError("regression metrics read numbers; got a string")
    arr = arr.astype(np.float64)  # None becomes NaN, refused below; other strings raise here
    if not np.isfinite(arr).all():
        raise ValueError("regression metrics read finite numbers; got NaN, inf or None")
    return arr


def _pairs(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _numbers(y_true), _numbers(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be columns of one length, got shapes {t.shape} and {p.shape}")
    return t, p


class _MeanTerm(MeanOfTerms):
    """Mean of a per-pair term of two number columns; subclasses define ``_term(y_true, y_pred)``."""

    @staticmethod
    def _term(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _terms(self, y_true: Any, y_pred: Any) -> np.ndarray:
        return self._term(*_pairs(y_true, y_pred))


class MAE(_MeanTerm):
    """Mean absolute error, as ``sklearn.metrics.mean_absolute_error``.

    >>> m = MAE(); m.update_many(np.array([3.0, 1.0]), np.array([2.0, 2.0])); m.get()
    1.0
    """

    @staticmethod
    def _term(y_true, y_pred):
        return np.abs(y_pred - y_true)


class MSE(_MeanTerm):
    """Mean squared error, as ``sklearn.metrics.mean_squared_error``.

    >>> m = MSE(); m.update_many(np.array([3.0, 1.0]), np.array([1.0, 2.0])); m.get()
    2.5
    """

    @staticmethod
    def _term(y_true, y_pred):
        return (y_pred - y_true) ** 2


class RMSE(MSE):
    """Root mean squared error: the square root of :class:`MSE` (in the unit of the target).

    >>> m = RMSE(); m.update_many(np.array([3.0, 1.0]), np.array([0.0, 5.0])); m.get()
    3.5355339059327378
    """

    def get(self) -> float:
        return math.sqrt(max(super().get(), 0.0)) if self.n else math.nan


class MeanError(_MeanTerm):
    """Mean signed error ``mean(y_pred - y_true)``: the bias. Positive means the model over-predicts.

    >>> m = MeanError(); m.update_many(np.array([3.0, 1.0]), np.array([4.0, 2.0])); m.get()
    1.0
    """

    @staticmethod
    def _term(y_true, y_pred):
        return y_pred - y_true


class R2(Statistic):
    """Coefficient of determination, as ``sklearn.metrics.r2_score`` (NaN below two pairs, like sklearn).

    Kept as (n, mean of y_true, sum of squared deviations of y_true, sum of squared residuals);
    panes combine with Chan's parallel-variance formulas, which subtraction inverts.
    As in scikit-learn, a constant y_true gives 1.0 for a perfect fit and 0.0 otherwise.

    >>> r = R2(); r.update_many(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])); r.get()
    0.5
    """

    of = "y_pred"

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.ss_res = 0.0

    @staticmethod
    def _stats(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[int, float, float, float]:
        n = len(y_true)
        if not n:
            return 0, 0.0, 0.0, 0.0
        mean = float(y_true.mean())
        return n, mean, float(((y_true - mean) ** 2).sum()), float(((y_true - y_pred) ** 2).sum())

    def _add(self, n: int, mean: float, m2: float, ss_res: float) -> None:
        if not n:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.ss_res += ss_res
        self.n = total

    def _remove(self, n: int, mean: float, m2: float, ss_res: float) -> None:
        if not n:
            return
        rest = self.n - n
        if rest <= 0:
            self.n, self.mean, self.m2, self.ss_res = 0, 0.0, 0.0, 0.0
            return
        rest_mean = (self.n * self.mean - n * mean) / rest
        delta = mean - rest_mean
        self.m2 = max(self.m2 - m2 - delta * delta * rest * n / self.n, 0.0)
        self.ss_res = max(self.ss_res - ss_res, 0.0)
        self.mean = rest_mean
        self.n = rest

    def _state(self) -> tuple[int, float, float, float]:
        return self.n, self.mean, self.m2, self.ss_res

    def update(self, y_true: float, y_pred: float) -> None:
        self._add(*self._stats(*_pairs([y_true], [y_pred])))

    def update_many(self, y_true: Any, y_pred: Any) -> None:
        self._add(*self._stats(*_pairs(y_true, y_pred)))

    def revert(self, y_true: float, y_pred: float) -> None:
        self._remove(*self._stats(*_pairs([y_true], [y_pred])))

    def merge(self, other: R2) -> None:
        self._add(*other._state())

    def subtract(self, other: R2) -> None:
        self._remove(*other._state())

    def get(self) -> float:
        if self.n < 2:
            return math.nan
        if self.m2 == 0.0:
            return 1.0 if self.ss_res == 0.0 else 0.0
        return 1.0 - self.ss_res / self.m2
