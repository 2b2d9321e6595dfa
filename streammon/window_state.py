"""Window state: how each window wraps operators, per series (model x segment).

Rows arrive in batches as columns (numpy arrays) with an event time and a series code each.
The window groups them by (series, pane), feeds each group to an operator in one call, and keeps
per-pane partials so the oldest pane can leave the window exactly. Which strategy a sliding window
uses follows from the operator's capabilities (see ``operators.base``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from .operators.base import Capabilities, fresh_copy
from .windows import Cumulative, Sliding, Window

__all__ = ["WindowState", "CumulativeState", "PaneState", "ErrorSink", "Grouped", "group_rows", "make_state"]

# Called as sink(window_label, event_id, exception) for every row an operator refused.
ErrorSink = Callable[[str, Any, BaseException], None]


def feed(op: Any, caps: Capabilities, cols: Sequence[np.ndarray], ids: np.ndarray, window: str, errors: ErrorSink) -> np.ndarray | None:
    """Update ``op`` with the rows; return a mask of the rows it accepted (None: all of them)."""
    if caps.update_many:
        try:
            op.update_many(*cols)
            return None
        except Exception:  # noqa: BLE001 - isolate the offending rows one by one below
            pass
    ok = np.ones(len(ids), dtype=bool)
    update = op.update
    for i, row in enumerate(zip(*cols)):
        try:
            update(*row)
        except Exception as exc:  # noqa: BLE001 - a user operator must never stop the monitor
            ok[i] = False
            errors(window, ids[i], exc)
    return None if ok.all() else ok


class Group(NamedTuple):
    """Rows of one series falling into one pane (pane 0 for cumulative windows)."""

    code: int
    pane: int
    cols: Sequence[np.ndarray]
    ids: np.ndarray


class Grouped(NamedTuple):
    groups: list[Group]
    touched: list[int]  # series whose rows all fell before the window: they exist, with nothing new


def _split(keys: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
    """(key, row indices or None for all rows) for each distinct key."""
    uniq = np.unique(keys)
    if len(uniq) == 1:
        return [(int(uniq[0]), None)]
    if len(uniq) <= 16:  # a few masks beat a sort for the usual handful of series x panes
        return [(int(k), np.flatnonzero(keys == k)) for k in uniq]
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], uniq)
    ends = np.append(bounds[1:], len(keys))
    return [(int(k), order[a:b]) for k, a, b in zip(uniq, bounds, ends)]


def group_rows(window: Window, stream_time: float, codes: np.ndarray, times: np.ndarray,
               cols: Sequence[np.ndarray], ids: np.ndarray) -> Grouped:
    """Group a batch by (series, pane) for ``window`` at ``stream_time``; done once per batch and
    shared by every metric that reads the same columns in the same window."""
    if isinstance(window, Cumulative):
        return Grouped([Group(code, 0, *_take(cols, ids, idx)) for code, idx in _split(codes)], [])
    assert isinstance(window, Sliding)  # the only other kind of window
    first = math.floor(stream_time / window.step) + 1 - window.panes
    pane_of = np.floor(times / window.step).astype(np.int64)
    inside = pane_of >= first
    touched: list[int] = []
    if not inside.all():
        # A series exists once it has had an event, even one already outside the window, so
        # which series are published does not depend on where batches were cut.
        touched = np.unique(codes[~inside]).tolist()
        if not inside.any():
            return Grouped([], touched)
        codes, pane_of, ids = codes[inside], pane_of[inside], ids[inside]
        cols = [c[inside] for c in cols]
    span = window.panes
    keys = codes.astype(np.int64) * span + (pane_of - first)
    return Grouped([Group(key // span, key % span + first, *_take(cols, ids, idx)) for key, idx in _split(keys)], touched)


def _take(cols: Sequence[np.ndarray], ids: np.ndarray, idx: np.ndarray | None):
    if idx is None:
        return cols, ids
    return [c[idx] for c in cols], ids[idx]


class WindowState:
    """One metric in one window: an operator (or its panes) per series code."""

    def __init__(self, window: Window, prototype: Any, caps: Capabilities, errors: ErrorSink) -> None:
        self.window = window
        self.prototype = prototype
        self.caps = caps
        self.errors = errors
        # (code, pane) fed since a scaled-out worker last sent its deltas (pane None: the series was only
        # touched), from its first delta on (None until then: nobody reads it); not saved: after a
        # restore a worker sends everything.
        self.changed: set[tuple[int, int | None]] | None = None

    # Set at registration from the app's code, so a snapshot holds only what the window accumulated.
    _WIRING = ("window", "prototype", "caps", "errors", "changed")

    def state(self) -> dict[str, Any]:
        """What a checkpoint saves: everything but the wiring."""
        return {k: v for k, v in self.__dict__.items() if k not in self._WIRING}

    def load(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def add(self, grouped: Grouped) -> None:
        changed = self.changed
        for code in grouped.touched:
            self._touch(code)
            if changed is not None:
                changed.add((code, None))
        for g in grouped.groups:
            self._add_group(g.code, g.pane, g.cols, g.ids)
            if changed is not None:
                changed.add((g.code, g.pane))

    def advance(self, stream_time: float) -> None:
        """Drop what the window no longer covers at ``stream_time``."""

    def series(self) -> Iterator[tuple[int, int, Any]]:
        """(code, count, operator holding the window's value) for each series."""
        raise NotImplementedError

    def _touch(self, code: int) -> None:
        pass

    def _add_group(self, code: int, pane: int, cols, ids) -> None:
        raise NotImplementedError


class CumulativeState(WindowState):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.ops: dict[int, Any] = {}
        self.counts: dict[int, int] = defaultdict(int)

    def _touch(self, code: int) -> None:
        if code not in self.ops:
            self.ops[code] = fresh_copy(self.prototype)

    def _add_group(self, code, pane, cols, ids) -> None:
        op = self.ops.get(code)
        if op is None:
            op = self.ops[code] = fresh_copy(self.prototype)
        ok = feed(op, self.caps, cols, ids, self.window.label, self.errors)
        self.counts[code] += len(ids) if ok is None else int(ok.sum())

    def series(self):
        for code, op in self.ops.items():
            yield code, self.counts[code], op


class PaneState(WindowState):
    """Shared pane bookkeeping of the sliding strategies."""

    window: Sliding

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.first_pane = -(1 << 62)  # the oldest pane inside the window at the current stream time
        self.panes: dict[int, dict[int, list]] = {}  # code -> pane -> [partial, count]

    def advance(self, stream_time: float) -> None:
        if stream_time == -math.inf:  # no event accepted yet (a first batch of rejects): nothing to drop
            return
        first = math.floor(stream_time / self.window.step) + 1 - self.window.panes
        if first <= self.first_pane:
            return
        # Every pane before first_pane has gone already, so the stale ones are in [first_pane, first):
        # looked up one by one when that is the shorter way (the window moved a few steps), so a step
        # costs O(series) lookups, not a visit of every pane of every series.
        gap = range(self.first_pane, first)
        self.first_pane = first
        for code, panes in self.panes.items():
            stale = [p for p in gap if p in panes] if len(gap) <= len(panes) else [p for p in panes if p < first]
            for p in stale:
                self._evict(code, panes.pop(p))

    def _touch(self, code: int) -> None:
        if code not in self.panes:
            self.panes[code] = {}

    def _pane(self, code: int, pane: int, make: Callable[[], Any]) -> list:
        panes = self.panes.get(code)
        if panes is None:
            panes = self.panes[code] = {}
        entry = panes.get(pane)
        if entry is None:
            entry = panes[pane] = [make(), 0]
        return entry

    def _evict(self, code: int, entry: list) -> None:
        raise NotImplementedError


class _Totals(PaneState):
    """Strategies that keep a running [operator, count] per series for the whole window."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.totals: dict[int, list] = {}

    def _total(self, code: int) -> list:
        total = self.totals.get(code)
        if total is None:
            total = self.totals[code] = [fresh_copy(self.prototype), 0]
        return total

    def _touch(self, code: int) -> None:
        super()._touch(code)
        self._total(code)

    def series(self):
        for code, (op, count) in self.totals.items():
            yield code, count, op

    def _evict(self, code: int, entry: list) -> None:
        total = self.totals[code]
        total[1] -= entry[1]
        if total[1] == 0:
            # Start afresh rather than keep the rounding left by taking floats out.
            total[0] = fresh_copy(self.prototype)
        else:
            self._take_out(total[0], entry[0])

    def _take_out(self, total: Any, partial: Any) -> None:
        raise NotImplementedError


class SubtractingPanes(_Totals):
    """merge + subtract: a running total per series; an evicted pane is subtracted. O(1) per scrape."""

    def _add_group(self, code, pane, cols, ids) -> None:
        delta = fresh_copy(self.prototype)
        ok = feed(delta, self.caps, cols, ids, self.window.label, self.errors)
        n = len(ids) if ok is None else int(ok.sum())
        if n == 0:
            return
        entry = self._pane(code, pane, lambda: fresh_copy(self.prototype))
        entry[0].merge(delta)
        entry[1] += n
        total = self._total(code)
        total[0].merge(delta)
        total[1] += n

    def _take_out(self, total, partial) -> None:
        total.subtract(partial)


class MergingPanes(PaneState):
    """merge only: a partial per pane, combined at scrape time (O(panes) merges per series)."""

    def _add_group(self, code, pane, cols, ids) -> None:
        entry = self._pane(code, pane, lambda: fresh_copy(self.prototype))
        ok = feed(entry[0], self.caps, cols, ids, self.window.label, self.errors)
        entry[1] += len(ids) if ok is None else int(ok.sum())

    def _evict(self, code, entry) -> None:
        pass

    def series(self):
        for code, panes in self.panes.items():
            combined = fresh_copy(self.prototype)
            count = 0
            for op, n in panes.values():
                combined.merge(op)
                count += n
            yield code, count, combined


class RevertingPanes(_Totals):
    """revert only (river's way): one operator per series; each pane keeps its rows to revert them."""

    def _add_group(self, code, pane, cols, ids) -> None:
        total = self._total(code)
        ok = feed(total[0], self.caps, cols, ids, self.window.label, self.errors)
        rows = list(zip(*cols)) if ok is None else [r for r, keep in zip(zip(*cols), ok) if keep]
        entry = self._pane(code, pane, list)
        entry[0].extend(rows)
        entry[1] += len(rows)
        total[1] += len(rows)

    def _take_out(self, total, rows) -> None:
        revert = total.revert
        for row in rows:
            revert(*row)


def make_state(window: Window, prototype: Any, caps: Capabilities, errors: ErrorSink) -> WindowState:
    if isinstance(window, Cumulative):
        return CumulativeState(window, prototype, caps, errors)
    if caps.merge and caps.subtract:
        return SubtractingPanes(window, prototype, caps, errors)
    if caps.merge:
        return MergingPanes(window, prototype, caps, errors)
    if caps.revert:
        return RevertingPanes(window, prototype, caps, errors)
    raise AssertionError("the registry refuses this operator for sliding windows")
