"""Partials as deltas: a worker sends what changed since its last send; a view applies them in O(change).

A **delta** of one partition holds its small header (counters, stream time, lineage, offsets) whole,
the series labels new since the last delta, and, per metric and window, only the panes fed since the
last delta (each pane whole: a pane's partial replaces the one held). Encoded as data
(:mod:`streammon.state_codec`). A delta with ``full`` set carries every pane: a worker sends one
first, after a start or a restore, and a view that has not seen a partition's lineage waits for it.

:class:`DeltaView` keeps every partition's panes and, per metric, window and series, their merge,
recomputed only for the series a delta touched, or for every series of a sliding window when the
global stream time moves it by a step (panes leave). What it serves equals
:func:`~streammon.scaleout.partials.merge_partials` over the same partitions' whole partials.

For operators that can ``subtract`` (every built-in), a series' merge is kept running: a delta's
pane is swapped in (the pane it replaces taken out), and a step of the window takes the leaving
panes out, so a refresh costs O(panes changed); others are merged again from their panes.

The transport is the caller's: deltas must reach the view in the order a partition's worker made
them, none skipped (a Kafka topic keyed by partition gives both). Not wired into ``streammon
export`` yet (it reads whole partials files); the view's merged operators are updated in place, so
the caller serializes :meth:`DeltaView.apply` and :meth:`DeltaView.view` with scrapes of a view.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine import Engine, SeriesKeys
from ..operators.base import fresh_copy
from ..window_state import CumulativeState, PaneState
from ..windows import Sliding
from .partials import (
    MergedView,
    MergedWindow,
    add_counters,
    decode_operators,
    encode_partials,
    engine_header,
    read_header,
)

if TYPE_CHECKING:
    from ..registry import Tracked
    from ..settings import MonitorSettings

__all__ = ["take_delta", "DeltaView", "DELTA_FORMAT"]

DELTA_FORMAT = 1
_EXISTS = -1  # the pane of a series that exists without a pane inside the window (all its rows came late)


def take_delta(engine: Engine, *, partition: int, offsets: Mapping[tuple[str, int], int], lineage: str,
               labels_sent: int, full: bool = False) -> tuple[bytes, int]:
    """The delta of ``engine`` since the last one taken (``full``: all of it), and how many series labels
    it has sent so far (pass it back as ``labels_sent`` next time; 0 with ``full``)."""
    sent = 0 if full else labels_sent
    header = engine_header(engine, format=DELTA_FORMAT, partition=partition, offsets=offsets, lineage=lineage)
    header.update(full=full, labels_from=sent, labels=list(engine.keys.labels[sent:]))
    return encode_partials(engine, header, lambda state: _changed(state, full)), len(engine.keys.labels)


def _changed(state: Any, full: bool) -> dict[int, list[tuple[int, Any, int]]]:
    """{code: [(pane, partial, count)]} fed since the last call (all with ``full``); clears the record."""
    changed, state.changed = state.changed or set(), set()
    out: dict[int, list] = defaultdict(list)
    if isinstance(state, CumulativeState):
        codes = state.ops if full else {code for code, _ in changed}
        for code in codes:
            out[code].append((0, state.ops[code], state.counts[code]))
        return out
    assert isinstance(state, PaneState)
    for code, panes in state.panes.items() if full else ():
        out[code] = [(pane, entry[0], entry[1]) for pane, entry in panes.items()] or [(_EXISTS, None, 0)]
    for code, pane in () if full else changed:
        entry = state.panes.get(code, {}).get(pane) if pane is not None else None
        if entry is not None:
            out[code].append((pane, entry[0], entry[1]))
        elif code in state.panes and code not in out:
            out[code] = [(_EXISTS, None, 0)]  # touched: it exists; or its pane left the window already
    return out


@dataclass(eq=False)
class _Partition:
    lineage: str
    version: int
    header: dict[str, Any]
    labels: list[tuple]  # the partition's code -> labels
    remap: list[int] = field(default_factory=list)  # the partition's code -> the view's code
    # per metric, per window: view code -> pane -> (partial, count)
    panes: dict[str, list[dict[int, dict[int, tuple[Any, int]]]]] = field(default_factory=dict)


class DeltaView:
    """The global view of a scaled-out group, kept up to date by :meth:`apply` (see the module docstring).

    ``engine`` is an empty engine of the app: its metrics name the prototypes deltas are decoded after,
    and a delta from another app is refused.
    """

    def __init__(self, settings: MonitorSettings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self.metrics: list[Tracked] = [t for t, _ in engine.metrics]
        self.keys = SeriesKeys(settings.segments, settings.max_segment_values)
        self.partitions: dict[int, _Partition] = {}
        self.stream_time = -math.inf
        # per metric, per window: view code -> [merged partial, count]; and the codes to merge again
        self._merged: dict[str, list[dict[int, list]]] = {t.name: [{} for _ in t.windows] for t in self.metrics}
        self._dirty: dict[str, list[set[int]]] = {t.name: [set() for _ in t.windows] for t in self.metrics}
        self._first: dict[str, list[int | None]] = {t.name: [None for _ in t.windows] for t in self.metrics}
        # per metric, per window: view code -> rows whose pane a user merge refused, in its latest merge
        self._errors: dict[str, list[dict[int, int]]] = {t.name: [{} for _ in t.windows] for t in self.metrics}

    def apply(self, data: bytes) -> bool:
        """Apply one delta; False when it is one a view must skip (behind, or of a lineage not begun with a
        full delta). Raises :class:`~streammon.errors.CheckpointError` with the reason for one it cannot use."""
        header, encoded = read_header(data, format=DELTA_FORMAT, what="a partials delta")
        windows = decode_operators(header, encoded, self.engine)  # refused (another app) before anything changes
        number = header["partition"]
        held = self.partitions.get(number)
        if header["full"]:
            if held is not None and held.lineage == header["lineage"] and header["version"] < held.version:
                return False  # a worker restored from an older checkpoint: wait until it catches up
            if held is not None:
                self._forget(held)
            held = self.partitions[number] = _Partition(header["lineage"], header["version"], header, [],
                                                        panes={t.name: [{} for _ in t.windows] for t in self.metrics})
        elif held is None or held.lineage != header["lineage"] or header["labels_from"] != len(held.labels):
            return False
        held.header, held.version = header, header["version"]
        segments = self.settings.segments
        for labels in header["labels"]:
            held.labels.append(tuple(labels))
            held.remap.append(self.keys.code(labels[0], dict(zip(segments, labels[1:]))))
        for tracked in self.metrics:
            running = tracked.caps.subtract  # a series' merge is kept up to date; else merged again at view()
            for i, entries in enumerate(windows[tracked.name]):
                panes, dirty = held.panes[tracked.name][i], self._dirty[tracked.name][i]
                merged, first = self._merged[tracked.name][i], self._first[tracked.name][i]
                for code, changed in entries.items():
                    view_code = held.remap[code]
                    series = panes.setdefault(view_code, {})
                    slot = merged.get(view_code) if running and view_code not in dirty else None
                    if slot is None:
                        dirty.add(view_code)
                    for pane, op, count in changed:
                        if pane == _EXISTS:
                            continue
                        old = series.get(pane)
                        series[pane] = (op, count)
                        inside = first is None or pane >= first
                        if slot is not None and inside and not self._replace(tracked, slot, old, op, count):
                            dirty.add(view_code)
                            slot = None
        self.stream_time = max((p.header["stream_time"] for p in self.partitions.values()), default=-math.inf)
        return True

    @staticmethod
    def _replace(tracked: Tracked, slot: list, old: tuple[Any, int] | None, op: Any, count: int) -> bool:
        """The running merge ``slot`` with pane ``old`` (if any) taken out and its successor ``op`` put in."""
        try:
            if old is not None:
                slot[0].subtract(old[0])
                slot[1] -= old[1]
                if slot[1] == 0:  # start afresh rather than keep the rounding left by taking floats out
                    slot[0] = fresh_copy(tracked.prototype)
            slot[0].merge(op)
        except Exception:  # noqa: BLE001 - a user operator's merge must not stop the exporter: merged again, counted
            return False
        slot[1] += count
        return True

    def _forget(self, held: _Partition) -> None:
        # A partition begun anew: every series it held is merged again without its old panes.
        for tracked in self.metrics:
            for i, panes in enumerate(held.panes[tracked.name]):
                self._dirty[tracked.name][i].update(panes)

    def view(self) -> MergedView:
        """The merged view now: O(series touched since the last call) merges, or O(series) after a window step."""
        view = MergedView(self.keys)
        view.stream_time = self.stream_time
        overflow: dict[str, int] = defaultdict(int)
        for held in self.partitions.values():
            add_counters(view, held.header, overflow)
        for tracked in self.metrics:
            states = []
            for i, window in enumerate(tracked.windows):
                merged, dirty = self._merged[tracked.name][i], self._dirty[tracked.name][i]
                first = None
                if isinstance(window, Sliding) and self.stream_time > -math.inf:
                    first = math.floor(self.stream_time / window.step) + 1 - window.panes
                    before = self._first[tracked.name][i]
                    if first != before:
                        self._first[tracked.name][i] = first
                        if tracked.caps.subtract and before is not None and first > before:
                            self._take_out_leaving(tracked, i, before, first, dirty)
                        else:  # merge only, or the window moved back (a partition begun anew): every series
                            dirty = set(merged) | dirty
                        self._prune(tracked.name, i, before, first)
                errors = self._errors[tracked.name][i]
                for code in dirty:
                    slot, refused = self._merge(tracked, i, code, first)
                    if slot is None:  # no partition holds the series any more (begun anew without it)
                        merged.pop(code, None)
                        errors.pop(code, None)
                    else:
                        merged[code], errors[code] = slot, refused
                self._dirty[tracked.name][i] = set()
                refused_rows = sum(errors.values())
                if refused_rows:
                    view.health.operator_errors[(tracked.name, window.label)] += refused_rows
                states.append(MergedWindow(window, dict(merged)))  # a copy: a scrape may read it while this changes
            view.metrics.append((tracked, states))
        self.keys.overflow = overflow
        return view

    def _take_out_leaving(self, tracked: Tracked, i: int, before: int, first: int, dirty: set[int]) -> None:
        # Panes in [before, first) leave every running merge; O(series x partitions) per step of the window.
        merged = self._merged[tracked.name][i]
        for held in self.partitions.values():
            for code, series in held.panes[tracked.name][i].items():
                slot = merged.get(code)
                if slot is None or code in dirty:
                    continue
                for pane in range(before, first) if first - before <= len(series) else sorted(series):
                    entry = series.get(pane)
                    if entry is None or not before <= pane < first:
                        continue
                    try:
                        slot[0].subtract(entry[0])
                    except Exception:  # noqa: BLE001 - merged again from its panes at this view
                        dirty.add(code)
                        break
                    slot[1] -= entry[1]
                    if slot[1] == 0:
                        slot[0] = fresh_copy(tracked.prototype)

    def _prune(self, name: str, i: int, before: int | None, first: int) -> None:
        # Panes before `before` went at an earlier step, except late ones that arrived since: looked up
        # one by one over the gap when it is short, as PaneState.advance does.
        gap = range(before, first) if before is not None and before < first else None
        for held in self.partitions.values():
            for series in held.panes[name][i].values():
                if gap is not None and len(gap) <= len(series):
                    for pane in gap:
                        series.pop(pane, None)
                else:
                    for pane in [p for p in series if p < first]:
                        del series[pane]

    def _merge(self, tracked: Tracked, i: int, code: int, first: int | None) -> tuple[list | None, int]:
        slot: list | None = None
        refused = 0
        for held in self.partitions.values():
            series = held.panes[tracked.name][i].get(code)
            if series is None:
                continue
            if slot is None:
                slot = [fresh_copy(tracked.prototype), 0]
            for pane, (op, count) in series.items():
                if first is None or pane >= first:
                    try:
                        slot[0].merge(op)
                    except Exception:  # noqa: BLE001 - a user operator's merge must not stop the exporter
                        refused += count
                        continue
                    slot[1] += count
        return slot, refused
