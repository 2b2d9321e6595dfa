"""Benchmarks of the core engine: ``python bench/engine_bench.py [--quick]``.

Measures, in one run and side by side: end-to-end throughput of ``Monitor.process`` on JSON bytes
against a river loop (baseline A) over the same slices of the same stream, a naive
recompute-at-each-publish engine (baseline B), scrape time against events processed and against
series, bytes per pending prediction in the join store, and a cProfile of the end-to-end path.
Writes bench/results/engine.json and the generated part of docs/benchmarks.md (``--quick``
writes bench/results/engine_quick.json only). No figure here is asserted anywhere: see the doc.
Beside it: synthetic_stream (the stream), harness (monitor, batches, clocks, workers), baselines (A and B),
join_memory, profiling, report.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402
from baselines import HOUR, NaiveRecompute  # noqa: E402
from harness import BATCH, ENGINES, PAIR_METRICS, Clock, Worker, batches, new_monitor, scrape, spans  # noqa: E402
from join_memory import measure as measure_memory  # noqa: E402
from profiling import profile_calls  # noqa: E402
from report import machine, render, update_doc  # noqa: E402
from synthetic_stream import StreamSpec, messages, take  # noqa: E402

DOC_SKELETON = "# Benchmarks\n\nResults of `python bench/engine_bench.py` (how to run: `bench/README.md`).\n"


@dataclass(frozen=True)
class Plan:
    e2e_events: int = 1_000_000  # ~1.5 h of event time: the 1 h window is full and evicting for a third of it
    rounds: int = 8
    naive_seconds: float = 45.0
    profile_events: int = 300_000
    pending: int = 1_000_000
    milestones: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    big_milestone: int | None = 10_000_000  # run only if it fits the budget (or is forced)
    series_values: tuple[int, ...] = (1, 3, 10, 30, 100)
    series_events: int = 40_000
    repeats: int = 15
    budget_seconds: float = 600.0


QUICK = Plan(e2e_events=100_000, rounds=4, naive_seconds=5.0, profile_events=30_000, pending=100_000,
             milestones=(1_000, 10_000, 100_000), big_milestone=None, series_values=(1, 10, 100),
             series_events=8_000, repeats=5, budget_seconds=60.0)


def throughput(plan: Plan, spec: StreamSpec, stream, log) -> tuple[dict, Worker, list, list]:
    """Sections 1-2 and the scrape milestones: streammon and the river loops, batch by batch in turn.

    Each engine lives in its own forked process (its own heap and GC, as in production) and the
    parent hands the same batch to each in turn, the first one rotating, so the machine's load,
    which swings within seconds here, hits all of them alike. Only one engine runs at a time.
    """
    t = time.perf_counter()
    msgs = take(stream, plan.e2e_events)
    log(f"generated {len(msgs):,} messages in {time.perf_counter() - t:.1f} s")
    # Shared with the workers by fork: frozen, so no GC pass walks (and copies) it.
    gc.collect()
    gc.freeze()
    ctx = multiprocessing.get_context("fork")
    workers = {name: Worker(ctx, name, msgs, stream, plan.repeats) for name in ENGINES}
    totals = {name: np.zeros(3) for name in ENGINES}  # cpu, wall, gc seconds
    cuts = tuple(m for m in plan.milestones if m <= len(msgs))
    milestones, rounds = [], []
    bounds = np.linspace(0, len(msgs), plan.rounds + 1).astype(int).tolist()
    for r, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        used = {name: np.zeros(3) for name in ENGINES}
        for k, (start, end) in enumerate(spans(lo, hi, cuts)):
            for name in ENGINES[k % 3:] + ENGINES[: k % 3]:
                used[name] += workers[name].ask("run", start, end)
            if end in cuts:
                milestones.append({"events": end, **workers["streammon"].ask("scrape")})
        for name in ENGINES:
            totals[name] += used[name]
        cpu = {name: (hi - lo) / used[name][0] for name in ENGINES}
        wall = {name: (hi - lo) / used[name][1] for name in ENGINES}
        rounds.append({"events": hi - lo, **cpu, "wall": wall, "gc_seconds": {name: used[name][2] for name in ENGINES},
                       "ratio": cpu["streammon"] / cpu["river_loop"], "ratio_lite": cpu["streammon"] / cpu["river_loop_lite"],
                       "ratio_wall": wall["streammon"] / wall["river_loop"]})
        log(f"slice {r + 1}/{plan.rounds}, events per CPU second: " + ", ".join(f"{k} {v:,.0f}" for k, v in cpu.items()))
    n = len(msgs)
    checked = ("accuracy", "log_loss", "mae", "calibration")
    ours, theirs = workers["streammon"].ask("values", checked), workers["river_loop"].ask("values", checked)
    for name in ENGINES[1:]:
        workers[name].close()
    hours = (json.loads(msgs[-1].value)["ts"] - spec.start) / HOUR
    result = {
        "stream": (f"{n:,} messages, {spec.rate:.0f} predictions/s of event time ({hours:.1f} h), "
                   f"{100 * spec.feedback_share:.0f} % with feedback after an exponential delay (mean {spec.mean_delay:.0f} s), "
                   f"versions v1 (80 %) and v2 (20 %), 32-character hex ids, two features"),
        "batch": BATCH,
        "metric_set": ("10 pair metrics (" + ", ".join(PAIR_METRICS) + "), mean score, score quantiles (0.5, 0.9, 0.99), "
                       "class distribution, feedback delay quantiles, each in Cumulative and Sliding('1h'), per version; "
                       "plus the join-health self metrics"),
        **{name: {"events": n, "cpu_seconds": c, "seconds": w, "gc_seconds": g, "events_per_s": n / w, "events_per_cpu_s": n / c}
           for name, (c, w, g) in ((name, totals[name].tolist()) for name in ENGINES)},
        "river_notes": ("river ROCAUC (its default 10 thresholds), MSE of the score as the Brier score, a 10-bin "
                        "calibration in plain Python; the sliding hour is exact: river metrics are reverted as pairs "
                        "leave a deque; sliding quantiles are river RollingQuantile over an hour's worth of events "
                        "(left out of the lite loop)"),
        "rounds": rounds,
        "ratio_median": statistics.median(x["ratio"] for x in rounds),
        "ratio_lite_median": statistics.median(x["ratio_lite"] for x in rounds),
        "ratio_wall_median": statistics.median(x["ratio_wall"] for x in rounds),
        "ratio_overall": totals["river_loop"][0] / totals["streammon"][0],
        "ratio_lite_overall": totals["river_loop_lite"][0] / totals["streammon"][0],
        "agreement_cumulative_v1": {m: {"streammon": ours[m], "river_loop": theirs[m]} for m in checked},
    }
    return result, workers["streammon"], milestones, msgs


def naive(plan: Plan, msgs: list, log) -> dict:
    """Section 3: baseline B until its time budget or the stream runs out."""
    engine = NaiveRecompute(publish_every=15.0)
    clock, n = Clock(), 0
    for end, batch in batches(msgs, 0, len(msgs)):
        clock.run(engine.process, batch)
        n = end
        if clock.wall > plan.naive_seconds:
            break
    pubs = engine.publishes
    pairs = np.array([p[0] for p in pubs], dtype=float)
    secs = np.array([p[2] for p in pubs])
    slope = float(np.polyfit(pairs, secs, 1)[0]) if len(pubs) > 2 else float("nan")
    shown = sorted(set(np.linspace(0, len(pubs) - 1, min(len(pubs), 9)).astype(int).tolist())) if pubs else []
    log(f"naive recompute: {n:,} events in {clock.wall:.1f} s, {len(pubs)} publishes")
    return {"events": n, "seconds": clock.wall, "events_per_s": n / clock.wall, "events_per_cpu_s": n / clock.cpu,
            "publish_every_s": engine.publish_every, "publishes": len(pubs),
            "publish_seconds_total": float(secs.sum()),
            "publish_samples": [(pubs[i][0], pubs[i][1], 1000 * pubs[i][2]) for i in shown],
            "ms_per_100k_pairs": 1000 * slope * 100_000,
            "projected_publish_s_at_1e7_pairs": slope * 1e7}


def profile(plan: Plan, msgs: list) -> dict:
    """Section 6: cProfile of ``Monitor.process`` over the first events of the stream, on a fresh monitor."""
    todo = batches(msgs, 0, min(plan.profile_events, len(msgs)))
    return {"events": todo[-1][0], **profile_calls(new_monitor("profile").process, [b for _, b in todo])}


def decode_floor(msgs: list, n: int = 20_000) -> dict:
    """Section 7: CPU time to parse and validate one event, the floor under end-to-end throughput."""
    from pydantic import TypeAdapter
    from typing_extensions import TypedDict

    from streammon.events import Prediction, decode_event

    preds = [m for m in msgs[: 3 * n] if m.kind == "prediction"][:n]
    values = [m.value for m in preds]

    class PredictionDict(TypedDict, total=False):  # the wire schema as a TypedDict: no model instances
        id: str
        ts: float
        model: str
        prediction: bool | int | float | str
        score: float | None
        features: dict[str, bool | int | float | str | None] | None
        segment: dict[str, str] | None

    as_dict = TypeAdapter(PredictionDict)
    as_list = TypeAdapter(list[PredictionDict])
    # Each way decodes a batch at a time and drops it, as the engine does: holding every result
    # would bill the GC's walks over them to the decoder.
    ways = {"json.loads": lambda vs, ms: [json.loads(v) for v in vs],
            "Prediction.model_validate_json": lambda vs, ms: [Prediction.model_validate_json(v) for v in vs],
            "streammon decode_event(kind=, key=)": lambda vs, ms: [decode_event(m.value, kind="prediction", key=m.key) for m in ms],
            "TypeAdapter(TypedDict).validate_json per event": lambda vs, ms: [as_dict.validate_json(v) for v in vs],
            "TypeAdapter(list[TypedDict]) once per batch": lambda vs, ms: as_list.validate_json(b"[" + b",".join(vs) + b"]")}
    try:
        import orjson  # not a streammon dependency: measured only where installed

        ways["orjson.loads"] = lambda vs, ms: [orjson.loads(v) for v in vs]
    except ImportError:
        pass
    chunks = [(values[i: i + BATCH], preds[i: i + BATCH]) for i in range(0, len(values), BATCH)]
    out = {}
    for name, fn in ways.items():
        best = {}
        for gc_on in (True, False):  # without the GC: what the decoding itself costs
            best[gc_on] = float("inf")
            if not gc_on:
                gc.disable()
            for _ in range(3):  # best of three CPU times: the floor, not the noise
                t = time.process_time()
                for vs, ms in chunks:
                    fn(vs, ms)
                best[gc_on] = min(best[gc_on], time.process_time() - t)
            gc.enable()
        out[name] = {"us_per_event": 1e6 * best[True] / len(values), "events_per_s": len(values) / best[True],
                     "us_per_event_without_gc": 1e6 * best[False] / len(values)}
    return {"events": len(values), "ways": out}


def series_sweep(plan: Plan, repeats: int, log) -> list:
    """Scrape time against the number of series: the realistic metric set over k segment values."""
    sweep = []
    for k in plan.series_values:
        spec = StreamSpec(versions=tuple(f"v{i}" for i in range(k)), seed=k)
        monitor = new_monitor(f"series{k}")
        msgs = take(messages(spec), plan.series_events)
        for _, batch in batches(msgs, 0, len(msgs)):
            monitor.process(batch)
        sweep.append({"segment_values": k, "events": len(msgs), **scrape(monitor, repeats)})
        log(f"series: {k} segment values -> {sweep[-1]['samples']} samples, collect {sweep[-1]['collect_ms']:.2f} ms")
    return sweep


def scrape_at_big(plan: Plan, forced: bool, worker: Worker, rate: float, seconds_left: float, log) -> dict:
    """The scrape after ``plan.big_milestone`` events: the throughput run's monitor is fed on to it."""
    done, target = plan.e2e_events, plan.big_milestone
    projected = 1.2 * (target - done) * (1 / rate + 7e-6)  # ~7 us per event to generate it; 20 % margin
    if not forced and projected > seconds_left:
        return {"events": target, "skipped": (f"at {rate:,.0f} events/s it would take ~{projected:.0f} s, past the "
                                              f"{plan.budget_seconds:.0f} s budget ({seconds_left:.0f} s left); "
                                              f"run with --scrape-max {target:.0e}")}
    log(f"feeding on to {target:,} events (~{projected:.0f} s)")
    got = worker.ask("extend", done, target)
    rate_wall = (target - done) / got.pop("process_seconds")
    rate_cpu = (target - done) / got.pop("cpu_seconds")
    return {"events": target, **got, "note": (f"events {done:,} to {target:,} processed at {rate_wall:,.0f} events/s "
                                              f"({rate_cpu:,.0f} per CPU second)")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, ~1 minute (a smoke check)")
    parser.add_argument("--scrape-max", type=float, default=None,
                        help="largest event count for the scrape-vs-events figure; 1e7 runs only if it fits the budget unless given")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    plan = QUICK if args.quick else Plan()
    forced = args.scrape_max is not None
    if forced:
        target = int(args.scrape_max)
        plan = replace(plan, milestones=tuple(m for m in plan.milestones if m < target), big_milestone=target)
    log = lambda msg: print(f"[{time.perf_counter() - started:6.1f} s] {msg}", flush=True)  # noqa: E731
    command = "python bench/engine_bench.py" + (" --quick" if args.quick else "") + (f" --scrape-max {args.scrape_max:.0e}" if forced else "")
    results: dict[str, Any] = {"command": command, "quick": args.quick, "machine": machine(ROOT), "plan": plan.__dict__}
    spec = StreamSpec()
    stream = messages(spec)
    log(f"machine: {results['machine']['cpu_model']}, {results['machine']['cores']} cores, load {results['machine']['load_average_at_start']}")
    results["throughput"], worker, milestones, msgs = throughput(plan, spec, stream, log)
    results["naive_recompute"] = naive(plan, msgs, log)
    results["profile"] = profile(plan, msgs)
    results["decode"] = decode_floor(msgs)
    log(f"profile of {results['profile']['events']:,} events; decode floor")
    del msgs
    gc.unfreeze()
    gc.collect()
    results["memory"] = memory = measure_memory(plan.pending)
    log(f"memory: store {memory['store']['tracemalloc']['bytes_per_entry']:.0f} B, dict {memory['dict']['tracemalloc']['bytes_per_entry']:.0f} B per pending prediction")
    sweep = series_sweep(plan, plan.repeats, log)
    if plan.big_milestone:
        milestones.append(scrape_at_big(plan, forced, worker, results["throughput"]["streammon"]["events_per_s"],
                                        plan.budget_seconds - (time.perf_counter() - started), log))
    worker.close()
    measured = [m for m in milestones if "skipped" not in m]
    first, last = measured[0], measured[-1]
    growth = last["collect_ms"] / first["collect_ms"]
    # The realistic metric set over one segment value publishes ~100 series: the scrape target's case.
    hundred = {"config": "the realistic metric set over one version", **sweep[0]}
    results["scrape"] = {"repeats": plan.repeats, "by_events": milestones, "by_series": sweep, "hundred_series": hundred,
                         "growth": growth, "growth_text": (f"{first['collect_ms']:.2f} ms at {first['events']:,} -> "
                                                           f"{last['collect_ms']:.2f} ms at {last['events']:,} events ({growth:.2f}x)")}
    a = results["throughput"]
    results["targets"] = {
        "throughput": a["streammon"]["events_per_cpu_s"] >= 200_000,
        "vs_river": a["ratio_median"] >= 2.0,
        "vs_river_lite": a["ratio_lite_median"] >= 2.0,
        "scrape_100": hundred["exposition_ms"] < 5.0,
        "scrape_flat": growth < 1.5,
        "memory": memory["store"]["tracemalloc"]["bytes_per_entry"] <= 200,
    }
    results["wall_seconds"] = time.perf_counter() - started
    out = ROOT / "bench" / "results" / ("engine_quick.json" if args.quick else "engine.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    if not args.quick:
        update_doc(ROOT / "docs" / "benchmarks.md", render(results), DOC_SKELETON)
    print(render(results))
    log(f"wrote {out.relative_to(ROOT)}" + ("" if args.quick else " and docs/benchmarks.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
