"""Bytes per pending prediction: ``MemoryJoinStore`` against a plain ``dict``, each in a fresh interpreter.

``python bench/join_memory.py KIND N METHOD`` prints one JSON figure (KIND: store | dict; METHOD:
tracemalloc | rss); :func:`measure` runs the four and gathers them.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["measure"]

ID_BYTES = sys.getsizeof("0" * 32)  # a 32-character ASCII str: 81 bytes on CPython 3.11


def _child(kind: str, n: int, method: str) -> dict[str, Any]:
    import tracemalloc

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from streammon.memory_store import MemoryJoinStore

    blob = os.urandom(16 * n).hex()
    page = os.sysconf("SC_PAGE_SIZE")
    rss = lambda: int(Path("/proc/self/statm").read_text().split()[1]) * page  # noqa: E731
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else rss()
    base = 1_700_000_000.0
    # Ids, times and scores are made inside the measured region, as decoding would make them: what
    # a store keeps alive counts against it.
    if kind == "store":
        store: Any = MemoryJoinStore(feedback_ttl=7 * 86400.0, prediction_ttl=3600.0, max_pending=10 * n)
        add = store.add_prediction
        for i in range(n):
            ts = base + i * 0.01
            add(blob[32 * i: 32 * i + 32], ts, 0, i & 1, (i % 10_000) / 10_000, ts)
        held = store.pending_predictions
    else:
        store = {}
        for i in range(n):
            store[blob[32 * i: 32 * i + 32]] = (base + i * 0.01, 0, i & 1, (i % 10_000) / 10_000)
        held = len(store)
    gc.collect()
    if method == "tracemalloc":
        current, peak = tracemalloc.get_traced_memory()
        return {"held": held, "bytes_per_entry": (current - before) / n, "peak_bytes_per_entry": (peak - before) / n}
    return {"held": held, "bytes_per_entry": (rss() - before) / n}


def measure(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "ids": "32-character hex strings (the uuid4().hex form)", "id_bytes": ID_BYTES}
    for kind in ("store", "dict"):
        out[kind] = {}
        for method in ("tracemalloc", "rss"):
            done = subprocess.run([sys.executable, __file__, kind, str(n), method], capture_output=True, text=True, check=True)
            out[kind][method] = json.loads(done.stdout)
    return out


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
