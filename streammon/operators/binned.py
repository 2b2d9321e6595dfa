"""Probability metrics over fixed score bins: ROC AUC (sparse cells) and calibration error (dense bins).

Both read ``(y_true, score)`` like the other probability metrics in ``classification``, and keep integer
counts per bin, so ``merge`` adds them and ``subtract`` removes them exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable
from typing import Any

import numpy as np

from .base import Statistic
from .classification import _probabilities
from .counts import add_counts, narrowest, owned
from .terms import one_row

__all__ = ["ROCAUC", "Calibration"]

_NO_KEYS = np.zeros(0, dtype=np.int64)
_NO_KEYS.flags.writeable = False  # shared by every empty operator: never written, only replaced
@functools.cache
def _edges(bins: int) -> np.ndarray:
    # One read-only array per number of bins, shared by every pane's operator (and pickled once per checkpoint).
    edges = np.linspace(0.0, 1.0, bins + 1)
    edges.flags.writeable = False
    return edges


def _key_type(bins: int) -> type[np.integer]:
    top = 2 * bins + 1
    return np.uint16 if top <= 0xFFFF else np.uint32 if top <= 0xFFFF_FFFF else np.int64


class _Binned(Statistic):
    """Per-bin sums over (y_true, score); ``merge`` adds them, ``subtract`` removes them.

    Subclasses give a batch's sums in ``_sums``, their own in ``_state`` and add sums with a sign in ``_add``.
    """

    of = "score"
    requires_labels = False

    def __init__(self, pos_label: Hashable, bins: int) -> None:
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        self.pos_label = pos_label
        self.bins = int(bins)

    def _params(self) -> dict[str, Any]:
        return {"pos_label": self.pos_label, "bins": self.bins}

    def _sums(self, y_true: Any, score: Any) -> Any:
        raise NotImplementedError

    def _state(self) -> Any:
        raise NotImplementedError

    def _add(self, sums: Any, sign: int) -> None:
        raise NotImplementedError

    def update(self, y_true: Any, score: Any) -> None:
        self._add(self._sums(one_row(y_true), one_row(score)), 1)

    def update_many(self, y_true: Any, score: Any) -> None:
        self._add(self._sums(y_true, score), 1)

    def revert(self, y_true: Any, score: Any) -> None:
        self._add(self._sums(one_row(y_true), one_row(score)), -1)

    def _check(self, other: _Binned) -> None:
        if other.bins != self.bins:
            raise ValueError(f"cannot combine {type(self).__name__} operators with different bins ({self.bins} and {other.bins})")

    def merge(self, other: _Binned) -> None:
        self._check(other)
        self._add(other._state(), 1)

    def subtract(self, other: _Binned) -> None:
        self._check(other)
        self._add(other._state(), -1)




class ROCAUC(_Binned):
    """Area under the ROC curve (binary) from per-class counts over fixed score bins.

    Score ``s`` goes to cell ``round(s * bins)`` (``bins + 1`` cells, centred on the multiples of
    ``1 / bins``); pairs sharing a cell count as ties (half a concordant pair), as tied scores do in
    ``sklearn.metrics.roc_auc_score``. Hence::

        |AUC_binned - AUC_exact| <= 0.5 * (positive-negative pairs sharing a cell) / (n_pos * n_neg)

    which :meth:`error_bound` returns for the data seen. The value is exact when every score is a
    multiple of ``1 / bins``. Memory follows the data, never the bins: a count per occupied (cell, class)
    in a 2-byte key (4 bytes above 32,767 bins) and the narrowest integer its counts fit (1 byte up to
    127, widened as they grow). A sliding window's pane that saw ``k`` distinct scores holds at most
    ``2 k`` counts, ~3 bytes each at the default bins.

    >>> auc = ROCAUC(); auc.update_many(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])); auc.get()
    0.75
    """

    def __init__(self, pos_label: Hashable = 1, bins: int = 10_000) -> None:
        super().__init__(pos_label, bins)
        # The occupied (cell, class) pairs as sorted keys 2 * cell + is_positive, and their counts.
        # Kept without zeros, so the state follows the data: what leaves a window frees its cells.
        self.keys: np.ndarray = _NO_KEYS
        self.counts: np.ndarray = _NO_KEYS

    @property
    def cells(self) -> int:
        """How many (cell, class) counts the operator holds."""
        return len(self.keys)

    def _sums(self, y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
        is_pos, p = _probabilities(y_true, score, self.pos_label, of_true=False)
        keys = np.rint(p * self.bins).astype(np.int64) * 2 + is_pos
        if len(keys) == 1:
            return keys.astype(_key_type(self.bins)), np.ones(1, dtype=np.int8)
        keys, counts = np.unique(keys, return_counts=True)
        return keys.astype(_key_type(self.bins)), counts

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.keys, self.counts

    def _add(self, sums: tuple[np.ndarray, np.ndarray], sign: int) -> None:
        keys, counts = sums
        if not len(keys):
            return
        if not len(self.keys):  # copies: a merged operator shares nothing
            self.keys, self.counts = keys.copy(), narrowest(counts.astype(np.int64) * sign)
            return
        at = np.searchsorted(self.keys, keys)
        new = at == len(self.keys)
        new[~new] = self.keys[at[~new]] != keys[~new]
        if new.any():
            # np.insert places all the new keys in one O(held + new) pass; sorted keys stay sorted.
            self.keys = np.insert(self.keys, at[new], keys[new])
            self.counts = np.insert(self.counts, at[new], 0)
            at = np.searchsorted(self.keys, keys)
        self.counts, values = add_counts(self.counts, at, counts.astype(np.int64) * sign)
        if not values.all():
            kept = self.counts != 0
            self.keys, self.counts = self.keys[kept], self.counts[kept]

    def _pairs(self) -> tuple[float, float, float] | None:
        if not len(self.keys):
            return None
        cell = self.keys >> 1
        positive = (self.keys & 1).astype(bool)
        # One slot per occupied cell, in score order: the dense arrays without their empty cells.
        slot = np.cumsum(np.concatenate(([True], cell[1:] != cell[:-1]))) - 1
        counts = self.counts.astype(np.float64)
        pos, neg = np.zeros(int(slot[-1]) + 1), np.zeros(int(slot[-1]) + 1)
        pos[slot[positive]] = counts[positive]
        neg[slot[~positive]] = counts[~positive]
        n_pairs = pos.sum() * neg.sum()
        if not n_pairs:
            return None
        neg_below = np.cumsum(neg) - neg
        # Elementwise products, not BLAS dot: a 10k-long dot costs milliseconds in thread start-up here.
        return float((pos * neg_below).sum()), float((pos * neg).sum()), float(n_pairs)

    def get(self) -> float:
        pairs = self._pairs()
        if pairs is None:
            return math.nan
        concordant, tied, n_pairs = pairs
        return (concordant + 0.5 * tied) / n_pairs

    def error_bound(self) -> float:
        """Largest possible distance of :meth:`get` from the exact AUC of the pairs seen."""
        pairs = self._pairs()
        return math.nan if pairs is None else 0.5 * pairs[1] / pairs[2]

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Earlier versions kept dense arrays "pos" and "neg" of bins + 1 cells (None until first used),
        # pickled as they were or, when mostly empty, as "_sparse" (cells, their used indices, values).
        if "keys" not in state:
            if "_sparse" in state:
                _, used, values = state.pop("_sparse")
                pos, neg = values["pos"], values["neg"]
            else:
                dense_pos, dense_neg = state.pop("pos", None), state.pop("neg", None)
                used = np.arange(0 if dense_pos is None else len(dense_pos))
                pos, neg = (dense_pos, dense_neg) if dense_pos is not None else (used, used)
            keys = np.concatenate([np.asarray(used, dtype=np.int64) * 2 + 1, np.asarray(used, dtype=np.int64) * 2])
            counts = np.concatenate([pos, neg]).astype(np.int64)
            order = np.argsort(keys, kind="stable")
            kept = counts[order] != 0
            keys, counts = keys[order][kept], counts[order][kept]
            state["keys"] = keys.astype(_key_type(state["bins"]))
            state["counts"] = narrowest(counts) if len(counts) else _NO_KEYS
        state["keys"], state["counts"] = owned(state["keys"]), owned(state["counts"])
        self.__dict__.update(state)


class Calibration(_Binned):
    """Expected calibration error (binary) over ``bins`` equal-width bins of P(``pos_label``).

    ``ECE = sum_b (n_b / n) * |positives_b / n_b - mean score_b| = sum_b |positives_b - score sum_b| / n``.
    Bin ``b`` holds scores in ``[edges[b], edges[b + 1])`` with ``edges = np.linspace(0, 1, bins + 1)``;
    the last bin also holds 1. Memory: three dense arrays of ``bins`` (80 bytes each at the default 10),
    allocated on first use; the edges are shared.

    >>> c = Calibration(); c.update_many(np.array([1, 0, 1]), np.array([0.95, 0.05, 0.55])); round(c.get(), 6)
    0.183333
    """

    def __init__(self, pos_label: Hashable = 1, bins: int = 10) -> None:
        super().__init__(pos_label, bins)
        self.count: np.ndarray | None = None
        self.positives: np.ndarray | None = None
        self.score_sum: np.ndarray | None = None
        self.edges = _edges(self.bins)

    def _sums(self, y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        is_pos, p = _probabilities(y_true, score, self.pos_label, of_true=False)
        b = np.searchsorted(self.edges[1:-1], p, side="right")
        return (np.bincount(b, minlength=self.bins), np.bincount(b[is_pos], minlength=self.bins),
                np.bincount(b, weights=p, minlength=self.bins))

    def _state(self) -> tuple[np.ndarray, ...] | tuple[None, ...]:
        if self.count is None or self.positives is None or self.score_sum is None:
            return None, None, None
        return self.count, self.positives, self.score_sum

    # The arrays are allocated together: all three, or none.
    def _add(self, sums: tuple[np.ndarray, ...] | tuple[None, ...], sign: int) -> None:
        if sums[0] is None:
            return
        if self.count is None or self.positives is None or self.score_sum is None:
            self.count, self.positives, self.score_sum = (np.zeros_like(arr) for arr in sums)
        for held, arr in zip((self.count, self.positives, self.score_sum), sums):
            held += sign * np.asarray(arr)
        self.score_sum[self.count == 0] = 0.0  # drop the rounding left by subtracting floats

    def get(self) -> float:
        if self.count is None or self.positives is None or self.score_sum is None or not self.count.sum():
            return math.nan
        return float(np.abs(self.positives - self.score_sum).sum() / self.count.sum())

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Earlier versions pickled mostly empty arrays as "_sparse": (bins, used indices, values per array).
        held = state.pop("_sparse", None)
        if held is not None:
            size, used, values = held
            for name, vals in values.items():
                state[name] = np.zeros(size, dtype=vals.dtype)
                state[name][used] = vals
        for name in ("count", "positives", "score_sum"):
            if state.get(name) is not None:
                state[name] = owned(state[name])
        state["edges"] = _edges(state["bins"])  # shared again, as in a fresh operator
        self.__dict__.update(state)
