"""Drift against a reference sample: population stability index and Kolmogorov-Smirnov statistic.

Both fit the reference once, at construction, into fixed cut points; a window then only keeps
integer counts per cell, so panes merge and subtract exactly and a window's value is O(cells).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np

from .base import Statistic
from .counts import add_counts, owned
from .sketch import present_numbers

__all__ = ["PSI", "KS", "load_reference"]


def load_reference(path: str | Path, column: str) -> np.ndarray:
    """The numbers of ``column`` in a Parquet (``.parquet``, ``.pq``) or CSV (``.csv``, ``.csv.gz``) file.

    Nulls and NaN are dropped; the result is float64, ready for ``PSI(reference=...)`` or ``KS(...)``.
    """
    import pyarrow.compute as pc

    path = Path(path)
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        if column not in schema.names:
            raise KeyError(f"{path} has no column {column!r}; its columns are {', '.join(schema.names)}")
        table = pq.read_table(path, columns=[column])
    elif name.endswith((".csv", ".csv.gz")):
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path)
        if column not in table.column_names:
            raise KeyError(f"{path} has no column {column!r}; its columns are {', '.join(table.column_names)}")
    else:
        raise ValueError(f"{path}: load_reference reads .parquet, .pq, .csv or .csv.gz files; convert the file or pass a numpy array")
    values = pc.cast(table.column(column), "float64").to_numpy(zero_copy_only=False)
    return values[~np.isnan(values)]


def _reference(reference: Any) -> np.ndarray:
    ref = present_numbers(np.asarray(reference).reshape(-1))
    if not len(ref):
        raise ValueError("the reference sample has no numbers; pass an array of values or load_reference(path, column)")
    return np.sort(ref)


class _Drift(Statistic):
    """Counts of the window per cell of a fitted reference; subclasses say how cells are cut and read."""

    of = "score"
    counts: np.ndarray

    def _cells(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def clone(self) -> _Drift:
        # The fitted reference is immutable and shared; only the counts are new.
        fresh = copy.copy(self)
        fresh.counts = np.zeros(self.counts.shape, dtype=np.int8)  # widened as they grow
        return fresh

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.counts = owned(self.counts)

    def _add(self, counts: np.ndarray, sign: int) -> None:
        self.counts, _ = add_counts(self.counts, slice(None), counts.astype(np.int64) * sign)

    def _batch(self, xs: Any) -> np.ndarray:
        return np.bincount(self._cells(present_numbers(xs)), minlength=len(self.counts))

    def update(self, x: Any) -> None:
        self._add(self._batch([x]), 1)

    def update_many(self, xs: Any) -> None:
        self._add(self._batch(xs), 1)

    def revert(self, x: Any) -> None:
        self._add(self._batch([x]), -1)

    def _check(self, other: _Drift) -> None:
        if type(other) is not type(self) or other.counts.shape != self.counts.shape:
            raise ValueError(f"cannot combine {self!r} with {other!r}: they were fitted differently")

    def merge(self, other: _Drift) -> None:
        self._check(other)
        self._add(other.counts, 1)

    def subtract(self, other: _Drift) -> None:
        self._check(other)
        self._add(other.counts, -1)

    @property
    def n(self) -> int:
        return int(self.counts.sum())


class PSI(_Drift):
    """Population stability index of the window against a reference sample.

    Bin edges are the reference's quantiles at ``1/bins, ..., (bins-1)/bins`` (``np.quantile``,
    linear), deduplicated when the reference has ties; bin ``b`` holds ``edges[b-1] <= x < edges[b]``,
    the first and last bins are open-ended. ``PSI = sum_b (a_b - e_b) * ln(a_b / e_b)`` with ``a_b``
    and ``e_b`` the window's and the reference's share of bin ``b``, each floored at ``eps``
    (default 1e-4) so that an empty bin adds a large but finite term instead of infinity.
    Exact: a window's value depends only on its integer bin counts.

    >>> ref = np.linspace(0.0, 1.0, 1001)
    >>> psi = PSI(ref); psi.update_many(ref); abs(psi.get()) < 1e-12
    True
    """

    def __init__(self, reference: Any, of: str = "score", bins: int = 10, eps: float = 1e-4) -> None:
        if int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        ref = _reference(reference)
        self.of = of
        self.bins = int(bins)
        self.eps = float(eps)
        self.edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, self.bins + 1)[1:-1]))
        self.expected = np.bincount(self._cells(ref), minlength=len(self.edges) + 1) / len(ref)
        self.counts = np.zeros(len(self.edges) + 1, dtype=np.int8)  # widened as they grow

    def _params(self) -> dict[str, Any]:
        return {"of": self.of, "bins": self.bins, "eps": self.eps}

    def _cells(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, values, side="right")

    def get(self) -> float:
        n = self.n
        if not n:
            return math.nan
        actual = np.maximum(self.counts / n, self.eps)
        expected = np.maximum(self.expected, self.eps)
        return float(((actual - expected) * np.log(actual / expected)).sum())


class KS(_Drift):
    """Two-sample Kolmogorov-Smirnov statistic ``sup_x |F_window(x) - F_reference(x)|``.

    Cut points are the reference's distinct values, or, when it has more than ``cut_points`` of them,
    distinct values at evenly spaced ranks (always including its minimum and maximum). The window
    keeps counts of values equal to each cut and strictly between neighbouring cuts, so both
    ECDFs are known exactly at every cut and just below it, where the statistic is evaluated.
    Since an ECDF difference can only move inside an open interval between cuts by the reference
    mass in that interval::

        0 <= KS_exact - KS.get() <= KS.error_bound = largest reference share strictly between two cuts

    ``error_bound`` is 0 (the value equals ``scipy.stats.ks_2samp(window, reference).statistic``)
    when every distinct reference value is a cut, and about ``1 / cut_points`` otherwise.
    Memory: ``2 * cuts + 1`` counts per window pane, a byte each while they stay below 128.

    >>> ks = KS([1.0, 2.0, 3.0, 4.0]); ks.update_many(np.array([3.0, 4.0, 5.0, 6.0])); ks.get()
    0.5
    """

    def __init__(self, reference: Any, of: str = "score", cut_points: int = 1000) -> None:
        if int(cut_points) != cut_points or cut_points < 2:
            raise ValueError(f"cut_points must be an integer >= 2, got {cut_points!r}")
        ref = _reference(reference)
        self.of = of
        self.cut_points = int(cut_points)
        cuts = np.unique(ref)
        if len(cuts) > self.cut_points:
            cuts = np.unique(ref[np.rint(np.linspace(0, len(ref) - 1, self.cut_points)).astype(np.int64)])
        self.cuts = cuts
        at = np.searchsorted(ref, cuts, side="right")
        below = np.searchsorted(ref, cuts, side="left")
        self.ref_at = at / len(ref)  # F_reference(cut)
        self.ref_below = below / len(ref)  # F_reference just below the cut
        self.error_bound = float(((below[1:] - at[:-1]) / len(ref)).max(initial=0.0))
        self.counts = np.zeros(2 * len(cuts) + 1, dtype=np.int8)  # widened as they grow

    def _params(self) -> dict[str, Any]:
        return {"of": self.of, "cut_points": self.cut_points}

    def _cells(self, values: np.ndarray) -> np.ndarray:
        # Cell 2i: strictly between cut i-1 and cut i; cell 2i+1: equal to cut i.
        i = np.searchsorted(self.cuts, values, side="left")
        equal = np.zeros(len(values), dtype=bool)
        inside = i < len(self.cuts)
        equal[inside] = self.cuts[i[inside]] == values[inside]
        return 2 * i + equal

    def get(self) -> float:
        n = self.n
        if not n:
            return math.nan
        cdf = np.cumsum(self.counts) / n
        at = np.abs(cdf[1::2] - self.ref_at).max()
        below = np.abs(cdf[0:-1:2] - self.ref_below).max()
        # Above the largest cut the reference ECDF is 1 and so is the window's at +inf: nothing to add.
        return float(max(at, below))
