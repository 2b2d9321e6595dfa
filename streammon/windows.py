"""Window specifications: what slice of event time a metric covers (design section 3)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .errors import RegistrationError

__all__ = ["Window", "Cumulative", "Sliding", "parse_duration", "format_duration"]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(value: str | float | int, *, what: str = "duration") -> float:
    """Seconds in ``value``: a number of seconds or a string such as ``"90s"``, ``"5m"``, ``"1h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise RegistrationError(f"{what} must be seconds or a string like '5m', not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise RegistrationError(
                f"{what} {value!r} is not a duration: write seconds (300) or a string like '5m', '1h', '7d'"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise RegistrationError(f"{what} must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact label for a duration: 3600 -> '1h', 90 -> '90s'."""
    for unit in ("w", "d", "h", "m", "s"):
        n = seconds / _UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{int(seconds * 1000)}ms"


class Window:
    """Base of window specifications; ``label`` is the value of the ``window`` label."""

    label: str


@dataclass(frozen=True)
class Cumulative(Window):
    """Every event since the monitor's state began.

    >>> Cumulative().label
    'cumulative'
    """

    label: str = field(default="cumulative", init=False)


@dataclass(frozen=True, init=False)
class Sliding(Window):
    """A hopping window of length ``size`` advancing by ``step`` (default ``size / 60``).

    At stream time ``T`` (the largest event time seen) it covers event times in
    ``[W_end - size, W_end)`` with ``W_end = (floor(T / step) + 1) * step``. An event older than
    ``T - size - grace`` is counted as late (``grace`` defaults to ``step``).

    >>> w = Sliding("1h")
    >>> w.label, w.size, w.step, w.panes
    ('1h', 3600.0, 60.0, 60)
    """

    size: float
    step: float
    grace: float
    label: str

    def __init__(self, size: str | float, step: str | float | None = None, *, grace: str | float | None = None) -> None:
        size_s = parse_duration(size, what="Sliding size")
        step_s = size_s / 60 if step is None else parse_duration(step, what="Sliding step")
        panes = size_s / step_s
        if step_s > size_s or abs(panes - round(panes)) > 1e-9:
            raise RegistrationError(
                f"Sliding({size!r}, {step!r}): size must be a whole multiple of step, "
                f"e.g. Sliding({size!r}, step={format_duration(size_s / max(1, round(panes)))!r})"
            )
        grace_s = step_s if grace is None else (0.0 if grace == 0 else parse_duration(grace, what="grace"))
        object.__setattr__(self, "size", size_s)
        object.__setattr__(self, "step", step_s)
        object.__setattr__(self, "grace", grace_s)
        object.__setattr__(self, "label", format_duration(size_s))

    @property
    def panes(self) -> int:
        return round(self.size / self.step)

    def end(self, stream_time: float) -> float:
        """``W_end`` at stream time ``stream_time``."""
        return (math.floor(stream_time / self.step) + 1) * self.step

    def __repr__(self) -> str:
        return f"Sliding({format_duration(self.size)!r}, step={format_duration(self.step)!r}, grace={format_duration(self.grace) if self.grace else 0!r})"
