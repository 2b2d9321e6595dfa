"""river objects used unchanged: metrics bring ``revert``; stats that support ``+=`` also merge."""

from __future__ import annotations

from typing import Any

__all__ = ["RiverStat", "adapt"]


class RiverStat:
    """A ``river.stats`` object whose ``+=`` / ``-=`` become ``merge`` / ``subtract``."""

    def __init__(self, stat: Any) -> None:
        self.stat = stat
        # What the river object lacks is hidden, so windows choose as for the object itself.
        for name, present in (("subtract", hasattr(type(stat), "__isub__")),
                              ("revert", callable(getattr(stat, "revert", None)))):
            if not present:
                setattr(self, name, None)

    def clone(self) -> RiverStat:
        return RiverStat(self.stat.clone())

    def update(self, *args: Any) -> None:
        self.stat.update(*args)

    def revert(self, *args: Any) -> None:
        self.stat.revert(*args)

    def merge(self, other: RiverStat) -> None:
        self.stat += other.stat

    def subtract(self, other: RiverStat) -> None:
        self.stat -= other.stat

    def get(self) -> float:
        return self.stat.get()

    def __repr__(self) -> str:
        return repr(self.stat)


def adapt(op: Any) -> Any:
    """Wrap a river stat that merges through ``+=``; anything else is returned as it is."""
    module = type(op).__module__ or ""
    if module.startswith("river.stats") and not callable(getattr(op, "merge", None)) and hasattr(type(op), "__iadd__"):
        return RiverStat(op)
    return op
