"""Exporter refresh from whole partials against deltas: ``python bench/delta_bench.py [--quick]``.

P partitions, each an engine holding S series x 60 panes (``Sliding('1h', step='1m')``, and
``Cumulative()``) of three metrics (accuracy, ROC AUC, mean score). Then one new event per series
in the newest pane of every partition, and the exporter's refresh, measured both ways in the same
run: whole partials (decode every partition's file, then ``merge_partials``: what ``streammon
export`` does today) and deltas (apply every partition's delta to a ``DeltaView``, then ``view()``).
Issue 12's target: 64 partitions x 100 series x 60 panes, one pane changed per series, <= 50 ms.
Printed and written to bench/results/deltas.json. No figure is asserted in any test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import streammon as sm  # noqa: E402
from streammon import operators as ops  # noqa: E402
from streammon.connectors import Message  # noqa: E402
from streammon.scaleout import merge_partials  # noqa: E402
from streammon.scaleout.deltas import DeltaView, take_delta  # noqa: E402
from streammon.scaleout.partials import dump_partials, load_partials  # noqa: E402

PANES, STEP = 60, 60.0


def monitor() -> sm.Monitor:
    m = sm.Monitor("bench", windows=[sm.Cumulative(), sm.Sliding("1h", step="1m")], segments=["version"],
                   max_segment_values=10_000)
    m.track(ops.Accuracy(), name="accuracy")
    m.track(ops.ROCAUC(), name="roc_auc")
    m.track(ops.MeanScore(), name="mean_score")
    return m


def events(partition: int, series: int, t0: float, panes: int, tag: str) -> list[Message]:
    out = []
    for pane in range(panes):
        for s in range(series):
            pid = f"{tag}-{partition}-{pane}-{s}"
            ts = t0 + pane * STEP + (s % 50)
            score = ((s * 7919 + pane * 31) % 1000) / 1000
            out.append(Message({"id": pid, "ts": ts, "prediction": int(score > 0.5), "score": score,
                                "segment": {"version": f"v{s}"}}))
            out.append(Message({"id": pid, "ts": ts + 1, "label": (s + pane) % 2}))
    return out


def measure(partitions: int, series: int, repeats: int) -> dict:
    app = monitor()
    engines = [app.pipeline.new_engine(app.metrics) for _ in range(partitions)]
    t0 = 1_700_000_000.0 - 1_700_000_000.0 % STEP
    started = time.perf_counter()
    for p, engine in enumerate(engines):
        msgs = events(p, series, t0, PANES, "fill")
        for i in range(0, len(msgs), 4096):
            app.pipeline.process(engine, msgs[i:i + 4096])
    build_s = time.perf_counter() - started
    view = DeltaView(app.settings, app.pipeline.new_engine(app.metrics))
    sent = [0] * partitions
    offsets = [0] * partitions
    for p, engine in enumerate(engines):  # every view begins with a full delta per partition
        data, sent[p] = take_delta(engine, partition=p, offsets={("t", p): 0}, lineage="bench", labels_sent=0, full=True)
        view.apply(data)
    view.view()
    exporter_engine = app.pipeline.new_engine(app.metrics)
    whole_ms, delta_ms, delta_bytes, whole_bytes = [], [], [], []
    for r in range(repeats):
        # One new event per series, in the newest pane (inside the window: it does not move).
        deltas, wholes = [], []
        for p, engine in enumerate(engines):
            app.pipeline.process(engine, events(p, series, t0 + (PANES - 1) * STEP, 1, f"new{r}"))
            offsets[p] += 1
            data, sent[p] = take_delta(engine, partition=p, offsets={("t", p): offsets[p]}, lineage="bench", labels_sent=sent[p])
            deltas.append(data)
            wholes.append(dump_partials(engine, partition=p, offsets={("t", p): offsets[p]}, lineage="bench"))
        began = time.perf_counter()
        merge_partials(app.settings, app.metrics, [load_partials(w, exporter_engine) for w in wholes])
        whole_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        for data in deltas:
            view.apply(data)
        view.view()
        delta_ms.append((time.perf_counter() - began) * 1000)
        delta_bytes.append(sum(map(len, deltas)))
        whole_bytes.append(sum(map(len, wholes)))
    return {"partitions": partitions, "series": series, "panes": PANES, "build_s": round(build_s, 1),
            "whole_refresh_ms_median": round(statistics.median(whole_ms), 1),
            "delta_refresh_ms_median": round(statistics.median(delta_ms), 1),
            "whole_over_delta": round(statistics.median(whole_ms) / statistics.median(delta_ms), 1),
            "whole_kib_per_refresh": round(statistics.median(whole_bytes) / 1024, 1),
            "delta_kib_per_refresh": round(statistics.median(delta_bytes) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 partitions x 20 series; results not written")
    args = parser.parse_args()
    sizes = [(8, 20)] if args.quick else [(8, 100), (64, 100)]
    rows = []
    for partitions, series in sizes:
        rows.append(measure(partitions, series, 2 if args.quick else 3))
        print(json.dumps(rows[-1]), flush=True)
    if not args.quick:
        from kafka_report import machine
        out = ROOT / "bench" / "results" / "deltas.json"
        out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
