"""Classification metrics over pairs: exact, mergeable and subtractable sufficient statistics.

Label metrics (``Accuracy``, ``Precision``, ``Recall``, ``F1``) read ``(y_true, y_pred)``; probability
metrics (``LogLoss``, ``BrierScore``, ``ROCAUC``, ``Calibration``) read ``(y_true, score)``, where
``score`` is P(``pos_label``) as a float, or a class -> probability map.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from numbers import Real
from typing import Any, Literal

import numpy as np

from .base import Statistic
from .confusion import ConfusionMatrix
from .terms import MeanOfTerms, one_row

__all__ = ["Accuracy", "Precision", "Recall", "F1", "LogLoss", "BrierScore", "ROCAUC", "Calibration"]

Average = Literal["binary", "macro", "micro", "weighted"]
_AVERAGES = ("binary", "macro", "micro", "weighted")


def _column(xs: Any) -> np.ndarray:
    arr = np.asarray(xs)
    # Strings and mixed values are compared as Python objects, never as numpy unicode arrays.
    return arr if arr.dtype.kind in "iufb" else np.asarray(xs, dtype=object)


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"y_true and the other column differ in length ({len(a)} != {len(b)})")


def _is(y: np.ndarray, cls: Hashable) -> np.ndarray:
    if y.dtype != object and not isinstance(cls, Real):
        return np.zeros(len(y), dtype=bool)
    return np.asarray(y == cls, dtype=bool)


def _from_map(score: Mapping, cls: Hashable) -> float:
    # Wire maps have string keys; y_true may be an int, so its string form is looked up too.
    if cls in score:
        return float(score[cls])
    return float(score.get(str(cls), 0.0))


def _probabilities(y_true: Any, score: Any, pos_label: Hashable, *, of_true: bool) -> tuple[np.ndarray, np.ndarray]:
    """(is_pos, p) per row: p = P(pos_label), or P(y_true) when ``of_true``. Raises on bad scores."""
    y, s = _column(y_true), _column(score)
    _same_length(y, s)
    is_pos = _is(y, pos_label)
    if s.dtype.kind in "iuf":
        p = s.astype(np.float64)
        if of_true:
            p = np.where(is_pos, p, 1.0 - p)
    else:
        p = np.empty(len(s), dtype=np.float64)
        for i, (yt, sc) in enumerate(zip(y.tolist(), s.tolist())):
            if isinstance(sc, Mapping):
                p[i] = _from_map(sc, yt if of_true else pos_label)
            elif isinstance(sc, Real) and not isinstance(sc, bool):
                v = float(sc)
                p[i] = v if not of_true or is_pos[i] else 1.0 - v
            else:
                raise TypeError(f"score must be a probability or a class -> probability map, got {sc!r}")
    if not np.all((p >= 0.0) & (p <= 1.0)):  # also refuses NaN
        raise ValueError("scores must be probabilities in [0, 1]")
    return is_pos, p


class Accuracy(MeanOfTerms):
    """Share of pairs whose prediction equals the true value (``sklearn.metrics.accuracy_score``).

    >>> acc = Accuracy(); acc.update_many(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])); acc.get()
    0.5
    """

    def _terms(self, y_true: Any, y_pred: Any) -> np.ndarray:
        y, p = _column(y_true), _column(y_pred)
        _same_length(y, p)
        return np.asarray(y == p, dtype=np.float64)


class _ConfusionMetric(Statistic):
    """A label metric finalised from a confusion matrix; ``zero_division`` is 0 as in scikit-learn."""

    of = "y_pred"

    def __init__(self, pos_label: Hashable = 1, average: Average = "binary") -> None:
        if average not in _AVERAGES:
            raise ValueError(f"average={average!r} is not a choice; use one of {', '.join(map(repr, _AVERAGES))}")
        self.pos_label = pos_label
        self.average = average
        self.cm = ConfusionMatrix()

    def _params(self) -> dict[str, Any]:
        return {"pos_label": self.pos_label, "average": self.average}

    def update(self, y_true: Any, y_pred: Any) -> None:
        self.cm.update(y_true, y_pred)

    def update_many(self, y_true: Any, y_pred: Any) -> None:
        self.cm.update_many(_column(y_true), _column(y_pred))

    def revert(self, y_true: Any, y_pred: Any) -> None:
        self.cm.revert(y_true, y_pred)

    def merge(self, other: _ConfusionMetric) -> None:
        self.cm.merge(other.cm)

    def subtract(self, other: _ConfusionMetric) -> None:
        self.cm.subtract(other.cm)

    @staticmethod
    def _score(tp: int, support: int, predicted: int) -> float:
        raise NotImplementedError

    def get(self) -> float:
        if not self.cm.n:
            return math.nan
        tp: dict[Hashable, int] = {}
        support: dict[Hashable, int] = {}
        predicted: dict[Hashable, int] = {}
        for (t, p), v in self.cm.counts.items():
            support[t] = support.get(t, 0) + v
            predicted[p] = predicted.get(p, 0) + v
            if t == p:
                tp[t] = tp.get(t, 0) + v
        if self.average == "binary":
            c = self.pos_label
            return self._score(tp.get(c, 0), support.get(c, 0), predicted.get(c, 0))
        if self.average == "micro":
            # Single-label data: every pair is one prediction and one true value, so micro totals are n.
            return self._score(sum(tp.values()), self.cm.n, self.cm.n)
        classes = set(support) | set(predicted)
        scores = {c: self._score(tp.get(c, 0), support.get(c, 0), predicted.get(c, 0)) for c in classes}
        if self.average == "macro":
            return sum(scores.values()) / len(scores)
        return sum(scores[c] * support.get(c, 0) for c in classes) / self.cm.n


class Precision(_ConfusionMetric):
    """Precision, as ``sklearn.metrics.precision_score(..., zero_division=0)``.

    ``average="binary"`` scores ``pos_label`` alone (one-vs-rest when there are more classes);
    ``"macro"``, ``"micro"``, ``"weighted"`` average over every class seen in either column.

    >>> p = Precision(); p.update_many(np.array([1, 0, 1, 0]), np.array([1, 1, 1, 0])); round(p.get(), 4)
    0.6667
    """

    @staticmethod
    def _score(tp: int, support: int, predicted: int) -> float:
        return tp / predicted if predicted else 0.0


class Recall(_ConfusionMetric):
    """Recall, as ``sklearn.metrics.recall_score(..., zero_division=0)``; ``average`` as in :class:`Precision`.

    >>> r = Recall(average="macro"); r.update_many(np.array([1, 0, 1, 0]), np.array([1, 1, 1, 0])); r.get()
    0.75
    """

    @staticmethod
    def _score(tp: int, support: int, predicted: int) -> float:
        return tp / support if support else 0.0


class F1(_ConfusionMetric):
    """F1 = 2 tp / (2 tp + fp + fn), as ``sklearn.metrics.f1_score(..., zero_division=0)``.

    >>> f = F1(); f.update_many(np.array([1, 0, 1, 0]), np.array([1, 1, 1, 0])); f.get()
    0.8
    """

    @staticmethod
    def _score(tp: int, support: int, predicted: int) -> float:
        return 2 * tp / (support + predicted) if support + predicted else 0.0


class _ProbabilityMean(MeanOfTerms):
    """Mean of a per-pair term over (y_true, score)."""

    of = "score"
    requires_labels = False

    def __init__(self, pos_label: Hashable = 1) -> None:
        super().__init__()
        self.pos_label = pos_label

    def _params(self) -> dict[str, Any]:
        return {"pos_label": self.pos_label}


class LogLoss(_ProbabilityMean):
    """Mean cross-entropy, as ``sklearn.metrics.log_loss``.

    A float score is P(``pos_label``) (binary); a class -> probability map scores multiclass pairs by
    the probability of the true class (a class missing from the map has probability 0). Probabilities
    are clipped to ``[eps, 1 - eps]`` like scikit-learn, with ``eps`` the float64 machine epsilon.

    >>> ll = LogLoss(); ll.update_many(np.array([1, 0]), np.array([0.8, 0.4])); round(ll.get(), 6)
    0.366985
    """

    def __init__(self, pos_label: Hashable = 1, eps: float = float(np.finfo(np.float64).eps)) -> None:
        super().__init__(pos_label)
        self.eps = eps

    def _params(self) -> dict[str, Any]:
        return {"pos_label": self.pos_label, "eps": self.eps}

    def _terms(self, y_true: Any, score: Any) -> np.ndarray:
        _, p = _probabilities(y_true, score, self.pos_label, of_true=True)
        return -np.log(np.clip(p, self.eps, 1.0 - self.eps))


class BrierScore(_ProbabilityMean):
    """Mean squared error of P(``pos_label``) against the outcome, as ``sklearn.metrics.brier_score_loss``.

    >>> b = BrierScore(); b.update_many(np.array([1, 0]), np.array([0.8, 0.4])); round(b.get(), 6)
    0.1
    """

    def _terms(self, y_true: Any, score: Any) -> np.ndarray:
        is_pos, p = _probabilities(y_true, score, self.pos_label, of_true=False)
        return (is_pos - p) ** 2


class _Binned(Statistic):
    """Arrays of per-bin sums over (y_true, score); merge adds them, subtract removes them.

    Subclasses name the arrays in ``_fields`` and give a batch's arrays in ``_sums``. Arrays are
    allocated on first use, so empty clones (one per pane and batch) stay small.
    """

    of = "score"
    requires_labels = False
    _fields: tuple[str, ...] = ()

    def __init__(self, pos_label: Hashable, bins: int) -> None:
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        self.pos_label = pos_label
        self.bins = int(bins)
        for name in self._fields:
            setattr(self, name, None)

    def _params(self) -> dict[str, Any]:
        return {"pos_label": self.pos_label, "bins": self.bins}

    def _sums(self, y_true: Any, score: Any) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    # The fields are allocated together: all arrays, or all None.
    def _add(self, sums: tuple[np.ndarray, ...] | tuple[None, ...], sign: int) -> None:
        if sums[0] is None:
            return
        if getattr(self, self._fields[0]) is None:
            for name, arr in zip(self._fields, sums):
                setattr(self, name, np.zeros_like(arr))
        if len(sums[0]) != len(getattr(self, self._fields[0])):
            raise ValueError(f"cannot combine {type(self).__name__} operators with different bins")
        for name, arr in zip(self._fields, sums):
            getattr(self, name)[:] += sign * arr

    def _state(self) -> tuple[np.ndarray, ...] | tuple[None, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def update(self, y_true: Any, score: Any) -> None:
        self._add(self._sums(one_row(y_true), one_row(score)), 1)

    def update_many(self, y_true: Any, score: Any) -> None:
        self._add(self._sums(y_true, score), 1)

    def revert(self, y_true: Any, score: Any) -> None:
        self._add(self._sums(one_row(y_true), one_row(score)), -1)

    def merge(self, other: _Binned) -> None:
        if not self._merge_held(other, 1):
            self._add(other._state(), 1)

    # A pane sees a few hundred distinct scores out of 10,001 cells: checkpoints and scale-out
    # partials store the non-zero cells only, ~100x smaller than the dense arrays. A loaded operator
    # keeps them sparse until it is used, and merging it into another reads the cells as they are,
    # so an exporter merging thousands of pane partials never builds their dense arrays.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        held = state.pop("_held", None)
        if held is not None:  # still as loaded
            state["_sparse"] = held
            for name in self._fields:
                state.pop(name, None)
            return state
        first = state.get(self._fields[0]) if self._fields else None
        if first is not None:
            used = np.flatnonzero(np.any([state[name] != 0 for name in self._fields], axis=0))
            if len(used) * 4 < len(first):
                state["_sparse"] = (len(first), used.astype(np.int32), {n: state.pop(n)[used] for n in self._fields})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        held = state.pop("_sparse", None)
        self.__dict__.update(state)
        if held is not None:
            self._held = held  # the fields stay unset: __getattr__ builds them on first use

    def __getattr__(self, name: str) -> Any:
        held = self.__dict__.get("_held")
        if held is None or name not in type(self)._fields:
            raise AttributeError(name)
        del self.__dict__["_held"]
        size, used, values = held
        for field_name, vals in values.items():
            arr = np.zeros(size, dtype=vals.dtype)
            arr[used] = vals
            setattr(self, field_name, arr)
        return getattr(self, name)

    def _merge_held(self, other: _Binned, sign: int) -> bool:
        held = other.__dict__.get("_held")
        if held is None:
            return False
        size, used, values = held
        if getattr(self, self._fields[0]) is None:
            for name, vals in values.items():
                setattr(self, name, np.zeros(size, dtype=vals.dtype))
        if size != len(getattr(self, self._fields[0])):
            raise ValueError(f"cannot combine {type(self).__name__} operators with different bins")
        for name, vals in values.items():
            getattr(self, name)[used] += sign * vals
        return True

    def subtract(self, other: _Binned) -> None:
        if not self._merge_held(other, -1):
            self._add(other._state(), -1)


class ROCAUC(_Binned):
    """Area under the ROC curve (binary) from per-class counts over fixed score bins.

    Score ``s`` goes to cell ``round(s * bins)`` (``bins + 1`` cells, centred on the multiples of
    ``1 / bins``); pairs sharing a cell count as ties (half a concordant pair), as tied scores do in
    ``sklearn.metrics.roc_auc_score``. Hence::

        |AUC_binned - AUC_exact| <= 0.5 * (positive-negative pairs sharing a cell) / (n_pos * n_neg)

    which :meth:`error_bound` returns for the data seen. The value is exact when every score is a
    multiple of ``1 / bins``. Memory: two int64 arrays of ``bins + 1`` cells, allocated on first use.

    >>> auc = ROCAUC(); auc.update_many(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])); auc.get()
    0.75
    """

    _fields = ("pos", "neg")

    def __init__(self, pos_label: Hashable = 1, bins: int = 10_000) -> None:
        super().__init__(pos_label, bins)

    def _sums(self, y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
        is_pos, p = _probabilities(y_true, score, self.pos_label, of_true=False)
        cells = np.rint(p * self.bins).astype(np.int64)
        size = self.bins + 1
        return np.bincount(cells[is_pos], minlength=size), np.bincount(cells[~is_pos], minlength=size)

    def _pairs(self) -> tuple[float, float, float] | None:
        if self.pos is None:
            return None
        pos, neg = self.pos.astype(np.float64), self.neg.astype(np.float64)
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


class Calibration(_Binned):
    """Expected calibration error (binary) over ``bins`` equal-width bins of P(``pos_label``).

    ``ECE = sum_b (n_b / n) * |positives_b / n_b - mean score_b| = sum_b |positives_b - score sum_b| / n``.
    Bin ``b`` holds scores in ``[edges[b], edges[b + 1])`` with ``edges = np.linspace(0, 1, bins + 1)``;
    the last bin also holds 1.

    >>> c = Calibration(); c.update_many(np.array([1, 0, 1]), np.array([0.95, 0.05, 0.55])); round(c.get(), 6)
    0.183333
    """

    _fields = ("count", "positives", "score_sum")

    def __init__(self, pos_label: Hashable = 1, bins: int = 10) -> None:
        super().__init__(pos_label, bins)
        self.edges = np.linspace(0.0, 1.0, self.bins + 1)

    def _sums(self, y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        is_pos, p = _probabilities(y_true, score, self.pos_label, of_true=False)
        b = np.searchsorted(self.edges[1:-1], p, side="right")
        return (np.bincount(b, minlength=self.bins), np.bincount(b[is_pos], minlength=self.bins),
                np.bincount(b, weights=p, minlength=self.bins))

    def _add(self, sums, sign: int) -> None:
        super()._add(sums, sign)
        if self.count is not None:
            self.score_sum[self.count == 0] = 0.0  # drop the rounding left by subtracting floats

    def get(self) -> float:
        n = 0 if self.count is None else int(self.count.sum())
        if not n:
            return math.nan
        return float(np.abs(self.positives - self.score_sum).sum() / n)
