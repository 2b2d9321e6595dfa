"""cProfile of the end-to-end path, summarised as own time by module and the top functions."""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["profile_calls"]

ROOT = Path(__file__).resolve().parent.parent


def _short(file: str) -> str:
    for marker in ("/site-packages/", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file.rsplit("/lib/python", 1)[-1] if "/lib/python" in file else file


def _module(file: str, func: str) -> str:
    if file == "~":  # a C function: name it by what it belongs to
        if "pydantic_core" in func:
            return "pydantic_core (C)"
        if "numpy" in func:
            return "numpy (C)"
        return "builtins (C)"
    short = _short(file)
    if short.startswith("streammon/"):
        return short
    return short.split("/", 1)[0] + " (Python)"


def profile_calls(fn: Callable[[Any], None], args: Sequence[Any], top: int = 40) -> dict[str, Any]:
    """Profile ``fn(a)`` for each ``a`` in ``args``."""
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    for a in args:
        fn(a)
    prof.disable()
    seconds = time.perf_counter() - started
    rows, modules = [], {}
    for (file, line, func), (_, calls, tottime, cumtime, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        where = _short(file)
        rows.append({"function": f"{where}:{line}({func})" if line else f"{where}({func})", "calls": calls,
                     "tottime": tottime, "cumtime": cumtime})
        key = _module(file, func)
        modules[key] = modules.get(key, 0.0) + tottime
    total = sum(modules.values())
    return {"seconds": seconds,
            "by_tottime": sorted(rows, key=lambda x: -x["tottime"])[:top],
            "by_cumtime": sorted(rows, key=lambda x: -x["cumtime"])[:top],
            "by_module": [{"module": k, "tottime": v, "share": v / total} for k, v in sorted(modules.items(), key=lambda kv: -kv[1])]}
