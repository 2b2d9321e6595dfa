"""Distributions of one column: class shares, null rate, mean score."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from .base import Statistic
from .stats import Mean

__all__ = ["ClassDistribution", "LabelDistribution", "NullRate", "MeanScore"]


def class_key(value: Any) -> str:
    """The published name of a class: ``str(value)``, with integral floats written as ints.

    A column of ints turns into floats when one batch mixes ints and floats, so ``1.0`` and ``1``
    must name the same class.
    """
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


class ClassDistribution(Statistic):
    """Share of each class in a column (default: the predicted class), published with a ``class`` label.

    Keys are :func:`class_key` of the values; None and NaN are skipped as missing.

    >>> d = ClassDistribution(); d.update_many(np.array(["cat", "dog", "cat", "cat"], dtype=object)); d.get()
    {'cat': 0.75, 'dog': 0.25}
    """

    output_label = "class"

    def __init__(self, of: str = "prediction") -> None:
        self.of = of
        self.counts: Counter[str] = Counter()
        self.n = 0

    def _params(self) -> dict[str, Any]:
        return {"of": self.of}

    @staticmethod
    def _tally(xs: Any) -> Counter[str]:
        arr = np.asarray(xs)
        if arr.dtype.kind in "iuf":
            arr = arr.reshape(-1)
            if arr.dtype.kind == "f":
                arr = arr[~np.isnan(arr)]
            values, counts = np.unique(arr, return_counts=True)
            return Counter({class_key(v): int(c) for v, c in zip(values.tolist(), counts.tolist())})
        items = arr.tolist() if arr.ndim else [arr.item()]
        return Counter(class_key(v) for v in items if not _missing(v))

    def _apply(self, tally: Counter[str], sign: int) -> None:
        for key, c in tally.items():
            left = self.counts[key] + sign * c
            if left:
                self.counts[key] = left
            else:
                del self.counts[key]
        self.n += sign * sum(tally.values())

    def update(self, x: Any) -> None:
        if not _missing(x):
            self._apply(Counter([class_key(x)]), 1)

    def update_many(self, xs: Any) -> None:
        self._apply(self._tally(xs), 1)

    def revert(self, x: Any) -> None:
        if not _missing(x):
            self._apply(Counter([class_key(x)]), -1)

    def merge(self, other: ClassDistribution) -> None:
        self._apply(other.counts, 1)

    def subtract(self, other: ClassDistribution) -> None:
        self._apply(other.counts, -1)

    def get(self) -> dict[str, float] | float:
        if not self.n:
            return math.nan
        return {key: c / self.n for key, c in sorted(self.counts.items())}


class LabelDistribution(ClassDistribution):
    """Share of each true class in the feedback stream (its wire field is ``label``).

    >>> d = LabelDistribution(); d.update_many(np.array([1, 0, 1, 1])); d.get()
    {'0': 0.25, '1': 0.75}
    """

    def __init__(self) -> None:
        super().__init__(of="label")

    def _params(self) -> dict[str, Any]:
        return {}


class NullRate(Statistic):
    """Share of events whose value is missing (None or NaN), e.g. ``NullRate("features.age")``.

    >>> r = NullRate("features.age"); r.update_many(np.array([31, None, 40, float("nan")], dtype=object)); r.get()
    0.5
    """

    #: reads None values instead of having them filtered out
    accepts_missing = True

    def __init__(self, of: str) -> None:
        self.of = of
        self.n = 0
        self.nulls = 0

    def _params(self) -> dict[str, Any]:
        return {"of": self.of}

    @staticmethod
    def _count(xs: Any) -> tuple[int, int]:
        arr = np.asarray(xs)
        if arr.dtype.kind in "iub":
            return arr.size, 0
        if arr.dtype.kind == "f":
            return arr.size, int(np.isnan(arr).sum())
        items = arr.tolist() if arr.ndim else [arr.item()]
        return len(items), sum(map(_missing, items))

    def update(self, x: Any) -> None:
        self.n += 1
        self.nulls += _missing(x)

    def update_many(self, xs: Any) -> None:
        n, nulls = self._count(xs)
        self.n += n
        self.nulls += nulls

    def revert(self, x: Any) -> None:
        self.n -= 1
        self.nulls -= _missing(x)

    def merge(self, other: NullRate) -> None:
        self.n += other.n
        self.nulls += other.nulls

    def subtract(self, other: NullRate) -> None:
        self.n -= other.n
        self.nulls -= other.nulls

    def get(self) -> float:
        return self.nulls / self.n if self.n else math.nan


class MeanScore(Mean):
    """Mean of the prediction's score: :class:`~streammon.operators.stats.Mean` of ``"score"``, published as ``mean_score``.

    >>> m = MeanScore(); m.update_many(np.array([0.2, 0.4])); round(m.get(), 6)
    0.3
    """

    def __init__(self) -> None:
        super().__init__(of="score")

    def _params(self) -> dict[str, Any]:
        return {}
