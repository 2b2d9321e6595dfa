"""Cost of scale-out's partial aggregates: ``python bench/partials_bench.py [--quick]``.

The realistic metric set (bench/kafka_common.py) is fed the realistic stream split over P input
partitions, each through its own engine, as scaled-out workers keep them. Measured, for P in 4, 8,
16, 32: the size of one partition's partials file and the time to write it (what a worker pays
every publish interval), the exporter's refresh when every partition changed and when one did
(read, decode, merge: what ``streammon export`` pays every refresh), and a scrape of the merged
view. Writes bench/results/partials.json and its section of docs/benchmarks.md (``--quick``:
bench/results/partials_quick.json only). No figure is asserted in any test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka_common import ROOT, realistic_monitor, the_stream
from kafka_report import machine
from report import replace_section

from streammon.scaleout import dump_partials, write_partials

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- partials:begin -->", "<!-- partials:end -->"


def compare_codecs(monitor, engine) -> dict:
    """One partition's operators as data (what the partials hold) against the same as a pickle (what they held
    before, format 1): bytes, encode and decode, side by side."""
    import pickle

    from streammon.scaleout.partials import _window_partials
    from streammon.snapshot import dumps
    from streammon.state_codec import decode_state, encode_state

    windows = {t.name: [_window_partials(s) for s in states] for t, states in engine.metrics}
    template = {t.name: [{0: [(0, t.prototype, 0)]} for _ in t.windows] for t in monitor.metrics}
    out = {}
    for name, enc, dec in (("data", encode_state, lambda b: decode_state(b, template)),
                           ("pickle", lambda w: dumps(w, engine), pickle.loads)):
        times = {"encode": [], "decode": []}
        for _ in range(3):
            started = time.perf_counter()
            data = enc(windows)
            times["encode"].append(time.perf_counter() - started)
            started = time.perf_counter()
            dec(data)
            times["decode"].append(time.perf_counter() - started)
        out[f"{name}_kib"] = round(len(data) / 1024, 1)
        out[f"{name}_encode_ms"] = round(min(times["encode"]) * 1000, 2)
        out[f"{name}_decode_ms"] = round(min(times["decode"]) * 1000, 2)
    return out


def measure(events: int, partitions: list[int], repeats: int) -> dict:
    messages = the_stream(events)
    rows = []
    for count in partitions:
        monitor = realistic_monitor()
        split: list[list] = [[] for _ in range(count)]
        for m in messages:
            split[zlib.crc32(m.key if isinstance(m.key, bytes) else str(m.key).encode()) % count].append(m)
        directory = Path(tempfile.mkdtemp(prefix="partials-bench-"))
        engines, dumps, sizes = [], [], []
        for p, mine in enumerate(split):
            engine = monitor.pipeline.new_engine(monitor.metrics)
            for i in range(0, len(mine), 4096):
                monitor.pipeline.process(engine, mine[i:i + 4096])
            started = time.perf_counter()
            data = dump_partials(engine, partition=p, offsets={("predictions", p): len(mine)}, lineage="bench")
            write_partials(directory, p, data)
            dumps.append(time.perf_counter() - started)
            sizes.append(len(data))
            engines.append(engine)

        # Called only within this iteration, so the loop's variables are the ones meant (B023).
        def refresh(changed: list[int], version: int) -> float:
            for p in changed:
                write_partials(directory, p, dump_partials(engines[p], partition=p, offsets={("predictions", p): version},  # noqa: B023
                                                           lineage="bench"))
            started = time.perf_counter()
            exporter.refresh()  # noqa: B023
            return time.perf_counter() - started

        codec = compare_codecs(monitor, engines[0])
        exporter_monitor = realistic_monitor()
        exporter = exporter_monitor._exporting(str(directory))  # noqa: SLF001 - what Monitor.export serves from
        all_changed = [refresh(list(range(count)), 10**9 + r) for r in range(repeats)]
        one_changed = [refresh([0], 2 * 10**9 + r) for r in range(repeats)]
        started = time.perf_counter()
        samples = exporter_monitor.values()
        scrape = time.perf_counter() - started
        rows.append({"partitions": count, "events_per_partition": round(events / count),
                     "partials_kib_median": round(statistics.median(sizes) / 1024, 1),
                     "write_ms_median": round(statistics.median(dumps) * 1000, 2),
                     "refresh_all_ms_median": round(statistics.median(all_changed) * 1000, 1),
                     "refresh_one_ms_median": round(statistics.median(one_changed) * 1000, 1),
                     "scrape_ms": round(scrape * 1000, 2), "samples": len(samples), **codec})
        print(json.dumps(rows[-1]), flush=True)
    return {"events": events, "rows": rows}


def render(result: dict, meta: dict) -> str:
    lines = [
        f"Results of `python bench/partials_bench.py` on {meta['date']} ({meta['cpu_model']}, {meta['cores']} cores, load "
        f"{meta['load_average_at_start']} at start; streammon {meta['streammon_commit']}). Raw figures: "
        "`bench/results/partials.json`.",
        "",
        f"{result['events']:,} messages of the realistic stream, split by key over P partitions, each through its own "
        "engine with the realistic metric set (`Cumulative()` and `Sliding('1h')`, per version). A worker writes one "
        "partials file per partition it owns every publish interval (1 s by default); the exporter re-reads those "
        "that changed and merges all of them every refresh (0.5 s by default). Medians.",
        "",
        "| partitions | one partition's partials | worker: write one | exporter: refresh, all changed | exporter: refresh, one changed | scrape of the merged view |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['partitions']} | {r['partials_kib_median']:,} KiB | {r['write_ms_median']} ms | "
                     f"{r['refresh_all_ms_median']} ms | {r['refresh_one_ms_median']} ms | {r['scrape_ms']} ms ({r['samples']} samples) |")
    lines += ["", "A partition's operators as data (`streammon.state_codec`, format 2) against the same operators "
              "pickled (format 1, before), side by side in the same run (best of 3):", "",
              "| partitions | data KiB | pickle KiB | data encode ms | pickle encode ms | data decode ms | pickle decode ms |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['partitions']} | {r['data_kib']} | {r['pickle_kib']} | {r['data_encode_ms']} | "
                     f"{r['pickle_encode_ms']} | {r['data_decode_ms']} | {r['pickle_decode_ms']} |")
    lines += ["", "The exporter merges every partition's panes again at each refresh in which any partition changed, "
              "so its cost grows with partitions x series x panes; the scrape reads the merged view and does not."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; writes bench/results/partials_quick.json only")
    args = parser.parse_args()
    meta = machine()
    result = measure(40_000 if args.quick else 200_000, [4, 8] if args.quick else [4, 8, 16, 32], 1 if args.quick else 3)
    out = ROOT / "bench" / "results" / ("partials_quick.json" if args.quick else "partials.json")
    out.write_text(json.dumps({"machine": meta, **result}, indent=2) + "\n")
    print(f"wrote {out}")
    if not args.quick:
        replace_section(DOC, BEGIN, END, render(result, meta), "Scale-out: partial aggregates")
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
