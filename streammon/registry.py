"""Registration of metrics: what each one reads, which windows it can live in, checked up front."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import RegistrationError
from .operators.base import Capabilities, capabilities, fresh_copy
from .operators.functions import Finalized, PerEventMean
from .operators.river_adapter import adapt
from .windows import Cumulative, Window

__all__ = ["Tracked", "Feed", "register_operator", "register_function", "RESERVED_NAMES"]

Stream = Literal["pair", "prediction", "feedback"]
TimeBasis = Literal["prediction", "feedback"]

RESERVED_NAMES = {
    "events_total", "join_pending", "joined_total", "join_expired_total", "join_evicted_total",
    "duplicates_total", "late_events_total", "operator_errors_total", "processing_seconds",
    "segment_overflow_total", "stream_time_seconds", "dead_letters_total", "info",
    "checkpoint_age_seconds", "source_connected", "consumer_lag", "worker_partitions", "partials_age_seconds",
}
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Feed:
    """What an operator reads: a stream, the columns passed to ``update``, and its event time."""

    stream: Stream
    fields: tuple[str, ...]
    time: TimeBasis
    keep_missing: bool = False  # rows without a score still reach operators that count what is missing

    @property
    def key(self) -> tuple:
        return (self.stream, self.fields, self.time, self.keep_missing)


@dataclass
class Tracked:
    name: str
    prototype: Any
    caps: Capabilities
    feed: Feed
    windows: tuple[Window, ...]
    output_label: str | None


def _snake(name: str) -> str:
    name = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_") or "metric"


def feed_for(of: str | None, op: Any, time: TimeBasis, *, label: str) -> Feed:
    """Where the columns of ``update`` come from.

    ``score`` is read from the pair (with ``y_true``) by operators that declare
    ``requires_labels = False`` (river's convention for probability metrics), and from the
    prediction alone by every other operator.
    """
    if time not in ("prediction", "feedback"):
        raise RegistrationError(f"{label}: time={time!r} is not a choice; use time='prediction' or time='feedback'")
    wants_labels = getattr(op, "requires_labels", True)
    if of is None or of == "pair":
        of = "y_pred" if wants_labels else "score"
    if of == "y_pred" or (of == "score" and not wants_labels):
        return Feed("pair", ("y_true", of), time)
    if of in ("y_true", "delay"):
        return Feed("pair", (of,), time)
    if of in ("prediction", "score") or (of.startswith("features.") and len(of) > len("features.")):
        return Feed("prediction", (of,), "prediction", keep_missing=bool(getattr(op, "accepts_missing", False)))
    if of == "label":
        return Feed("feedback", (of,), "feedback")
    choices = "y_pred, score, y_true, delay (pairs); prediction, score, features.<name> (predictions); label (feedback)"
    raise RegistrationError(f"{label}: of={of!r} is not something an event has; choose one of {choices}")


def _check_windows(name: str, caps: Capabilities, windows: Sequence[Window]) -> tuple[Window, ...]:
    windows = tuple(windows)
    if not windows:
        raise RegistrationError(f"metric {name!r} has no window; pass windows=[sm.Cumulative()] or leave windows out")
    for w in windows:
        if not isinstance(w, Window):
            raise RegistrationError(f"metric {name!r}: {w!r} is not a window; use sm.Cumulative() or sm.Sliding('1h')")
        if not isinstance(w, Cumulative) and not (caps.merge or caps.revert):
            raise RegistrationError(
                f"metric {name!r} cannot live in {w!r}: its operator has neither merge(other) nor revert(...), "
                f"so the window cannot drop old events. Fix: track it with windows=[sm.Cumulative()], add a "
                f"merge or revert method, or write it as a finalizer over a mergeable statistic, e.g. "
                f"@monitor.metric(stat=ops.ConfusionMatrix())"
            )
    if len({w.label for w in windows}) != len(windows):
        raise RegistrationError(f"metric {name!r}: two windows share the label {windows!r}; give each window a distinct size")
    return windows


def _check_name(name: str, taken: set[str]) -> str:
    if not _NAME.match(name):
        raise RegistrationError(f"metric name {name!r} is not a Prometheus name; use name={_snake(name)!r}")
    if name in RESERVED_NAMES or (name.endswith("_count") and name[:-6] in taken):
        raise RegistrationError(f"metric name {name!r} is taken by streammon itself; pass name='my_{name}'")
    if name in taken or f"{name}_count" in taken:
        raise RegistrationError(f"a metric named {name!r} is already tracked; pass a distinct name=, e.g. name='{name}_2'")
    return name


def register_operator(op: Any, *, name: str | None, of: str | None, time: TimeBasis, windows: Sequence[Window], taken: set[str]) -> Tracked:
    if not (callable(getattr(op, "update", None)) and callable(getattr(op, "get", None))):
        raise RegistrationError(
            f"{op!r} is not an operator: it needs update(...) and get() methods. For a plain function use "
            f"@monitor.metric() or monitor.metric(fn) instead of monitor.track(fn)"
        )
    if isinstance(op, type):
        raise RegistrationError(f"track() takes an operator instance, not the class: write monitor.track({op.__name__}())")
    op = adapt(op)
    inner = getattr(op, "stat", op)
    base_name = name or getattr(inner, "default_name", None) or _snake(type(inner).__name__)
    label = f"metric {base_name!r}"
    feed = feed_for(of if of is not None else getattr(op, "of", None), op, time, label=label)
    caps = capabilities(op)
    name = _check_name(base_name, taken)
    try:  # every series and window gets its own copy, made while events flow: fail here, not there
        fresh_copy(op)
    except Exception as exc:  # noqa: BLE001 - copy.deepcopy raises many kinds
        raise RegistrationError(
            f"metric {name!r}: streammon copies the operator for every series and window, and copying "
            f"{type(inner).__name__} failed ({type(exc).__name__}: {exc}); give it a clone() method that returns "
            f"a new, empty one"
        ) from None
    return Tracked(name, op, caps, feed, _check_windows(name, caps, windows), getattr(op, "output_label", None))


def register_function(fn: Callable, *, stat: Any, name: str | None, of: str | None, time: TimeBasis, windows: Sequence[Window], taken: set[str]) -> Tracked:
    if not callable(fn):
        raise RegistrationError(f"@monitor.metric decorates a function; got {fn!r}")
    fname = name or getattr(fn, "__name__", "metric")
    try:
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params, varargs = [], True
    if stat is not None:
        if not varargs and len(params) != 1:
            raise RegistrationError(
                f"@monitor.metric(stat=...) calls {fname}(stat) at publish time with the statistic only; "
                f"write it as `def {fname}(cm): ...` (it has {len(params)} required parameters now)"
            )
        if isinstance(stat, type):
            raise RegistrationError(f"stat= takes a statistic instance: write stat={stat.__name__}()")
        return register_operator(Finalized(adapt(stat), fn), name=fname, of=of, time=time, windows=windows, taken=taken)
    feed = feed_for(of, None, time, label=f"metric {fname!r}")
    want = len(feed.fields)
    if not varargs and len(params) != want:
        shown = "y_true, y_pred" if want == 2 else "x"
        raise RegistrationError(
            f"@monitor.metric() calls {fname}({shown}) once per {'pair' if feed.stream == 'pair' else feed.stream} "
            f"and publishes the running mean; write `def {fname}({shown}): ...`, or pass stat= for a finalizer "
            f"(it has {len(params)} required parameters now)"
        )
    op = PerEventMean(fn, of=of or "y_pred")
    return register_operator(op, name=fname, of=of, time=time, windows=windows, taken=taken)
