"""Partial aggregates of one input partition, and their merge into the global view.

Scaled out, each worker writes, for every partition it owns, a small file: each metric's per-series,
per-pane partial operators (never events), the partition's counters and its stream time, as data
(:mod:`streammon.state_codec`: the exporter rebuilds the operators after its own app's, so a file
can hold wrong numbers at worst, never code to run). The
exporter keeps the newest partial of every partition and merges them: panes still inside the
window at the global stream time (the largest of all partitions) are merged per series, so the
result equals what one worker reading every partition would publish for the same windows.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine import Engine, Health, SeriesKeys
from ..errors import CheckpointError, RegistrationError
from ..join import JoinCounts
from ..operators.base import fresh_copy
from ..snapshot import signature
from ..state_codec import StateShapeError, decode_state, encode_state
from ..state_dir import StateDirectory, write_atomically
from ..window_state import CumulativeState, PaneState, WindowState
from ..windows import Sliding

if TYPE_CHECKING:
    from ..registry import Tracked
    from ..settings import MonitorSettings

__all__ = ["PartialsExporter", "MergedView", "require_mergeable", "dump_partials", "load_partials", "merge_partials", "add_counters",
           "write_partials", "published_lineage", "PARTIALS_FORMAT"]

log = logging.getLogger("streammon")
_SETTLED_NS = 100_000_000  # 0.1 s: longer than any file-time tick
PARTIALS_FORMAT = 2  # 1: pickles


def require_mergeable(metrics: list[Tracked]) -> None:
    """Refuse, with the fix, metrics whose per-partition results cannot be combined."""
    bad = [t for t in metrics if not t.caps.merge]
    if bad:
        names = ", ".join(f"{t.name!r} ({type(getattr(t.prototype, 'stat', t.prototype)).__name__})" for t in bad)
        raise RegistrationError(
            f"scaled out, every metric must merge partial results from several partitions, and {names} cannot "
            f"(no merge(other)); use a mergeable operator (the built-ins in streammon.operators all are, e.g. "
            f"ops.Accuracy() for river.metrics.Accuracy()), add merge() to your operator, or run a single worker "
            f"without scale-out"
        )
    for t in metrics:
        try:
            decode_state(encode_state(fresh_copy(t.prototype)), t.prototype)
        except CheckpointError as exc:
            raise RegistrationError(
                f"scaled out, metric {t.name!r}'s operator ({type(t.prototype).__name__}) cannot be sent to the exporter "
                f"as data ({exc}); keep its state in numbers, strings, lists, dicts, numpy arrays of numbers, or "
                f"objects it creates in __init__, or run a single worker without scale-out") from None


def _window_partials(state: WindowState) -> dict[int, list[tuple[int, Any, int]]]:
    """{series code: [(pane, partial operator, count), ...]}; pane 0 for a cumulative window."""
    if isinstance(state, CumulativeState):
        return {code: [(0, op, state.counts[code])] for code, op in state.ops.items()}
    assert isinstance(state, PaneState)  # make_state gives every sliding window a pane state
    return {code: [(pane, entry[0], entry[1]) for pane, entry in panes.items()] for code, panes in state.panes.items()}


def engine_header(engine: Engine, *, format: int, partition: int, offsets: Mapping[tuple[str, int], int],
                  lineage: str) -> dict[str, Any]:
    """What partials and deltas of a partition say besides its operators: its counters, whole."""
    store = engine.store
    return {
        "format": format,
        "signature": signature(engine),
        "partition": partition,
        "lineage": lineage,
        # Offsets only grow along one lineage, so their sum orders a partition's partials.
        "version": sum(offsets.values()),
        "written": time.time(),
        "stream_time": engine.stream_time,
        "overflow": dict(engine.keys.overflow),
        "health": dict(engine.health.__dict__),
        "pending": (store.pending_predictions, store.pending_feedback),
        "counts": dict(vars(store.counts)),
        "metric_start": dict(engine.metric_start),
    }


def encode_partials(engine: Engine, header: dict[str, Any], partials_of: Callable[[WindowState], Any]) -> bytes:
    """``header`` and each metric's ``partials_of`` its window states, every metric encoded on its own: one
    whose state cannot travel as data (see :mod:`streammon.state_codec`) is sent empty, counted in
    ``streammon_operator_errors_total`` and logged, and the others go on."""
    encoded = {}
    for tracked, states in engine.metrics:
        try:
            encoded[tracked.name] = encode_state([partials_of(s) for s in states])
        except StateShapeError as exc:
            for window in tracked.windows:
                engine.metric_error(tracked.name, window.label, exc)
            encoded[tracked.name] = encode_state([{} for _ in states])
    return encode_state({"header": header, "windows": encoded})


def read_header(data: bytes, *, format: int, what: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The header of what :func:`encode_partials` wrote, and its metrics' operators still encoded."""
    if data[:1] == b"\x80":
        raise CheckpointError("it is a pickle, which streammon no longer reads from another process; the workers "
                              "of this version write their partials as data")
    outer = decode_state(data, {"header": {}, "windows": {}})
    if (not isinstance(outer, dict) or not isinstance(outer.get("header"), dict) or not isinstance(outer.get("windows"), dict)
            or not all(isinstance(v, bytes) for v in outer["windows"].values())):
        raise CheckpointError(f"it is not {what} of this version of streammon")
    header = outer["header"]
    if header.get("format") != format:
        raise CheckpointError(f"its format is {header.get('format')!r}, not {format}: written by another "
                              f"version of streammon")
    return header, outer["windows"]


def decode_operators(header: dict[str, Any], encoded: dict[str, bytes], engine: Engine) -> dict[str, list]:
    """Each metric's partials, its operators rebuilt after ``engine``'s (the app's own) prototypes; refused
    unless the writer ran the same app."""
    if header.get("signature") != signature(engine) or encoded.keys() != {t.name for t, _ in engine.metrics}:
        raise CheckpointError("the app's metrics differ from the ones of the worker that wrote it (a metric, window or "
                              "segment added, removed or changed); run the exporter with the workers' app")
    return {t.name: decode_state(encoded[t.name], [{0: [(0, t.prototype, 0)]} for _ in t.windows])
            for t, _ in engine.metrics}


def dump_partials(engine: Engine, *, partition: int, offsets: Mapping[tuple[str, int], int], lineage: str) -> bytes:
    """A partition's partials as data (:mod:`streammon.state_codec`): a header, then the operators."""
    header = engine_header(engine, format=PARTIALS_FORMAT, partition=partition, offsets=offsets, lineage=lineage)
    header["labels"] = list(engine.keys.labels)
    return encode_partials(engine, header, _window_partials)


def load_partials(data: bytes, engine: Engine) -> dict[str, Any]:
    """What :func:`dump_partials` wrote, its operators rebuilt after ``engine``'s (the app's own) prototypes.

    Refused (:class:`~streammon.errors.CheckpointError`, with the reason) unless written by the same app."""
    header, encoded = read_header(data, format=PARTIALS_FORMAT, what="a partials file")
    return {**header, "windows": decode_operators(header, encoded, engine)}


@dataclass(eq=False)
class MergedWindow:
    """One window of one metric, merged over every partition: what a scrape reads of it."""

    window: Any
    merged: dict[int, list]  # series code -> [merged operator, count]

    def series(self) -> Iterator[tuple[int, int, Any]]:
        for code, (op, count) in self.merged.items():
            yield code, count, op


@dataclass(eq=False)
class MergedView:
    """The global view of a scaled-out group (a :class:`~streammon.view.View`), merged from every partition's partials."""

    keys: SeriesKeys
    health: Health = field(default_factory=Health)
    counts: JoinCounts = field(default_factory=JoinCounts)
    pending_predictions: int = 0
    pending_feedback: int = 0
    stream_time: float = -math.inf
    metrics: list[tuple[Tracked, list[MergedWindow]]] = field(default_factory=list)
    metric_start: dict[str, float] = field(default_factory=dict)

    def metric_error(self, name: str, window: str, exc: BaseException) -> None:
        self.health.operator_errors[(name, window)] += 1


def _add_health(total: Health, part: Mapping[str, Any]) -> None:
    for name in ("events", "late", "operator_errors"):
        target = getattr(total, name)
        for key, n in part[name].items():
            target[key] += n
    total.dead_letters += part["dead_letters"]
    total.batch_buckets = [a + b for a, b in zip(total.batch_buckets, part["batch_buckets"])]
    total.batch_seconds += part["batch_seconds"]


def add_counters(view: MergedView, part: Mapping[str, Any], overflow: dict[str, int]) -> None:
    """Add one partition's counters (health, join counts, pending, overflow, metric starts) to ``view``'s."""
    _add_health(view.health, part["health"])
    view.pending_predictions += part["pending"][0]
    view.pending_feedback += part["pending"][1]
    for name, n in part["counts"].items():
        setattr(view.counts, name, getattr(view.counts, name) + n)
    for label, n in part["overflow"].items():
        overflow[label] += n
    for metric, started in part.get("metric_start", {}).items():  # the earliest partition's start
        view.metric_start[metric] = min(started, view.metric_start.get(metric, started))


def merge_partials(settings: MonitorSettings, metrics: list[Tracked], partials: list[dict[str, Any]]) -> MergedView:
    """The global view: per metric and window, the merge of every partition's panes still in the window."""
    s = settings
    keys = SeriesKeys(s.segments, s.max_segment_values)
    view = MergedView(keys)
    view.stream_time = max((p["stream_time"] for p in partials), default=-math.inf)
    overflow: dict[str, int] = defaultdict(int)
    for part in partials:
        add_counters(view, part, overflow)
    # Each partition numbers its series itself: they meet by their labels.
    remaps = [[keys.code(labels[0], dict(zip(s.segments, labels[1:]))) for labels in part["labels"]] for part in partials]
    for tracked in metrics:
        states = []
        for i, window in enumerate(tracked.windows):
            first = (math.floor(view.stream_time / window.step) + 1 - window.panes) if isinstance(window, Sliding) else None
            merged: dict[int, list] = {}
            for part, remap in zip(partials, remaps):
                for code, entries in part["windows"][tracked.name][i].items():
                    slot = merged.get(remap[code])
                    if slot is None:
                        slot = merged[remap[code]] = [fresh_copy(tracked.prototype), 0]
                    for pane, op, count in entries:
                        if first is None or pane >= first:
                            try:
                                slot[0].merge(op)
                            except Exception:  # noqa: BLE001 - a user operator's merge must not stop the exporter
                                view.health.operator_errors[(tracked.name, window.label)] += count
                                continue
                            slot[1] += count
            states.append(MergedWindow(window, merged))
        view.metrics.append((tracked, states))
    keys.overflow = overflow
    return view


class PartialsExporter:
    """Reads the partials files in a state directory and keeps their merge as :attr:`view`.

    ``engine`` is an empty engine of the app: it names the app's functions and metrics the files must match;
    ``on_view`` is told of each new merge.
    """

    def __init__(self, settings: MonitorSettings, engine: Engine, state_dir: str, *,
                 on_view: Callable[[MergedView], None] | None = None) -> None:
        self.metrics = [t for t, _ in engine.metrics]
        require_mergeable(self.metrics)
        self.settings, self.engine = settings, engine
        self.layout = StateDirectory(state_dir, create=False)
        self.directory = self.layout.path
        self.view: MergedView | None = None  # None until the first partial is read
        self.on_view = on_view  # told of every new view
        self.latest: dict[int, dict[str, Any]] = {}  # partition -> newest partial accepted
        self.errors: dict[str, int] = defaultdict(int)  # partition (from the file name) -> file versions refused
        self._seen: dict[Path, tuple[tuple[int, int, int], int]] = {}  # file -> (its stat, wall ns) when last read
        self._refused: dict[Path, tuple[int, int, int]] = {}  # file -> stat of the version last refused
        pickled = self.layout.pickled_partials_files()
        if pickled:
            log.warning("%s holds %d partials file(s) of an older streammon (partials-<i>.pkl, pickles): they are not "
                        "read; this version's workers write partials-<i>.msgpack. Delete the old files once every worker "
                        "runs this version", self.directory, len(pickled))

    def refresh(self) -> bool:
        """Read what changed; rebuild the view if any partition moved on. True when it did."""
        changed = False
        for path in self.layout.partials_files():
            key = (-1, -1, -1)  # until stat() answers: a file that cannot be stat'ed is refused once, not per refresh
            try:
                stat = path.stat()
                key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                seen = self._seen.get(path)
                # File times tick coarsely (a few ms) and inodes are reused, so an unchanged stat
                # proves nothing about a write in the same tick: skip only if the last read came
                # well after the last write.
                if seen is not None and seen[0] == key and seen[1] > stat.st_mtime_ns + _SETTLED_NS:
                    continue
                self._seen[path] = (key, time.time_ns())
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._refuse(path, key, f"cannot read it: {exc.strerror or exc}")
                continue
            try:
                part = _checked(load_partials(data, self.engine), path, self.layout)
            except CheckpointError as exc:
                self._refuse(path, key, str(exc))
                continue
            # Any bytes can be in the file (truncated by a full disk, copied in by hand): unpickling
            # garbage raises almost anything, and none of it may stop the exporter.
            except Exception as exc:  # noqa: BLE001
                self._refuse(path, key, f"it is not a complete partials file ({type(exc).__name__}: {exc})"[:500])
                continue
            self._refused.pop(path, None)
            if self._accept(part):
                changed = True
        if changed:
            self.view = merge_partials(self.settings, self.metrics, [self.latest[p] for p in sorted(self.latest)])
            if self.on_view is not None:
                self.on_view(self.view)
        return changed

    def _refuse(self, path: Path, key: tuple[int, int, int], reason: str) -> None:
        # Counted and logged once per version of the file: the refresh re-reads it while it settles.
        if self._refused.get(path) == key:
            return
        self._refused[path] = key
        partition = StateDirectory.partials_partition(path)
        self.errors[partition] += 1
        held = "keeps its last good partial" if partition.isdigit() and int(partition) in self.latest else "has no good partial yet"
        log.error("cannot use %s: %s; partition %s %s until the file changes and is read again", path, reason, partition, held)

    def _accept(self, part: dict[str, Any]) -> bool:
        # A worker restored from an older checkpoint re-writes partials behind ones already seen;
        # those wait until it catches up. A new lineage (state started afresh) replaces at once.
        held = self.latest.get(part["partition"])
        if held is not None and held["lineage"] == part["lineage"] and part["version"] < held["version"]:
            return False
        self.latest[part["partition"]] = part
        return True

    def ages(self) -> dict[int, float]:
        """Seconds since each partition's newest partial was written."""
        now = time.time()
        return {p: max(0.0, now - part["written"]) for p, part in list(self.latest.items())}  # refreshed in another thread


_FIELDS = ("partition", "lineage", "version", "written", "stream_time", "labels", "overflow", "health", "pending",
           "counts", "windows")


def _checked(part: Any, path: Path, layout: StateDirectory) -> dict[str, Any]:
    """``part`` if it has every field :func:`merge_partials` reads, for the partition its file is named after."""
    if not isinstance(part, dict) or any(name not in part for name in _FIELDS):
        raise CheckpointError("it is not a partials file of this version of streammon")
    if layout.partials(part["partition"]).name != path.name:
        raise CheckpointError(f"it holds partition {part['partition']!r}, not the one in its name (copied or renamed?)")
    return part


def published_lineage(layout: StateDirectory, partition: int) -> str | None:
    """The lineage of the partials last published for ``partition``, if any can be read."""
    try:
        return read_header(layout.partials(partition).read_bytes(), format=PARTIALS_FORMAT, what="a partials file")[0]["lineage"]
    except Exception:  # noqa: BLE001 - unreadable or garbage: a fresh lineage, and the file is overwritten
        return None


def write_partials(directory: Path, partition: int, data: bytes) -> None:
    # Partials can be rebuilt from the checkpoint, so they skip the fsync that checkpoints pay for.
    write_atomically(StateDirectory(directory, create=False).partials(partition), data, durable=False,
                     what="the partial aggregates")
