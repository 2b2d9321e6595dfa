"""What a scrape reads: the :class:`View` protocol, met by a live engine and by a group's merged view."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .engine import Health, SeriesKeys
    from .join import JoinCounts
    from .registry import Tracked
    from .windows import Window

__all__ = ["View", "WindowView"]


class WindowView(Protocol):
    """One window of one metric: its series as (series code, events in the window, operator)."""

    window: Window

    def series(self) -> Iterator[tuple[int, int, Any]]: ...


class View(Protocol):
    """The state behind one monitor's published series, read under the monitor's lock."""

    keys: SeriesKeys
    health: Health
    stream_time: float

    @property
    def metrics(self) -> Sequence[tuple[Tracked, Sequence[WindowView]]]: ...

    @property
    def metric_start(self) -> Mapping[str, float]:
        """Metric -> wall time it started counting, for metrics added to an app with saved state."""

    @property
    def counts(self) -> JoinCounts: ...

    @property
    def pending_predictions(self) -> int: ...

    @property
    def pending_feedback(self) -> int: ...

    def metric_error(self, name: str, window: str, exc: BaseException) -> None:
        """A metric's finalizer raised while a scrape read it: count it."""
