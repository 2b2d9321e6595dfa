"""What aligned input costs: ``Monitor.run`` over the same events, aligned and as delivered, side by side.

``python bench/align_bench.py [N]`` builds N predictions (and ~0.9 N feedback) in 4 partitions of
each topic, JSON-encoded, and runs them through ``Monitor.run`` from an in-memory source twice per
round: a ``PartitionedMemorySource`` (read aligned, delivered one random partition per poll) and the
same messages as one list (``MemorySource``, read as delivered). It prints CPU seconds per event
and the ratio, and writes ``bench/results/align.json``. Rounds alternate, so load on a shared
machine hits both alike; compare the ratio, not the absolute figures.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streammon as sm
from streammon import operators as ops
from streammon.connectors import MemorySource
from streammon.connectors.base import Message
from streammon.connectors.memory import PartitionedMemorySource

PARTITIONS = 4


def records(n: int, seed: int = 1) -> dict[tuple[str, int], list[bytes]]:
    rng = random.Random(seed)
    out = {(t, p): [] for t in ("predictions", "feedback") for p in range(PARTITIONS)}
    for i in range(n):
        ts = 1_700_000_000 + i * 0.05 + rng.uniform(-5, 5)
        event = {"id": f"p{i}", "ts": ts, "prediction": rng.randint(0, 1), "score": rng.random(),
                 "segment": {"version": f"v{i % 3}"}}
        out[("predictions", i % PARTITIONS)].append(json.dumps(event).encode())
        if rng.random() < 0.9:
            out[("feedback", i % PARTITIONS)].append(json.dumps({"id": f"p{i}", "ts": ts + 30, "label": rng.randint(0, 1)}).encode())
    return out


def monitor() -> sm.Monitor:
    m = sm.Monitor("bench", windows=[sm.Cumulative(), sm.Sliding("1h")], segments=["version"], max_future_seconds=1e12)
    m.track(ops.Accuracy())
    m.track(ops.Mean(of="score"), name="mean_score")
    return m


def one_partition_per_poll(rng: random.Random):
    return lambda available, max_records: [(rng.choice(available), max_records)]


def run_aligned(data) -> float:
    m = monitor()
    source = PartitionedMemorySource(data, schedule=one_partition_per_poll(random.Random(0)))
    started = time.process_time()
    m.run(source, until=lambda: source.done, max_idle=0.0, poll_timeout=0.0)
    return time.process_time() - started


def run_unaligned(data) -> float:
    m = monitor()
    kinds = {"predictions": "prediction", "feedback": "feedback"}
    # The same messages, interleaved by offset, as an even fetch of every partition would hand them out.
    messages = [Message(v, kinds[t], None, t, p, o) for (t, p), values in data.items() for o, v in enumerate(values)]
    messages.sort(key=lambda msg: msg.offset)
    source = MemorySource(messages)
    started = time.process_time()
    m.run(source, poll_timeout=0.0)
    return time.process_time() - started


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    data = records(n)
    events = sum(len(v) for v in data.values())
    aligned, unaligned = [], []
    for _ in range(3):
        unaligned.append(run_unaligned(data))
        aligned.append(run_aligned(data))
    a, u = sorted(aligned)[1], sorted(unaligned)[1]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "events": events,
        "aligned_us_per_event": round(a / events * 1e6, 2),
        "as_delivered_us_per_event": round(u / events * 1e6, 2),
        "aligned_over_as_delivered": round(a / u, 3),
        "rounds": 3,
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).resolve().parent / "results" / "align.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
