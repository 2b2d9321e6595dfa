"""How a query is repeated: the median of several runs, more of them when they are quick."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["repeat", "BUDGET_S"]

BUDGET_S = 10.0  # no more repeats once a query's runs add up to this
QUICK_S, QUICK_MAX = 1.0, 25  # a query that is quick runs up to 25 times, or until 1 s in all: a steadier median


def repeat(call: Callable[[], Any], reps: int) -> tuple[list[float], Any]:
    """Run ``call`` ``reps`` times (fewer past ``BUDGET_S``, more while quick); (seconds of each run, last result)."""
    times: list[float] = []
    result = None
    while sum(times) < BUDGET_S and (len(times) < reps or (sum(times) < QUICK_S and len(times) < QUICK_MAX)):
        t0 = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t0)
    return times, result
