"""streammon as a process: ingest the same events as wire JSON, serve /metrics for Prometheus.

``python streammon_app.py EVENTS.npz`` prints one JSON line when it serves (ingest time, in-process
scrape time), answers ``stats`` on stdin with its memory, and exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The compare package, and the repository root: streammon need not be installed.
sys.path[:0] = [BENCH, os.path.dirname(BENCH)]

from prometheus_client import generate_latest  # noqa: E402

import streammon as sm  # noqa: E402
from compare.data import WINDOW, Events  # noqa: E402
from compare.prom import rss_bytes  # noqa: E402
from streammon import operators as ops  # noqa: E402
from streammon.connectors.base import Message  # noqa: E402

BATCH = 4096  # messages per Monitor.process call, as a Kafka poll would hand them over


def build_monitor() -> sm.Monitor:
    monitor = sm.Monitor("compare", windows=[sm.Cumulative(), sm.Sliding(WINDOW)])
    monitor.track(ops.Accuracy())
    monitor.track(ops.Precision())
    monitor.track(ops.Recall())
    return monitor


def wire_messages(events: Events, start: int = 0, stop: int | None = None) -> list[Message]:
    """Arrivals ``start:stop`` as the two Kafka topics would carry them: JSON bytes, kind from the topic."""
    ids, y_pred, y_true, pred_ts, fb_ts = events.ids, events.y_pred, events.y_true, events.pred_ts, events.fb_ts
    out = []
    for i, fb in zip(events.order[start:stop].tolist(), events.is_feedback[start:stop].tolist()):
        if fb:
            out.append(Message(b'{"id":"%s","ts":%.3f,"label":%d}' % (ids[i].encode(), fb_ts[i], y_true[i]),
                               kind="feedback", key=ids[i].encode()))
        else:
            out.append(Message(b'{"id":"%s","ts":%.3f,"prediction":%d}' % (ids[i].encode(), pred_ts[i], y_pred[i]),
                               kind="prediction", key=ids[i].encode()))
    return out


def main(path: str) -> None:
    events = Events.load(path)
    monitor = build_monitor()
    baseline, _ = rss_bytes(os.getpid())
    ingest, total = 0.0, len(events.order)
    for k in range(0, total, BATCH):
        batch = wire_messages(events, k, k + BATCH)  # encoded outside the clock: on Kafka they arrive as bytes
        t0 = time.perf_counter()
        monitor.process(batch)
        ingest += time.perf_counter() - t0
    scrapes = []
    for _ in range(21):
        t = time.perf_counter()
        body = generate_latest(monitor.registry)
        scrapes.append(time.perf_counter() - t)
    server = monitor.serve(port=0)
    print(json.dumps({"port": server.port, "ingest_s": ingest, "events": total, "baseline_rss_bytes": baseline,
                      "scrape_s": statistics.median(scrapes), "exposition_bytes": len(body)}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            rss, peak = rss_bytes(os.getpid())
            print(json.dumps({"rss_bytes": rss, "peak_rss_bytes": peak}), flush=True)
    monitor.close()


if __name__ == "__main__":
    main(sys.argv[1])
