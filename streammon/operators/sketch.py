"""A mergeable, subtractable quantile sketch (DDSketch-style log buckets) and the quantile operators on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np

from .base import Statistic
from .counts import add_counts, owned

__all__ = ["QuantileSketch", "Quantiles", "FeedbackDelay"]

# Below this magnitude (subnormal floats) log buckets lose precision, so such values count as zero.
_TINY = float(np.finfo(np.float64).tiny)


def present_numbers(xs: Any) -> np.ndarray:
    """The numbers in a column as float64, skipping missing values (None, NaN); raises on anything else.

    Shared by the operators that read one number per event (sketches, drift).
    """
    arr = np.asarray(xs)
    if arr.dtype.kind in "iu":
        return arr.astype(np.float64)
    if arr.dtype.kind == "f":
        values = arr.astype(np.float64, copy=False)
    else:
        items = arr.tolist() if arr.ndim else [arr.item()]
        bad = next((v for v in items if v is not None and (isinstance(v, bool) or not isinstance(v, Real))), None)
        if bad is not None:
            raise TypeError(f"expected numbers, got {bad!r}")
        values = np.array([math.nan if v is None else v for v in items], dtype=np.float64)
    values = values.reshape(-1)
    values = values[~np.isnan(values)]
    if np.isinf(values).any():
        raise ValueError("expected finite numbers, got inf")
    return values


class _Store:
    """Counts per bucket index in a dense array that starts at ``offset`` and grows as needed; each count
    in the narrowest integer type they all fit (one byte in a sliding window's pane, widened as they grow)."""

    __slots__ = ("offset", "counts")

    def __init__(self) -> None:
        self.offset = 0
        self.counts = np.zeros(0, dtype=np.int8)

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        _, slots = state  # what pickle gives a class with __slots__
        self.offset, self.counts = slots["offset"], owned(slots["counts"])

    def _cover(self, lo: int, hi: int) -> None:
        if not len(self.counts):
            self.offset, self.counts = lo, np.zeros(hi - lo + 1, dtype=self.counts.dtype)
            return
        old_lo, old_hi = self.offset, self.offset + len(self.counts) - 1
        if lo >= old_lo and hi <= old_hi:
            return
        new_lo, new_hi = min(lo, old_lo), max(hi, old_hi)
        grown = np.zeros(new_hi - new_lo + 1, dtype=self.counts.dtype)
        grown[old_lo - new_lo : old_hi - new_lo + 1] = self.counts
        self.offset, self.counts = new_lo, grown

    def add(self, offset: int, counts: np.ndarray, sign: int) -> None:
        """Add (sign 1) or remove (sign -1) counts laid out from bucket index ``offset``."""
        if not len(counts):
            return
        self._cover(offset, offset + len(counts) - 1)
        start = offset - self.offset
        self.counts, _ = add_counts(self.counts, slice(start, start + len(counts)), counts.astype(np.int64) * sign)
        if sign < 0:
            self._trim()

    def _trim(self) -> None:
        # After removals, shrink to the non-empty range so a window's memory follows its data.
        nonzero = np.flatnonzero(self.counts)
        if not len(nonzero):
            self.offset, self.counts = 0, np.zeros(0, dtype=self.counts.dtype)
        elif nonzero[0] > 0 or nonzero[-1] < len(self.counts) - 1:
            self.offset += int(nonzero[0])
            self.counts = self.counts[nonzero[0] : nonzero[-1] + 1].copy()

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def _dense(indices: np.ndarray) -> tuple[int, np.ndarray]:
    """(offset, counts) of a batch of bucket indices."""
    if not len(indices):
        return 0, np.zeros(0, dtype=np.int64)
    lo = int(indices.min())
    return lo, np.bincount(indices - lo)


class QuantileSketch(Statistic):
    """Quantiles of a number per event with relative accuracy ``alpha``; merges and subtracts exactly.

    With ``gamma = (1 + alpha) / (1 - alpha)``, a value ``x > 0`` goes to bucket
    ``i = ceil(log(x) / log(gamma))``, which covers ``(gamma**(i-1), gamma**i]`` and is represented by
    ``2 * gamma**i / (gamma + 1)``. Negative values go to a mirror store keyed by ``|x|``; zeros (and
    subnormal floats) to a zero count. Buckets are integer counts, so ``merge`` adds and ``subtract``
    removes them exactly: the sketch of a window does not depend on how it was assembled.

    Guarantee: ``quantile(q)`` is the representative of the bucket holding the sample's value at
    rank ``floor(q * (n - 1))`` (0-based, in sorted order: ``np.sort(x)[math.floor(q * (n - 1))]``),
    hence ``|estimate - true| <= alpha * |true|`` (up to float rounding of the logarithm).
    No buckets are set up front; memory is one count per bucket between the smallest and largest
    magnitude seen: about ``ln(max/min) / (2 * alpha)`` buckets (~1,000 for 1e-3..1e6 at alpha=0.01),
    a byte each while the counts stay below 128 (as in a sliding window's pane), wider as they grow.
    None and NaN are missing values and are skipped; inf and non-numbers raise.

    >>> s = QuantileSketch(alpha=0.01); s.update_many(np.arange(1.0, 101.0))
    >>> abs(s.quantile(0.5) - 50.0) <= 0.01 * 50.0
    True
    """

    def __init__(self, alpha: float = 0.01, of: str = "score") -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        self.of = of
        self.gamma = (1.0 + self.alpha) / (1.0 - self.alpha)
        self._log_gamma = math.log(self.gamma)
        self.positive = _Store()
        self.negative = _Store()
        self.zeros = 0

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "of": self.of}

    @property
    def n(self) -> int:
        return self.positive.total + self.negative.total + self.zeros

    def _batch(self, xs: Any) -> tuple[tuple[int, np.ndarray], tuple[int, np.ndarray], int]:
        values = present_numbers(xs)
        magnitude = np.abs(values)
        nonzero = magnitude >= _TINY
        index = np.ceil(np.log(magnitude[nonzero]) / self._log_gamma).astype(np.int64)
        positive = values[nonzero] > 0
        return _dense(index[positive]), _dense(index[~positive]), int(len(values) - nonzero.sum())

    def _apply(self, batch, sign: int) -> None:
        (p_off, p_counts), (n_off, n_counts), zeros = batch
        self.positive.add(p_off, p_counts, sign)
        self.negative.add(n_off, n_counts, sign)
        self.zeros += sign * zeros

    def update(self, x: Any) -> None:
        self._apply(self._batch([x]), 1)

    def update_many(self, xs: Any) -> None:
        self._apply(self._batch(xs), 1)

    def revert(self, x: Any) -> None:
        self._apply(self._batch([x]), -1)

    def _check(self, other: QuantileSketch) -> None:
        if other.alpha != self.alpha:
            raise ValueError(f"cannot combine sketches with alpha {self.alpha} and {other.alpha}")

    def merge(self, other: QuantileSketch) -> None:
        self._check(other)
        self._apply(((other.positive.offset, other.positive.counts), (other.negative.offset, other.negative.counts), other.zeros), 1)

    def subtract(self, other: QuantileSketch) -> None:
        self._check(other)
        self._apply(((other.positive.offset, other.positive.counts), (other.negative.offset, other.negative.counts), other.zeros), -1)

    def _value(self, index: int) -> float:
        return 2.0 * math.exp(index * self._log_gamma) / (self.gamma + 1.0)

    def quantile(self, q: float) -> float:
        """The value at rank ``floor(q * (n - 1))`` within relative error ``alpha``; NaN when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        n = self.n
        if not n:
            return math.nan
        rank = math.floor(q * (n - 1))
        neg = self.negative.counts
        n_neg = int(neg.sum())
        if rank < n_neg:
            # Negative buckets run from large |x| (the smallest values) down to small |x|.
            j = int(np.searchsorted(np.cumsum(neg[::-1]), rank, side="right"))
            return -self._value(self.negative.offset + len(neg) - 1 - j)
        rank -= n_neg
        if rank < self.zeros:
            return 0.0
        rank -= self.zeros
        j = int(np.searchsorted(np.cumsum(self.positive.counts), rank, side="right"))
        return self._value(self.positive.offset + j)

    def get(self) -> float | dict[str, float]:
        """The median."""
        return self.quantile(0.5)


class Quantiles(QuantileSketch):
    """Quantiles of ``of`` (``"score"``, ``"prediction"``, ``"features.<name>"``, ``"delay"``...),
    published with a ``quantile`` label. Error bound as :class:`QuantileSketch`: each value is within
    ``alpha * |true|`` of the sample quantile at rank ``floor(q * (n - 1))``.

    >>> qs = Quantiles([0.5, 0.9], of="score"); qs.update_many(np.linspace(0.01, 1.0, 100))
    >>> {k: round(v, 2) for k, v in qs.get().items()}
    {'0.5': 0.5, '0.9': 0.9}
    """

    output_label = "quantile"

    def __init__(self, qs: Sequence[float] = (0.5, 0.9, 0.99), of: str = "score", alpha: float = 0.01) -> None:
        qs = tuple(float(q) for q in qs)
        if not qs or any(not 0.0 <= q <= 1.0 for q in qs):
            raise ValueError(f"qs must be probabilities in [0, 1], e.g. [0.5, 0.9, 0.99]; got {qs!r}")
        super().__init__(alpha=alpha, of=of)
        self.qs = qs

    def _params(self) -> dict[str, Any]:
        return {"qs": list(self.qs), "of": self.of, "alpha": self.alpha}

    def get(self) -> dict[str, float] | float:
        if not self.n:
            return math.nan
        return {str(q): self.quantile(q) for q in self.qs}


class FeedbackDelay(Quantiles):
    """Quantiles of the feedback delay: feedback time minus prediction time, in seconds.

    >>> d = FeedbackDelay([0.5]); d.update_many(np.array([60.0, 120.0, 3600.0])); round(d.get()["0.5"])
    120
    """

    default_name = "feedback_delay_seconds"

    def __init__(self, qs: Sequence[float] = (0.5, 0.9, 0.99), alpha: float = 0.01) -> None:
        super().__init__(qs, of="delay", alpha=alpha)

    def _params(self) -> dict[str, Any]:
        return {"qs": list(self.qs), "alpha": self.alpha}
