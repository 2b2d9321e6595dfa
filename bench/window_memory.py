"""Window state of ``Sliding('1d', step='1m')``: bytes per series, and the cost of an event at 1, 10, 100 series.

``python bench/window_memory.py [--quick] [--before REV]``

1. **Memory.** The realistic metric set (``harness.new_monitor``: 10 pair metrics, mean score, score
   quantiles, class distribution, feedback delay quantiles, per version) in ``Sliding('1d', step='1m')``
   alone, fed a day (and a minute) of the synthetic stream at ``rate`` predictions per second shared
   evenly by 1 and by 10 versions, so each of a series' 1,440 panes holds data. Bytes are those of the
   window states: every object reachable from them, numpy buffers included, each counted once (in
   memory), and their pickle (what a checkpoint writes); per series, and per metric and pane.
2. **Per-event cost** at 1, 10 and 100 series (and 100 held with 1 active): monitors as above at the
   same total rate, each in its own forked process, fed ``warm`` hours of events, then the next
   ``hours`` timed (CPU time of ``Monitor.process``, the cyclic GC included), the processes taking
   batches in turn, one at a time, so the machine's load hits all alike.

``--before REV`` measures the same in a child process that imports streammon as of git revision REV
(read with ``git archive``), the code before the sparse ROCAUC state by default; ``--before none``
skips it. Writes bench/results/window_memory.json and its section of docs/benchmarks.md (``--quick``:
window_memory_quick.json only; ``--doc-only`` rewrites the section from the last results). No figure
here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import multiprocessing
import pickle
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
BEFORE = "b931364"  # the last revision with ROCAUC's dense cells (2 x 10,001 int64 per pane)

if "--tree" in sys.argv:  # a child measuring another revision: its streammon first on the path
    sys.path[:0] = [sys.argv[sys.argv.index("--tree") + 1], str(BENCH)]
else:
    sys.path[:0] = [str(ROOT), str(BENCH)]

import numpy as np  # noqa: E402
from harness import BATCH, Clock, new_monitor  # noqa: E402
from report import machine, number_text, replace_section  # noqa: E402
from synthetic_stream import StreamSpec, messages  # noqa: E402

import streammon as sm  # noqa: E402

DAY = 86_400.0
WINDOW = "Sliding('1d', step='1m')"
DOC = ROOT / "docs" / "benchmarks.md"
DOC_BEGIN, DOC_END = "<!-- window_memory:begin -->", "<!-- window_memory:end -->"


@dataclass(frozen=True)
class Plan:
    rate: float = 10.0  # predictions per second of event time, all series together (90 % get feedback)
    memory_series: tuple[int, ...] = (1, 10)
    memory_hours: float = 24 + 1 / 60
    cost_cases: tuple[tuple[int, int], ...] = ((1, 1), (10, 10), (100, 100), (100, 1))  # (series held, active)
    cost_warm_hours: tuple[float, ...] = (2.0, 24.0)
    cost_hours: float = 1.0


QUICK = Plan(memory_hours=1.0, cost_warm_hours=(0.5,), cost_hours=0.25)
# A day of dense cells for 100 series would need ~23 GB: before, the cost is measured on 2 h of state only.
BEFORE_COST_WARM = (2.0,)


def monitor() -> sm.Monitor:
    return new_monitor("window_memory", windows=[sm.Sliding("1d", step="1m")])


def stream(rate: float, series: int, after: float = 0.0) -> Iterator[tuple[float, list]]:
    """(event time of the batch's last message, batch) for the realistic stream over ``series`` versions,
    in seconds from the start of every stream here; events from ``after`` on (its own ids)."""
    base = StreamSpec()
    spec = StreamSpec(rate=rate, versions=tuple(f"v{i}" for i in range(series)), even=True,
                      start=base.start + after, seed=base.seed + int(after))
    batch: list = []
    for msg in messages(spec):
        batch.append(msg)
        if len(batch) == BATCH:
            yield json.loads(batch[-1].value)["ts"] - base.start, batch
            batch = []


def feed(m: sm.Monitor, batches: Iterator[tuple[float, list]], until: float, clock: Clock | None = None) -> int:
    """Process batches until one reaches event time ``until`` (seconds from the start); return the events."""
    n = 0
    for ts, batch in batches:
        if clock is None:
            m.process(batch)
        else:
            clock.run(m.process, batch)
        n += len(batch)
        if ts >= until:
            break
    return n


def deep_size(root: Any) -> int:
    """Bytes of every object reachable from ``root`` (classes and modules left out), each counted once."""
    seen: set[int] = set()
    todo, total = [root], 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type) or type(obj).__name__ == "module":
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)  # an ndarray that owns its data counts the buffer too
        if isinstance(obj, np.ndarray):
            if obj.base is not None:
                todo.append(obj.base)
            continue
        todo.extend(gc.get_referents(obj))
    return total


def window_state(m: sm.Monitor) -> dict[str, Any]:
    """Bytes of the sliding window's state, per metric and in all, and how many series and panes it holds:
    as fed; pickled (what a checkpoint writes); in memory after that pickle (which gives every object
    its own attribute dict, as each checkpoint does); and, by tracemalloc, a copy loaded from the pickle
    (as after a restart)."""
    metrics, series, panes = {}, 0, 0
    for tracked, states in m._engine.metrics:  # noqa: SLF001 - the benchmark reads the engine it measures
        [state] = states
        saved = state.state()  # what a checkpoint saves of it: everything but the app's wiring
        held = sum(len(p) for p in state.panes.values())
        fed = deep_size(saved)
        data = pickle.dumps(saved, protocol=pickle.HIGHEST_PROTOCOL)
        gc.collect()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        loaded = pickle.loads(data)
        restored = tracemalloc.get_traced_memory()[0] - start
        tracemalloc.stop()
        del loaded
        metrics[tracked.name] = {"bytes": fed, "pickled": len(data), "checkpointed": deep_size(saved), "restored": restored,
                                 "series": len(state.panes), "panes": held}
        series, panes = max(series, len(state.panes)), max(panes, held)
    out: dict[str, Any] = {"series": series, "panes": panes}
    for key in ("bytes", "pickled", "checkpointed", "restored"):
        out[key] = sum(x[key] for x in metrics.values())
        out[f"{key}_per_series"] = out[key] / max(series, 1)
        for x in metrics.values():
            x[f"{key}_per_pane"] = x[key] / max(x["panes"], 1)
    out["metrics"] = metrics
    return out


def memory(plan: Plan, log) -> list[dict[str, Any]]:
    out = []
    for n in plan.memory_series:
        m, t = monitor(), time.perf_counter()
        events = feed(m, stream(plan.rate, n), plan.memory_hours * 3600)
        fed = time.perf_counter() - t
        state = window_state(m)
        out.append({"series_wanted": n, "events": events, "seconds": fed,
                    "predictions_per_series_per_pane": plan.rate * 60 / n, **state})
        log(f"memory, {n} series: {events:,} events in {fed:.0f} s; {state['bytes_per_series'] / 1e6:.2f} MB per series "
            f"in memory, {state['pickled_per_series'] / 1e6:.2f} MB pickled ({state['panes']:,} panes)")
        del m
        gc.collect()
    return out


def _case(conn, rate: float, held: int, active: int, warm: float) -> None:
    """A forked worker: one monitor fed ``warm`` hours over ``held`` series, then a batch over ``active``
    series per "step" asked, timing each (its own heap and GC, as in production)."""
    try:
        m, batches = monitor(), stream(rate, held)
        feed(m, batches, warm * 3600)
        if active != held:
            batches = stream(rate, active, after=warm * 3600)
        gc.collect()
        clock = Clock()
        conn.send("ready")
        while conn.recv() == "step":
            ts, batch = next(batches)  # made before the clock starts
            cpu, gc_seconds = clock.cpu, clock.gc
            clock.run(m.process, batch)
            conn.send((ts, len(batch), clock.cpu - cpu, clock.gc - gc_seconds))
    except Exception:  # noqa: BLE001 - hand the trace to the parent, which raises it
        conn.send(RuntimeError(traceback.format_exc()))


def _ask(conn, cmd: str) -> Any:
    conn.send(cmd)
    reply = conn.recv()
    if isinstance(reply, Exception):
        raise reply
    return reply


def cost(plan: Plan, warm_hours: tuple[float, ...], log) -> list[dict[str, Any]]:
    """Events per CPU second for each (series held, series active) case, each in its own forked process:
    fed ``warm`` hours over the series it holds, then timed over ``cost_hours`` over the series active,
    the processes taking batches in turn, one running at a time, so the machine's load hits all alike.
    Every active stream has the same total rate, so (100, 1) differs from (1, 1) only by the 99 idle
    series it holds."""
    ctx = multiprocessing.get_context("fork")
    out = []
    for warm in warm_hours:
        workers = {}
        for case in plan.cost_cases:
            conn, child = ctx.Pipe()
            proc = ctx.Process(target=_case, args=(child, plan.rate, *case, warm), daemon=True)
            proc.start()
            child.close()
            workers[case] = (conn, proc)
        for conn, _ in workers.values():
            if isinstance(reply := conn.recv(), Exception):
                raise reply
        end = (warm + plan.cost_hours) * 3600
        totals = {case: [0, 0.0, 0.0] for case in workers}  # events, cpu, gc
        done: set = set()
        order = list(workers)
        for k in itertools.count():
            if len(done) == len(workers):
                break
            for case in order[k % len(order):] + order[: k % len(order)]:
                if case in done:
                    continue
                ts, n, cpu, gc_seconds = _ask(workers[case][0], "step")
                total = totals[case]
                total[0], total[1], total[2] = total[0] + n, total[1] + cpu, total[2] + gc_seconds
                if ts >= end:
                    done.add(case)
        for conn, proc in workers.values():
            conn.send("stop")
            proc.join(30)
        rows = [{"series": held, "active": active, "warm_hours": warm, "events": n, "cpu_seconds": cpu, "gc_seconds": gcs,
                 "events_per_cpu_s": n / cpu, "us_per_event": 1e6 * cpu / n}
                for (held, active), (n, cpu, gcs) in totals.items()]
        log(f"cost after {warm:g} h of state, events per CPU second: "
            + ", ".join(f"{r['series']} series ({r['active']} active) {r['events_per_cpu_s']:,.0f}" for r in rows))
        out += rows
    return out


def measure(plan: Plan, warm_hours: tuple[float, ...], log) -> dict[str, Any]:
    return {"memory": memory(plan, log), "cost": cost(plan, warm_hours, log)}


def before(plan: Plan, rev: str, quick: bool, log) -> dict[str, Any] | None:
    """The same measurements in a child importing streammon as of ``rev``."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "streammon"], capture_output=True)
        if archive.returncode:
            log(f"before: git archive {rev} failed ({archive.stderr.decode().strip()}); skipped")
            return None
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        raw = Path(tmp) / "before.json"
        cmd = [sys.executable, __file__, "--tree", tmp, "--raw", str(raw)] + (["--quick"] if quick else [])
        subprocess.run(cmd, check=True)
        result = json.loads(raw.read_text())
    result["revision"] = rev
    return result


def _mb(x: dict[str, Any]) -> str:
    return " / ".join(f"{x[k + '_per_series'] / 1e6:.2f}" for k in ("bytes", "checkpointed", "restored", "pickled"))


def render(r: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md's window-state section."""
    m, after, prior = r["machine"], r["after"], r["before"]
    plan = r["plan"]
    dirty = f", with uncommitted changes in {', '.join(m['streammon_uncommitted'])}" if m["streammon_uncommitted"] else ""
    out = [f"Run: `{r['command']}` on {m['date']}, {r['wall_seconds']:.0f} s in all; {m['cpu_model']}, {m['cores']} cores, "
           f"{m['memory_gib']} GiB, load {', '.join(map(str, m['load_average_at_start']))} at start; Python {m['python']}, "
           f"numpy {m['packages']['numpy']}; streammon {m['streammon_commit']}{dirty}. Before = streammon as of "
           f"{prior['revision'] if prior else 'n/a'}, measured in the same run. Raw figures: `bench/results/window_memory.json`.", "",
           f"The realistic metric set (14 metrics, per version) in `{r['window']}` alone, fed {plan['memory_hours']:.2f} h of "
           f"the synthetic stream at {plan['rate']:g} predictions per second (90 % with feedback) shared evenly by the "
           "series. MB per series, as fed / in memory after a checkpoint (pickling gives every object its own "
           "attribute dict) / restored from a checkpoint (tracemalloc of the loaded copy) / pickled:", "",
           "| series | predictions per series per pane | before | after |", "| ---: | ---: | ---: | ---: |"]
    old = {x["series_wanted"]: x for x in prior["memory"]} if prior else {}
    for x in after["memory"]:
        b = old.get(x["series_wanted"])
        out.append(f"| {x['series']} | {x['predictions_per_series_per_pane']:g} | {_mb(b) if b else 'n/a'} | {_mb(x)} |")
    cases = after["memory"]
    head = " | ".join(f"{x['predictions_per_series_per_pane']:g} per pane: before | after" for x in cases)
    out += ["", "Bytes per pane by metric, as fed:", "", f"| metric | {head} |", "| --- |" + " ---: | ---: |" * len(cases)]
    for name in cases[0]["metrics"]:
        cells = []
        for x in cases:
            b = old.get(x["series_wanted"])
            cells.append(f"{b['metrics'][name]['bytes_per_pane']:,.0f}" if b else "n/a")
            cells.append(f"{x['metrics'][name]['bytes_per_pane']:,.0f}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", f"Per-event cost: each monitor fed the given hours of state, then {plan['cost_hours']:g} h more over the "
                "series active, timed (CPU time of `Monitor.process`, the cyclic GC included); each monitor in its own forked process "
                "(its own heap and GC), the processes taking batches in turn, one at a time. Same total rate in every case, so \"100 held, 1 active\" differs from \"1, 1\" only by 99 idle "
                "series in its state.", "",
            "| series held | active | hours of state | before: events per CPU s | after: events per CPU s | after: us per event | after: GC share |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    old_cost = {(x["series"], x.get("active", x["series"]), x["warm_hours"]): x for x in prior["cost"]} if prior else {}
    for x in after["cost"]:
        b = old_cost.get((x["series"], x["active"], x["warm_hours"]))
        out.append(f"| {x['series']} | {x['active']} | {x['warm_hours']:g} | {number_text(b['events_per_cpu_s']) if b else 'not run'} | "
                   f"{number_text(x['events_per_cpu_s'])} | {x['us_per_event']:.1f} | {100 * x['gc_seconds'] / x['cpu_seconds']:.0f} % |")
    return "\n".join(out)


def update_doc(r: dict[str, Any]) -> None:
    replace_section(DOC, DOC_BEGIN, DOC_END, render(r), "Window state: Sliding('1d', step='1m')")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="an hour of state instead of a day: a smoke check")
    ap.add_argument("--before", default=BEFORE, help=f"git revision to measure as 'before' (default {BEFORE}; 'none' to skip)")
    ap.add_argument("--doc-only", action="store_true", help="rewrite the doc section from the last results, measuring nothing")
    ap.add_argument("--tree", help=argparse.SUPPRESS)  # child: the streammon tree it imports
    ap.add_argument("--raw", help=argparse.SUPPRESS)  # child: where it writes its figures
    args = ap.parse_args()
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - started:6.0f} s]{' before:' if args.tree else ''} {s}", flush=True)  # noqa: E731
    if args.tree:
        warm = BEFORE_COST_WARM if not args.quick else plan.cost_warm_hours
        Path(args.raw).write_text(json.dumps(measure(plan, warm, log)))
        return
    out = BENCH / "results" / ("window_memory_quick.json" if args.quick else "window_memory.json")
    if args.doc_only:
        update_doc(json.loads(out.read_text()))
        print(f"updated {DOC.relative_to(ROOT)} from {out.relative_to(ROOT)}")
        return
    facts = machine(ROOT)  # the load average at the start
    prior = None if args.before == "none" else before(plan, args.before, args.quick, log)
    after = measure(plan, plan.cost_warm_hours, log)
    result = {"command": " ".join(["python bench/window_memory.py", *sys.argv[1:]]), "machine": facts,
              "window": WINDOW, "plan": asdict(plan), "wall_seconds": time.perf_counter() - started, "after": after, "before": prior}
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))
    if not args.quick:
        update_doc(result)
        print(f"updated {DOC.relative_to(ROOT)}")
    print(f"\nwrote {out.relative_to(ROOT)} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
