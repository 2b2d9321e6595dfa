"""The in-memory join store: pending predictions in numpy columns behind one ``dict`` from id to slot.

It implements :class:`~streammon.join.JoinStore` (semantics in :mod:`streammon.join`): the default store,
and the reference a disk-backed store is tested against.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .join import JoinCounts, Joined, OneEventAtATime, as_stored

__all__ = ["MemoryJoinStore"]

_EMPTY, _PENDING, _JOINED = 0, 1, 2


class MemoryJoinStore(OneEventAtATime):
    """Pending predictions in columns (numpy) behind one ``dict`` from id to slot.

    Slots are handed out in arrival order, so the oldest entry, the one evicted past
    ``max_pending``, is the first live slot; holes left by joins are squeezed out when the arrays
    fill up. About 180 bytes per pending prediction with 32-character ids (see docs/benchmarks.md).
    A batch (:meth:`join`) stages its new predictions in lists and writes them to the columns once
    at its end, since a numpy scalar write costs as much as a Python call.

    >>> store = MemoryJoinStore(feedback_ttl=3600, prediction_ttl=600)
    >>> store.add_prediction("a", 10.0, 0, 1, 0.9, now=10.0)
    >>> store.add_feedback("a", 70.0, 1, now=70.0)
    (10.0, 70.0, 0, 1, 1, 0.9, 'a')
    """

    DEFAULT_MAX_PENDING = 10_000_000  # ~2 GiB of RAM

    def __init__(self, *, feedback_ttl: float, prediction_ttl: float, max_pending: int = DEFAULT_MAX_PENDING, remember_joined: bool = True) -> None:
        self.feedback_ttl = feedback_ttl
        self.prediction_ttl = prediction_ttl
        self.max_pending = max_pending
        self.remember_joined = remember_joined
        self.counts = JoinCounts()
        self._slot: dict[str, int] = {}
        self._grow_to(1024)
        self._tail = 0  # no live slot below this
        self._head = 0  # next free slot (staged entries of the current batch come after it)
        self._live = 0  # pending + joined markers
        self._pending = 0
        self._oldest_ts = float("inf")  # lower bound of live ts, to skip needless sweeps
        self._map_scores: dict[int, Any] = {}  # class -> probability maps, rare enough to keep aside
        # id -> (ts, label); ordered by arrival so the oldest is evicted first
        self._early: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._early_oldest_ts = float("inf")
        self._new_staging()

    def _new_staging(self) -> None:
        # Slots _head + i of the batch in progress: ts, code, state, score, prediction, id
        self._staged: tuple[list, ...] = ([], [], [], [], [], [])
        # Pairs completed from the columns, read there in one go: (slots, pair positions, the batch's Joined)
        self._taking: tuple[list[int], list[int], Joined | None] = ([], [], None)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_taking" not in state:  # a checkpoint from before staging existed
            self._new_staging()

    # -- settings and persistence (the JoinStore protocol) -------------------------------
    def configure(self, *, feedback_ttl: float, prediction_ttl: float, max_pending: int) -> None:
        self.feedback_ttl, self.prediction_ttl, self.max_pending = feedback_ttl, prediction_ttl, max_pending

    def snapshot(self) -> dict[str, Any]:
        return dict(self.__dict__)  # pickled at once, or by a forked writer that sees it as it was at the fork

    def restore(self, saved: Any) -> None:
        if isinstance(saved, MemoryJoinStore):  # snapshots written before JoinStore.snapshot hold the store itself
            saved = saved.__dict__
        self.__dict__.clear()
        self.__setstate__(dict(saved))

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

    def _reserve(self, n: int) -> None:
        """Room for ``n`` new slots after ``_head``; slots keep their numbers until the next call."""
        cap = len(self._ts)
        if self._head + n <= cap:
            return
        if self._live + n <= cap // 2:
            self._compact()
        if self._head + n > cap:
            self._grow_to(max(2 * cap, self._head + n))

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

    def _settle(self) -> None:
        """Fill in the pairs completed from the columns: code, prediction and score, gathered at once."""
        slots, positions, out = self._taking
        if not slots:
            return
        assert out is not None  # slots are taken only inside join(), which sets the Joined they fill
        idx = np.array(slots, dtype=np.int64)
        maps = self._map_scores
        for pos, slot, code, prediction, score in zip(positions, slots, self._code[idx].tolist(),
                                                      self._pred[idx].tolist(), self._score[idx].tolist()):
            out.code[pos] = code
            out.y_pred[pos] = prediction
            mapped = maps.pop(slot, None) if maps else None
            out.score[pos] = mapped if mapped is not None else None if score != score else score
        self._pred[idx] = None
        slots.clear()
        positions.clear()

    def _flush(self) -> None:
        """Settle the pairs taken and write the staged slots to the columns (room was reserved by
        :meth:`join`). Anything that frees a slot flushes first, so a slot is read before it is freed."""
        self._settle()
        ts, code, state, score, pred, ids = self._staged
        k = len(ids)
        if not k:
            return
        lo, hi = self._head, self._head + k
        self._ts[lo:hi] = ts
        self._code[lo:hi] = code
        self._state[lo:hi] = state
        self._pred[lo:hi] = pred
        self._ids[lo:hi] = ids
        floats = [s if type(s) is float else np.nan for s in score]
        self._score[lo:hi] = floats
        for i, s in enumerate(score):
            if type(s) is not float and s is not None:
                if isinstance(s, dict):
                    self._map_scores[lo + i] = s
                else:  # an int, or a number type of the caller's: as float, like the column
                    self._score[lo + i] = s
        self._head = hi
        for column in self._staged:
            column.clear()

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
            self._flush()
            self._expire_predictions(now)
            if self._live >= self.max_pending:
                self._evict_oldest()

    def _evict_oldest(self) -> None:
        state = self._state
        while state[self._tail] == _EMPTY:
            self._tail += 1
        slot = self._tail
        if state[slot] == _PENDING:
            self.counts.evicted_predictions += 1
        del self._slot[self._ids[slot]]
        self._free(slot)

    def _stage(self, id: str, ts: float, code: int, state: int, score: Any, prediction: Any, now: float) -> None:
        self._ensure_capacity(now)
        staged = self._staged
        self._slot[id] = self._head + len(staged[5])
        staged[0].append(ts)
        staged[1].append(code)
        staged[2].append(state)
        staged[3].append(score)
        staged[4].append(prediction)
        staged[5].append(id)
        self._live += 1
        if ts < self._oldest_ts:
            self._oldest_ts = ts

    # -- the join ------------------------------------------------------------------------
    def join(self, is_prediction: Sequence[bool], ids: Sequence[str], times: Sequence[float], codes: Sequence[int],
             values: Sequence[Any], scores: Sequence[Any], nows: Sequence[float]) -> Joined:
        """Join a batch of events, in order: ``values`` holds each prediction's prediction and each
        feedback's label; ``codes`` and ``scores`` are read for predictions only; ``nows`` is the
        stream time at each event. Same answers as calling ``add_prediction``/``add_feedback`` per event."""
        out = Joined([], [], [], [], [], [], [], [])
        accepted, at, pred_ts, fb_ts, pair_code, y_true, y_pred, pair_score = out
        self._reserve(sum(is_prediction))
        counts, slots, early = self.counts, self._slot, self._early
        fttl, pttl, remember, max_pending = self.feedback_ttl, self.prediction_ttl, self.remember_joined, self.max_pending
        ts_col, state_col = self._ts, self._state
        st_ts, st_code, st_state, st_score, st_pred, st_ids = self._staged
        take_slots, take_positions, _ = self._taking
        self._taking = (take_slots, take_positions, out)
        try:
            for i, is_pred in enumerate(is_prediction):
                id_, ts, now = ids[i], times[i], nows[i]
                slot = slots.get(id_)
                if is_pred:
                    if slot is not None:
                        self._flush()  # rare (a duplicate, or an id seen long ago): the columns say
                        if ts_col[slot] >= now - fttl:
                            counts.duplicate_predictions += 1
                            accepted.append(False)
                            continue
                        self._expire_slot(id_, slot)
                    accepted.append(True)
                    fb = early.pop(id_, None) if early else None
                    if fb is not None:
                        if fb[0] >= now - pttl:
                            counts.joined += 1
                            if remember:
                                self._stage(id_, ts, codes[i], _JOINED, None, None, now)
                            at.append(i)
                            pred_ts.append(ts)
                            fb_ts.append(fb[0])
                            pair_code.append(codes[i])
                            y_true.append(fb[1])
                            y_pred.append(values[i])
                            pair_score.append(scores[i])
                            continue
                        counts.expired_feedback += 1
                    if self._live >= max_pending:
                        self._stage(id_, ts, codes[i], _PENDING, scores[i], values[i], now)
                    else:  # _stage without the call, for the usual case
                        slots[id_] = self._head + len(st_ids)
                        st_ts.append(ts)
                        st_code.append(codes[i])
                        st_state.append(_PENDING)
                        st_score.append(scores[i])
                        st_pred.append(values[i])
                        st_ids.append(id_)
                        self._live += 1
                        if ts < self._oldest_ts:
                            self._oldest_ts = ts
                    self._pending += 1
                    continue
                if slot is not None:
                    k = slot - self._head
                    if k >= 0:  # staged in this batch
                        p_ts, p_state = st_ts[k], st_state[k]
                    else:
                        p_ts, p_state = float(ts_col[slot]), int(state_col[slot])
                    if p_ts < now - fttl:
                        self._flush()
                        self._expire_slot(id_, slot)
                    elif p_state == _JOINED:
                        counts.duplicate_feedback += 1
                        accepted.append(False)
                        continue
                    else:
                        accepted.append(True)
                        counts.joined += 1
                        self._pending -= 1
                        at.append(i)
                        pred_ts.append(p_ts)
                        fb_ts.append(ts)
                        y_true.append(values[i])
                        if k >= 0:
                            pair_code.append(st_code[k])
                            y_pred.append(st_pred[k])
                            pair_score.append(as_stored(st_score[k]))
                            st_state[k], st_pred[k], st_score[k] = _JOINED, None, None
                        else:  # read by _settle, with the other pairs taken from the columns
                            pair_code.append(0)
                            y_pred.append(None)
                            pair_score.append(None)
                            take_slots.append(slot)
                            take_positions.append(len(at) - 1)
                            state_col[slot] = _JOINED
                        if not remember:
                            self._flush()
                            del slots[id_]
                            self._free(slot)
                        continue
                accepted.append(self._wait_early(id_, ts, values[i], now))
        finally:
            self._flush()
            self._taking = (take_slots, take_positions, None)
        return out

    def _wait_early(self, id: str, ts: float, label: Any, now: float) -> bool:
        """A feedback whose prediction has not come: it waits. False if it is a duplicate."""
        waiting = self._early.get(id)
        if waiting is not None:
            if waiting[0] >= now - self.prediction_ttl:
                self.counts.duplicate_feedback += 1
                return False
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
        return True

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
