"""Classification metrics over pairs: exact, mergeable and subtractable sufficient statistics.

Label metrics (``Accuracy``, ``Precision``, ``Recall``, ``F1``) read ``(y_true, y_pred)``; probability
metrics (``LogLoss``, ``BrierScore``, and ``ROCAUC``, ``Calibration`` in ``binned``) read ``(y_true, score)``,
where ``score`` is P(``pos_label``) as a float, or a class -> probability map.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from numbers import Real
from typing import Any, Literal

import numpy as np

from .base import Statistic
from .confusion import ConfusionMatrix
from .terms import MeanOfTerms

__all__ = ["Accuracy", "Precision", "Recall", "F1", "LogLoss", "BrierScore"]

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


def __getattr__(name: str) -> Any:
    # The binned operators moved to .binned; pickles written before name them here, so they still load.
    if name in ("ROCAUC", "Calibration", "_Binned"):
        from . import binned

        return getattr(binned, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
