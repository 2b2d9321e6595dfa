"""Mergeable sufficient statistics over one number per event: count, mean, moments."""

from __future__ import annotations

import math
from typing import Self

import numpy as np

from .base import Statistic

__all__ = ["Count", "Mean", "Moments"]


def _numbers(xs) -> np.ndarray:
    arr = np.asarray(xs, dtype=np.float64)
    return arr[~np.isnan(arr)] if arr.dtype.kind == "f" else arr


class Count(Statistic):
    """Events seen. With ``of="prediction"`` (the default) this is prediction volume.

    >>> c = Count(); c.update(1); c.update(0); c.get()
    2.0
    """

    def __init__(self, of: str = "prediction") -> None:
        self.of = of
        self.n = 0

    def _params(self):
        return {"of": self.of}

    def update(self, *_args) -> None:
        self.n += 1

    def update_many(self, *cols) -> None:
        self.n += len(cols[0])

    def revert(self, *_args) -> None:
        self.n -= 1

    def merge(self, other: Count) -> None:
        self.n += other.n

    def subtract(self, other: Count) -> None:
        self.n -= other.n

    def get(self) -> float:
        return float(self.n)


class Mean(Statistic):
    """Arithmetic mean of a number per event (``of`` names it: ``"score"``, ``"features.age"``...).

    Missing values (``None``) are skipped.

    >>> m = Mean(of="score"); m.update_many(np.array([1.0, 2.0, 6.0])); m.get()
    3.0
    """

    def __init__(self, of: str = "score") -> None:
        self.of = of
        self.n = 0
        self.total = 0.0

    def _params(self):
        return {"of": self.of}

    def update(self, x) -> None:
        if x is None:
            return
        x = float(x)
        if math.isnan(x):
            return
        self.n += 1
        self.total += x

    def update_many(self, xs) -> None:
        arr = _numbers([np.nan if x is None else x for x in xs] if getattr(xs, "dtype", None) == object else xs)  # noqa: E721 - compares a dtype, which equals object for object arrays
        self.n += len(arr)
        self.total += float(arr.sum())

    def revert(self, x) -> None:
        if x is None or math.isnan(float(x)):
            return
        self.n -= 1
        self.total -= float(x)

    def merge(self, other: Self) -> None:
        self.n += other.n
        self.total += other.total

    def subtract(self, other: Self) -> None:
        self.n -= other.n
        self.total -= other.total

    def get(self) -> float:
        return self.total / self.n if self.n else math.nan


class Moments(Mean):
    """Count, mean, variance and standard deviation of a number per event: a statistic for finalizers.

    Kept as power sums so that panes merge and subtract exactly (up to float rounding).

    >>> m = Moments(of="score"); m.update_many(np.array([1.0, 2.0, 3.0, 4.0])); m.mean, m.variance
    (2.5, 1.25)
    """

    def __init__(self, of: str = "score") -> None:
        super().__init__(of)
        self.total_sq = 0.0

    def update(self, x) -> None:
        if x is None or math.isnan(float(x)):
            return
        super().update(x)
        self.total_sq += float(x) ** 2

    def update_many(self, xs) -> None:
        arr = _numbers([np.nan if x is None else x for x in xs] if getattr(xs, "dtype", None) == object else xs)  # noqa: E721 - compares a dtype, which equals object for object arrays
        self.n += len(arr)
        self.total += float(arr.sum())
        self.total_sq += float(np.dot(arr, arr))

    def revert(self, x) -> None:
        if x is None or math.isnan(float(x)):
            return
        super().revert(x)
        self.total_sq -= float(x) ** 2

    def merge(self, other: Self) -> None:
        super().merge(other)
        self.total_sq += other.total_sq

    def subtract(self, other: Self) -> None:
        super().subtract(other)
        self.total_sq -= other.total_sq

    @property
    def mean(self) -> float:
        return self.get()

    @property
    def variance(self) -> float:
        """Population variance (``ddof=0``)."""
        if not self.n:
            return math.nan
        mean = self.total / self.n
        return max(self.total_sq / self.n - mean * mean, 0.0)

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)
