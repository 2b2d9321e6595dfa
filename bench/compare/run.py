"""Side-by-side benchmark: the essay's PromQL join, PostgreSQL, and streammon, on the same events.

    python bench/compare/run.py                 # full: N in 1e3 1e4 1e5 3e5 1e6, about 15-25 min on 2 cores
    python bench/compare/run.py --quick         # N in 1e3 1e4 and a short interval experiment, about 3 min
    python bench/compare/run.py --sizes 1e3 3e4 # any sizes

It installs what is missing (Debian's prometheus and postgresql, psycopg and matplotlib from PyPI),
starts its own Prometheus and PostgreSQL servers on free loopback ports with temporary data
directories, and stops them before it exits. A full run writes bench/results/compare*.csv,
bench/results/compare.png and its section of docs/benchmarks.md; other runs write
bench/results/compare_quick* (or compare_custom*) and leave the doc alone.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "bench"), ROOT]  # the compare package; streammon need not be installed

FULL_SIZES = (1_000, 10_000, 100_000, 300_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
SYSTEMS = ("streammon", "promql_join", "postgresql")
ROW_FIELDS = ["n", "system", "measure", "value", "unit", "status", "note"]
ANSWER_FIELDS = ["n", "system", "read", "window", "metric", "value", "sklearn", "status"]
INTERVAL_FIELDS = ["approach", "scrape_interval_s", "updates", "updates_scraped", "missed_share", "scrapes_checked",
                   "exact_scrapes", "mean_abs_err_pp", "max_abs_err_pp", "note"]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and a short interval experiment (~3 min)")
    p.add_argument("--sizes", nargs="+", type=float, help="numbers of predictions with feedback, e.g. 1e3 1e5")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--reps", type=int, default=3,
                   help="runs per query (fewer once its runs pass 10 s; up to 25 while they stay under 1 s)")
    p.add_argument("--batch", type=int, default=20_000, help="arrivals per PostgreSQL transaction and view refresh")
    p.add_argument("--prom-memory-gb", type=float, default=8.0,
                   help="skip a PromQL-join size whose projected Prometheus peak RSS is above this")
    p.add_argument("--promql-time-budget", type=float, default=900.0,
                   help="skip a PromQL-join size whose projected query time (s) is above this")
    p.add_argument("--no-interval", action="store_true", help="skip the scrape-interval experiment")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: redraw the plot and the doc section from the CSV files of the last run")
    return p.parse_args(argv)


def _command(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _machine() -> dict:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    with open("/proc/meminfo") as f:
        mem = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal")), 0)
    from compare.postgres import _bin_dir

    prom = _command("prometheus", "--version").splitlines()
    pg = _command(os.path.join(_bin_dir(), "postgres"), "--version")
    commit = _command("git", "-C", ROOT, "rev-parse", "--short", "HEAD")
    if _command("git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "streammon"):
        commit += " with uncommitted changes in streammon/"
    from importlib.metadata import version

    import numpy
    import psycopg
    import sklearn

    versions = (f"{prom[0].split(' (')[0] if prom else 'prometheus ?'}, {pg}, Python {platform.python_version()}, "
                f"prometheus_client {version('prometheus_client')}, psycopg {psycopg.__version__}, "
                f"numpy {numpy.__version__}, "
                f"scikit-learn {sklearn.__version__}, streammon commit {commit}")
    return {"machine": f"{cpu}, {os.cpu_count()} cores, {mem / 2**30:.1f} GiB, {platform.platform()}",
            "load": ", ".join(f"{x:.2f}" for x in os.getloadavg()), "versions": versions,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def _promql_skip(n: int, done: list[dict], args: argparse.Namespace) -> str:
    """Why the PromQL join should not be tried at ``n``, projected from the largest size it already ran."""
    def value(m: int, measure: str) -> float | None:
        r = next((r for r in done if r["n"] == m and r["system"] == "promql_join" and r["measure"] == measure), None)
        return float(r["value"]) if r and r["status"] == "ok" else None

    ran = sorted({r["n"] for r in done if r["system"] == "promql_join" and value(r["n"], "prometheus_peak_rss_bytes")})
    if not ran:
        return ""
    m = ran[-1]
    per_series = value(m, "prometheus_peak_rss_bytes") / (3 * m)
    projected = per_series * 3 * n
    if projected > args.prom_memory_gb * 1e9:
        return (f"projected Prometheus peak RSS {projected / 1e9:.1f} GB for {3 * n:,} series "
                f"({per_series / 1e3:.1f} kB per series measured at N={m:,}) is above "
                f"--prom-memory-gb {args.prom_memory_gb:g} "
                "on this shared machine")
    queries = sum(float(r["value"]) * args.reps for r in done if r["n"] == m and r["system"] == "promql_join"
                  and r["measure"].startswith("query_s:") and r["status"] == "ok")
    if queries * n / m > args.promql_time_budget:
        return f"projected query time {queries * n / m:.0f} s is above --promql-time-budget {args.promql_time_budget:g}"
    return ""


def _leftovers() -> list[str]:
    """Servers this run started that still run (there should be none): their pids are ended here, one by one."""
    from compare.prom import OWN_DIRS

    out = []
    for line in _command("ps", "-eo", "pid=,args=").splitlines():
        pid, _, cmd = line.strip().partition(" ")
        if any(d in cmd for d in OWN_DIRS) and int(pid) != os.getpid():
            out.append(line.strip())
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGTERM)
    return out


def _measure(args: argparse.Namespace, sizes: tuple[int, ...], meta: dict) -> tuple[list, list, list, list]:
    from compare.data import make_events
    from compare.interval import IntervalSpec, run_interval
    from compare.measure import measure_postgres, measure_promql_join, measure_streammon, save_events, temp_dir
    from compare.postgres import Postgres

    rows, answers, skipped = [], [], []
    with Postgres() as pg, temp_dir() as tmp:
        for n in sizes:
            events = make_events(n)
            path = save_events(events, tmp)
            for system in args.systems:
                why = _promql_skip(n, rows, args) if system == "promql_join" else ""
                if why:
                    skipped.append({"n": n, "system": system, "reason": why})
                    rows.append({"n": n, "system": system, "measure": "run", "value": "", "unit": "",
                                 "status": "not run", "note": why})
                    print(f"  N={n:>9,} {system:<12} not run: {why}", flush=True)
                    continue
                t0 = time.monotonic()
                try:
                    if system == "streammon":
                        got, said = measure_streammon(events, path, reps=args.reps)
                    elif system == "promql_join":
                        got, said = measure_promql_join(events, path, reps=args.reps)
                    else:
                        got, said = measure_postgres(pg, events, reps=args.reps, batch=args.batch)
                except Exception as exc:  # noqa: BLE001 - a system that breaks is a result, and the others still run
                    got, said = [{"system": system, "measure": "run", "value": "", "unit": "", "status": "failed",
                                  "note": f"{type(exc).__name__}: {exc}"}], []
                rows += [{"n": n, **r} for r in got]
                answers += [{"n": n, **a} for a in said]
                bad = [r["measure"] for r in got if r["status"] != "ok"]
                read = next((r["value"] for r in got
                             if r["measure"] in ("query_s:accuracy:cumulative", "query_s:join:cumulative")), "")
                shown = f"{read * 1e3:.2f} ms" if read != "" else "-"
                print(f"  N={n:>9,} {system:<12} {time.monotonic() - t0:6.1f} s  read accuracy: {shown}  "
                      + ("problems: " + ", ".join(bad) if bad else ""), flush=True)
            os.remove(path)
    interval_rows, spec = [], IntervalSpec(rate=5.0, hours=1.5) if args.quick else IntervalSpec()
    if not args.no_interval:
        t0 = time.monotonic()
        interval_rows = run_interval(spec)
        print(f"  scrape-interval experiment {time.monotonic() - t0:.1f} s", flush=True)
    meta["interval_spec"] = (f"{spec.rate:g} predictions/s for {spec.hours:g} h, "
                             f"feedback after {spec.mean_delay:g} s on average, accuracy {spec.accuracy:g} "
                             f"dropping to {spec.incident_accuracy:g} for "
                             f"{(spec.incident[1] - spec.incident[0]) / 60:g} min")
    return rows, answers, skipped, interval_rows


def _load(results_dir: str, kind: str) -> tuple[list, list, list, list, dict]:
    """A finished run read back from its files (for --report-only)."""
    def read(name: str) -> list[dict]:
        path = os.path.join(results_dir, f"compare{kind}{name}.csv")
        if not os.path.exists(path):
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    rows = [{**r, "n": int(r["n"])} for r in read("") if r["measure"] != "fresh_batch_s"]  # derived again below
    answers = [{**a, "n": int(a["n"])} for a in read("_answers")]
    floats = ("scrape_interval_s", "missed_share", "mean_abs_err_pp", "max_abs_err_pp")
    ints = ("updates", "updates_scraped", "scrapes_checked", "exact_scrapes")
    interval_rows = [{**x, **{k: float(x[k]) for k in floats}, **{k: int(x[k]) for k in ints}}
                     for x in read("_interval")]
    with open(os.path.join(results_dir, f"compare{kind}_meta.json")) as f:
        meta = json.load(f)
    return rows, answers, meta.pop("skipped"), interval_rows, meta


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    # Stopped by a signal, the servers still go: SIGTERM unwinds like Ctrl-C, and Ctrl-C works even when
    # started in the background (where the shell hands Python SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from compare.install import ensure_tools

    ensure_tools()  # before the imports below, which need what it installs
    from compare.report import Results, headline, plot, section, update_doc, write_csv

    sizes = tuple(int(s) for s in args.sizes) if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)
    kind = "" if sizes == FULL_SIZES and not args.quick and set(args.systems) == set(SYSTEMS) else (
        "_quick" if args.quick else "_custom")
    results_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(results_dir, exist_ok=True)
    if args.report_only:
        rows, answers, skipped, interval_rows, meta = _load(results_dir, kind)
    else:
        meta = {**_machine(), "reps": args.reps, "batch": args.batch}
        print(f"comparison at N = {', '.join(f'{n:,}' for n in sizes)}; load {meta['load']}", flush=True)
        started = time.monotonic()
        rows, answers, skipped, interval_rows = _measure(args, sizes, meta)
        meta["minutes"] = (time.monotonic() - started) / 60
        with open(os.path.join(results_dir, f"compare{kind}_meta.json"), "w") as f:
            json.dump({**meta, "skipped": skipped}, f, indent=1)
    results = Results(rows, answers, skipped)
    results.add_fresh_batch(meta["batch"])
    write_csv(os.path.join(results_dir, f"compare{kind}.csv"), results.rows, ROW_FIELDS)
    write_csv(os.path.join(results_dir, f"compare{kind}_answers.csv"), answers, ANSWER_FIELDS)
    if interval_rows:
        write_csv(os.path.join(results_dir, f"compare{kind}_interval.csv"), interval_rows, INTERVAL_FIELDS)
    plot(results, os.path.join(results_dir, f"compare{kind}.png"),
         f"Same events, three systems; {meta['machine']}; {meta['date']}")
    if not kind and interval_rows:
        update_doc(os.path.join(ROOT, "docs", "benchmarks.md"), section(results, interval_rows, meta))
    print(f"\nwrote bench/results/compare{kind}*.csv and compare{kind}.png"
          + ("" if kind else " and the compare section of docs/benchmarks.md"))
    print(f"headline: {headline(results)}")
    wrong = [a for a in answers if a["status"] != "exact"]
    print(f"answers checked against scikit-learn: {len(answers)}, not exact: {len(wrong)}")
    left = _leftovers()
    print("servers left running: " + ("; ".join(left) if left else "none"))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
