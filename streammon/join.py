"""The keyed join of predictions with their feedback (design section 5).

Either side may come first. A prediction waits ``feedback_ttl`` of event time for its feedback; an
early feedback waits ``prediction_ttl`` for its prediction. Time-outs are judged against the stream
time when the other side arrives, so the result does not depend on when expiry sweeps run.
Duplicates (same id, same side) are counted and ignored: first wins. After a join the id is
remembered, with its prediction time, until ``feedback_ttl`` passes, so a second feedback for it
is a duplicate too.

:class:`JoinStore` is the contract; :class:`streammon.memory_store.MemoryJoinStore` is the default store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["JoinStore", "CommittingStore", "OneEventAtATime", "JoinCounts", "Joined", "Pair", "DUPLICATE", "as_stored"]

# (prediction ts, feedback ts, series code, y_true, y_pred, score, id)
Pair = tuple[float, float, int, Any, Any, Any, str]

#: returned by ``add_prediction``/``add_feedback`` for an event that is a duplicate (and ignored)
DUPLICATE = "duplicate"


@dataclass
class JoinCounts:
    joined: int = 0
    duplicate_predictions: int = 0
    duplicate_feedback: int = 0
    expired_predictions: int = 0
    expired_feedback: int = 0
    evicted_predictions: int = 0
    evicted_feedback: int = 0


class JoinStore(Protocol):
    """The state behind the join. A disk-backed store implements the same calls."""

    counts: JoinCounts

    def add_prediction(self, id: str, ts: float, code: int, prediction: Any, score: Any, now: float) -> Pair | str | None:
        """The pair if the feedback was waiting, ``DUPLICATE``, or None (now pending)."""

    def add_feedback(self, id: str, ts: float, label: Any, now: float) -> Pair | str | None:
        """The pair if the prediction was waiting, ``DUPLICATE``, or None (now pending)."""

    def join(self, is_prediction: Sequence[bool], ids: Sequence[str], times: Sequence[float], codes: Sequence[int],
             values: Sequence[Any], scores: Sequence[Any], nows: Sequence[float]) -> Joined:
        """A batch of the two calls above, in order, as columns (see :meth:`streammon.memory_store.MemoryJoinStore.join`)."""

    def expire(self, now: float) -> None: ...

    @property
    def pending_predictions(self) -> int: ...

    @property
    def pending_feedback(self) -> int: ...

    def configure(self, *, feedback_ttl: float, prediction_ttl: float, max_pending: int) -> None:
        """Apply the app's current settings (after :meth:`restore`, the app's settings win over the snapshot's)."""

    def snapshot(self) -> Any:
        """What a checkpoint saves of the store (picklable); a disk-backed store returns where its data is."""

    def restore(self, saved: Any) -> None:
        """Continue from what :meth:`snapshot` returned."""


def as_stored(score: Any) -> Any:
    """A score as a store gives it back with its pair: a map as it is, a number as a float, NaN as None."""
    if score is None or isinstance(score, dict):
        return score
    score = float(score)
    return None if score != score else score


class Joined(NamedTuple):
    """What :meth:`JoinStore.join` made of a batch: which events were duplicates, and the
    pairs completed, as columns (``at`` is the index of the event that completed each pair)."""

    accepted: list[bool]
    at: list[int]
    pred_ts: list[float]
    fb_ts: list[float]
    code: list[int]
    y_true: list[Any]
    y_pred: list[Any]
    score: list[Any]


@runtime_checkable
class CommittingStore(Protocol):
    """A store that persists itself (:class:`streammon.disk_store.DiskJoinStore`): a checkpoint writes the
    rest of the state into the store's own atomic commit, so state and offsets move together."""

    def commit(self, meta: Mapping[bytes, bytes] = ...) -> None: ...

    def meta(self, key: bytes) -> bytes | None: ...

    def close(self) -> None: ...


class OneEventAtATime:
    """``add_prediction``/``add_feedback`` for a store that implements ``join``: one event as a batch of one."""

    def join(self, is_prediction: Sequence[bool], ids: Sequence[str], times: Sequence[float], codes: Sequence[int],
             values: Sequence[Any], scores: Sequence[Any], nows: Sequence[float]) -> Joined:
        raise NotImplementedError

    def add_prediction(self, id: str, ts: float, code: int, prediction: Any, score: Any, now: float) -> Pair | str | None:
        return _one(self.join([True], [id], [ts], [code], [prediction], [score], [now]), id)

    def add_feedback(self, id: str, ts: float, label: Any, now: float) -> Pair | str | None:
        return _one(self.join([False], [id], [ts], [0], [label], [None], [now]), id)


def _one(got: Joined, id: str) -> Pair | str | None:
    if not got.accepted[0]:
        return DUPLICATE
    if got.at:
        return (got.pred_ts[0], got.fb_ts[0], got.code[0], got.y_true[0], got.y_pred[0], got.score[0], id)
    return None
