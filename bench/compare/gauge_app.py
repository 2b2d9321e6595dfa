"""The essay's approach as a process: one gauge series per prediction id, served for Prometheus to join.

Two gauges labelled by ``output_id`` (the prediction and the feedback, as in the essay's
``BinaryClassificationMetric``) plus a third, the prediction's event time, without which PromQL has
no way to select "predictions of the last hour". Run by run.py as a child process so that its
memory is its own: ``python gauge_app.py EVENTS.npz``; it prints one JSON line when it serves,
answers ``stats`` on stdin with another, and exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # bench/: the compare package

from prometheus_client import CollectorRegistry, Gauge, start_http_server  # noqa: E402

from compare.data import LABEL, PREDICTION, PREDICTION_TS, Events  # noqa: E402
from compare.prom import rss_bytes  # noqa: E402


def main(path: str) -> None:
    events = Events.load(path)
    registry = CollectorRegistry()
    prediction = Gauge(PREDICTION, "Binary classification metric for tip prediction", ["output_id"], registry=registry)
    label = Gauge(LABEL, "Binary classification metric for tip prediction", ["output_id"], registry=registry)
    prediction_ts = Gauge(PREDICTION_TS, "Event time of the prediction", ["output_id"], registry=registry)
    ids, y_pred, y_true, pred_ts = (events.ids.tolist(), events.y_pred.tolist(), events.y_true.tolist(),
                                    events.pred_ts.tolist())
    order, is_feedback = events.order.tolist(), events.is_feedback.tolist()
    baseline, _ = rss_bytes(os.getpid())
    t0 = time.perf_counter()
    for i, fb in zip(order, is_feedback):
        if fb:
            label.labels(ids[i]).set(y_true[i])
        else:
            prediction.labels(ids[i]).set(y_pred[i])
            prediction_ts.labels(ids[i]).set(pred_ts[i])
    ingest = time.perf_counter() - t0
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    print(json.dumps({"port": server.server_address[1], "ingest_s": ingest, "events": len(order),
                      "baseline_rss_bytes": baseline}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            rss, peak = rss_bytes(os.getpid())
            print(json.dumps({"rss_bytes": rss, "peak_rss_bytes": peak}), flush=True)
    server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
