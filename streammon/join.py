"""The keyed join of predictions with their feedback (design section 5).

Either side may come first. A prediction waits ``feedback_ttl`` of event time for its feedback; an
early feedback waits ``prediction_ttl`` for its prediction. Time-outs are judged against the stream
time when the other side arrives, so the result does not depend on when expiry sweeps run.
Duplicates (same id, same side) are counted and ignored: first wins. After a join the id is
remembered, with its prediction time, until ``feedback_ttl`` passes, so a second feedback for it
is a duplicate too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["JoinStore", "MemoryJoinStore", "JoinCounts", "Pair", "DUPLICATE"]

_EMPTY, _PENDING, _JOINED = 0, 1, 2


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
    """The state behind the join. A disk-backed store implements the same four calls."""

    counts: JoinCounts

    def add_prediction(self, id: str, ts: float, code: int, prediction: Any, score: Any, now: float) -> Pair | str | None:
        """The pair if the feedback was waiting, ``DUPLICATE``, or None (now pending)."""

    def add_feedback(self, id: str, ts: float, label: Any, now: float) -> Pair | str | None:
        """The pair if the prediction was waiting, ``DUPLICATE``, or None (now pending)."""

    def expire(self, now: float) -> None: ...

    @property
    def pending_predictions(self) -> int: ...

    @property
    def pending_feedback(self) -> int: ...


class MemoryJoinStore:
    """Pending predictions in columns (numpy) behind one ``dict`` from id to slot.

    Slots are handed out in arrival order, so the oldest entry, the one evicted past
    ``max_pending``, is the first live slot; holes left by joins are squeezed out when the arrays
    fill up. About 180 bytes per pending prediction with 32-character ids (see docs/benchmarks.md).

    >>> store = MemoryJoinStore(feedback_ttl=3600, prediction_ttl=600)
    >>> store.add_prediction("a", 10.0, 0, 1, 0.9, now=10.0)
    >>> store.add_feedback("a", 70.0, 1, now=70.0)
    (10.0, 70.0, 0, 1, 1, 0.9, 'a')
    """

    def __init__(self, *, feedback_ttl: float, prediction_ttl: float, max_pending: int = 10_000_000, remember_joined: bool = True) -> None:
        self.feedback_ttl = feedback_ttl
        self.prediction_ttl = prediction_ttl
        self.max_pending = max_pending
        self.remember_joined = remember_joined
        self.counts = JoinCounts()
        self._slot: dict[str, int] = {}
        self._grow_to(1024)
        self._tail = 0  # no live slot below this
        self._head = 0  # next free slot
        self._live = 0  # pending + joined markers
        self._pending = 0
        self._oldest_ts = float("inf")  # lower bound of live ts, to skip needless sweeps
        self._map_scores: dict[int, Any] = {}  # class -> probability maps, rare enough to keep aside
        # id -> (ts, label); ordered by arrival so the oldest is evicted first
        self._early: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._early_oldest_ts = float("inf")

    # -- columns -------------------------------------------------------------------------
    def _grow_to(self, cap: int) -> None:
        old = getattr(self, "_ts", None)
        n = 0 if old is None else len(old)
        def grow(arr, dtype, fill):
            new = np.full(cap, fill, dtype=dtype)
            if arr is not None:
                new[:n] = arr
            return new
        self._ts = grow(old, np.float64, np.nan)
        self._code = grow(getattr(self, "_code", None), np.int32, 0)
        self._state = grow(getattr(self, "_state", None), np.int8, _EMPTY)
        self._score = grow(getattr(self, "_score", None), np.float64, np.nan)
        self._pred = grow(getattr(self, "_pred", None), object, None)
        self._ids = grow(getattr(self, "_ids", None), object, None)

    def _make_room(self) -> None:
        if self._head < len(self._ts):
            return
        if self._live <= len(self._ts) // 2:
            self._compact()
        else:
            self._grow_to(len(self._ts) * 2)

    def _compact(self) -> None:
        lo, hi = self._tail, self._head
        live = np.flatnonzero(self._state[lo:hi] != _EMPTY) + lo
        n = len(live)
        maps = {}
        for new, old in enumerate(live.tolist()):
            self._slot[self._ids[old]] = new
            if old in self._map_scores:
                maps[new] = self._map_scores[old]
        self._map_scores = maps
        for arr, fill in ((self._ts, np.nan), (self._code, 0), (self._state, _EMPTY), (self._score, np.nan), (self._pred, None), (self._ids, None)):
            arr[:n] = arr[live]
            arr[n:hi] = fill
        self._tail, self._head = 0, n

    def _free(self, slot: int) -> None:
        if self._state[slot] == _PENDING:
            self._pending -= 1
        self._state[slot] = _EMPTY
        self._pred[slot] = None
        self._ids[slot] = None
        self._map_scores.pop(slot, None)
        self._live -= 1

    def _ensure_capacity(self, now: float) -> None:
        # Timed-out entries leave before a live one is evicted, so which entries survive does not
        # depend on when sweeps happened to run.
        if self._live >= self.max_pending:
            self._expire_predictions(now)
            if self._live >= self.max_pending:
                self._evict_oldest()
        self._make_room()

    def _evict_oldest(self) -> None:
        state = self._state
        while state[self._tail] == _EMPTY:
            self._tail += 1
        slot = self._tail
        if state[slot] == _PENDING:
            self.counts.evicted_predictions += 1
        del self._slot[self._ids[slot]]
        self._free(slot)

    # -- the join ------------------------------------------------------------------------
    def add_prediction(self, id: str, ts: float, code: int, prediction: Any, score: Any, now: float) -> Pair | str | None:
        slot = self._slot.get(id)
        if slot is not None:
            if self._ts[slot] >= now - self.feedback_ttl:
                self.counts.duplicate_predictions += 1
                return DUPLICATE
            self._expire_slot(id, slot)
        early = self._early.pop(id, None)
        if early is not None:
            fb_ts, label = early
            if fb_ts >= now - self.prediction_ttl:
                self.counts.joined += 1
                self._remember(id, ts, code, now)
                return (ts, fb_ts, code, label, prediction, score, id)
            self.counts.expired_feedback += 1
        slot = self._new_slot(id, ts, code, _PENDING, now)
        self._pred[slot] = prediction
        if isinstance(score, dict):
            self._map_scores[slot] = score
        elif score is not None:
            self._score[slot] = score
        self._pending += 1
        return None

    def _remember(self, id: str, ts: float, code: int, now: float) -> None:
        if self.remember_joined:
            self._new_slot(id, ts, code, _JOINED, now)

    def _new_slot(self, id: str, ts: float, code: int, state: int, now: float) -> int:
        self._ensure_capacity(now)
        slot = self._head
        self._head += 1
        self._slot[id] = slot
        self._ts[slot] = ts
        self._code[slot] = code
        self._state[slot] = state
        self._ids[slot] = id
        self._live += 1
        if ts < self._oldest_ts:
            self._oldest_ts = ts
        return slot

    def add_feedback(self, id: str, ts: float, label: Any, now: float) -> Pair | str | None:
        slot = self._slot.get(id)
        if slot is not None:
            pred_ts = float(self._ts[slot])
            if pred_ts < now - self.feedback_ttl:
                self._expire_slot(id, slot)
            elif self._state[slot] == _JOINED:
                self.counts.duplicate_feedback += 1
                return DUPLICATE
            else:
                code = int(self._code[slot])
                prediction = self._pred[slot]
                score = self._map_scores.get(slot)
                if score is None:
                    s = self._score[slot]
                    score = None if s != s else float(s)
                self._state[slot] = _JOINED
                self._pending -= 1
                self._pred[slot] = None
                self._map_scores.pop(slot, None)
                if not self.remember_joined:
                    del self._slot[id]
                    self._free(slot)
                self.counts.joined += 1
                return (pred_ts, ts, code, label, prediction, score, id)
        waiting = self._early.get(id)
        if waiting is not None:
            if waiting[0] >= now - self.prediction_ttl:
                self.counts.duplicate_feedback += 1
                return DUPLICATE
            del self._early[id]
            self.counts.expired_feedback += 1
        if len(self._early) >= self.max_pending:
            self._expire_feedback(now)
            if len(self._early) >= self.max_pending:
                self._early.popitem(last=False)
                self.counts.evicted_feedback += 1
        self._early[id] = (ts, label)
        if ts < self._early_oldest_ts:
            self._early_oldest_ts = ts
        return None

    def _expire_slot(self, id: str, slot: int) -> None:
        if self._state[slot] == _PENDING:
            self.counts.expired_predictions += 1
        del self._slot[id]
        self._free(slot)

    def expire(self, now: float) -> None:
        """Sweep out what has timed out at stream time ``now`` (counted by side)."""
        self._expire_predictions(now)
        self._expire_feedback(now)

    def _expire_predictions(self, now: float) -> None:
        horizon = now - self.feedback_ttl
        if self._oldest_ts >= horizon:
            return
        lo, hi = self._tail, self._head
        ts, state = self._ts[lo:hi], self._state[lo:hi]
        gone = np.flatnonzero((state != _EMPTY) & (ts < horizon)) + lo
        self.counts.expired_predictions += int((self._state[gone] == _PENDING).sum())
        for slot in gone.tolist():
            del self._slot[self._ids[slot]]
            self._free(slot)
        alive = self._ts[lo:hi][self._state[lo:hi] != _EMPTY]
        self._oldest_ts = float(alive.min()) if len(alive) else float("inf")

    def _expire_feedback(self, now: float) -> None:
        horizon = now - self.prediction_ttl
        if self._early_oldest_ts >= horizon:
            return
        stale = [k for k, (ts, _) in self._early.items() if ts < horizon]
        for k in stale:
            del self._early[k]
        self.counts.expired_feedback += len(stale)
        self._early_oldest_ts = min((ts for ts, _ in self._early.values()), default=float("inf"))

    @property
    def pending_predictions(self) -> int:
        return self._pending

    @property
    def pending_feedback(self) -> int:
        return len(self._early)
