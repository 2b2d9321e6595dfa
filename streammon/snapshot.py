"""The snapshot codec: an engine's state and the offsets it reflects, as bytes, and back.

A snapshot holds the join store's own snapshot (:meth:`JoinStore.snapshot`), the series keys, the
counters, stream time, input marks and every window's state. The app's functions (finalizers,
per-event functions) are saved by name and re-attached from the app, and a signature of the app's
metrics refuses a snapshot written by a different app.
"""

from __future__ import annotations

import io
import logging
import pickle
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError
from .operators.base import fresh_copy

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("streammon")

__all__ = ["dump_engine", "load_engine", "dumps", "loads", "signature", "require_picklable", "FORMAT"]

FORMAT = 1
Offsets = Mapping[tuple[str, int], int]


def _user_functions(engine: Engine) -> dict[int, str]:
    # Functions from the app's code (finalizers, per-event functions) are saved by name and
    # re-attached from the app at restore: lambdas and closures cannot be pickled, nor should be.
    found = {}
    for tracked, _ in engine.metrics:
        fn = getattr(tracked.prototype, "fn", None)
        if fn is not None:
            found[id(fn)] = tracked.name
    return found


class _Pickler(pickle.Pickler):
    def __init__(self, file, functions: dict[int, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._functions = functions

    def persistent_id(self, obj: Any) -> str | None:
        return self._functions.get(id(obj)) if callable(obj) else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, functions: dict[str, Any]) -> None:
        super().__init__(file)
        self._functions = functions

    def persistent_load(self, pid: str) -> Any:
        return self._functions.get(pid)  # None: a metric no longer in the app, whose state is dropped


def signature(engine: Engine) -> list[tuple]:
    return [(t.name, type(getattr(t.prototype, "stat", t.prototype)).__name__, t.feed.key, tuple(w.label for w in t.windows))
            for t, _ in engine.metrics] + [("segments", engine.keys.segments)]


def dumps(state: dict[str, Any], engine: Engine) -> bytes:
    """Pickle ``state``, saving the app's functions found in ``engine``'s metrics by name."""
    buffer = io.BytesIO()
    _Pickler(buffer, _user_functions(engine)).dump(state)
    return buffer.getvalue()


def require_picklable(engine: Engine) -> None:
    """Refuse, at start and naming it, a metric whose operator a checkpoint could not save."""
    for tracked, _ in engine.metrics:
        try:
            dumps({"operator": fresh_copy(tracked.prototype)}, engine)
        except Exception as exc:  # noqa: BLE001 - pickle raises many kinds
            raise CheckpointError(
                f"metric {tracked.name!r} cannot be saved in a checkpoint ({type(exc).__name__}: {exc}); keep its "
                f"state in plain attributes (numbers, lists, dicts, numpy arrays), or run without a state directory"
            ) from None


def loads(data: bytes, engine: Engine, *, strict: bool = True) -> dict[str, Any]:
    """Unpickle what :func:`dumps` wrote, re-attaching the app's functions; check the format, and with
    ``strict`` that the app's metrics are exactly the snapshot's (partials must merge one for one)."""
    functions = {tracked.name: tracked.prototype.fn for tracked, _ in engine.metrics if getattr(tracked.prototype, "fn", None) is not None}
    state = _Unpickler(io.BytesIO(data), functions).load()
    if state.get("format") != FORMAT:
        raise CheckpointError(f"snapshot format {state.get('format')} is not {FORMAT}; move the state directory away to start afresh")
    if strict and state["signature"] != signature(engine):
        raise CheckpointError(
            "the app's metrics differ from the ones in the snapshot (a metric, window or segment was added, removed "
            "or changed); keep the app as it was, or move the state directory away to start afresh"
        )
    return state


def dump_engine(engine: Engine, offsets: Offsets, lineage: str | None = None) -> bytes:
    """A snapshot of ``engine``'s state with the ``offsets`` it reflects (see :func:`load_engine`)."""
    state = {
        "format": FORMAT,
        "lineage": lineage,
        "signature": signature(engine),
        "offsets": dict(offsets),
        "store": engine.store.snapshot(),
        "keys": engine.keys,
        "health": dict(engine.health.__dict__),
        "stream_time": engine.stream_time,
        "input_marks": dict(engine.input_marks),
        "windows": {t.name: [s.state() for s in states] for t, states in engine.metrics},
        "metric_start": dict(engine.metric_start),
    }
    return dumps(state, engine)


def load_engine(engine: Engine, data: bytes) -> dict[str, Any]:
    """Load a snapshot into ``engine`` (freshly built from the app); return the snapshot (``offsets``, ``lineage``)."""
    state = loads(data, engine, strict=False)
    kept = _evolve(engine, state)
    engine.store.restore(state["store"])
    engine.keys = state["keys"]
    engine.health.__dict__.update(state["health"])
    engine.stream_time = state["stream_time"]
    engine.input_marks = dict(state.get("input_marks", {}))  # snapshots before aligned input have none
    errors, current = engine.health.operator_errors, {t.name for t, _ in engine.metrics}
    for key in [k for k in errors if k[0] not in current]:
        del errors[key]  # a removed metric's counters go with it
    for tracked, states in engine.metrics:
        if tracked.name in kept:
            for window_state, saved in zip(states, state["windows"][tracked.name]):
                window_state.load(saved)
    started = time.time()
    engine.metric_start = {**{n: t for n, t in state.get("metric_start", {}).items() if n in kept},
                           **{n: started for n in current - kept}}
    return state


def _evolve(engine: Engine, state: dict[str, Any]) -> set[str]:
    """The metrics whose saved state the app keeps; refuse a changed one. Added ones start empty, removed go."""
    saved = {entry[0]: entry for entry in state["signature"]}
    now = {entry[0]: entry for entry in signature(engine)}
    if saved.pop("segments") != now.pop("segments"):
        raise CheckpointError(
            f"the app's segments ({', '.join(engine.keys.segments) or 'none'}) differ from the snapshot's "
            f"({', '.join(saved_segments(state)) or 'none'}): every series is keyed by them, so the state cannot be "
            f"kept; keep the segments as they were, or move the state directory away to start afresh")
    changed = [name for name in now if name in saved and saved[name] != now[name]]
    if changed:
        name = changed[0]
        raise CheckpointError(
            f"metric {name!r} is defined differently from the one in the snapshot (operator, input or windows: "
            f"{_describe(saved[name])} then, {_describe(now[name])} now); keep its definition, or give the new "
            f"one another name (it starts empty and the old one's state is dropped), or move the state directory "
            f"away to start afresh")
    added = [name for name in now if name not in saved]
    removed = [name for name in saved if name not in now]
    if added:
        log.warning("metric(s) %s are new to this state: they start empty at the restored offsets (their start "
                    "time is streammon_metric_start_time_seconds); the other metrics keep their state",
                    ", ".join(map(repr, added)))
    if removed:
        log.info("metric(s) %s are no longer in the app: their saved state is dropped", ", ".join(map(repr, removed)))
    return set(now) - set(added)


def saved_segments(state: dict[str, Any]) -> tuple[str, ...]:
    return next(entry[1] for entry in state["signature"] if entry[0] == "segments")


def _describe(entry: tuple) -> str:
    _, operator, feed, windows = entry
    return f"{operator} of {feed} over {', '.join(windows)}"
