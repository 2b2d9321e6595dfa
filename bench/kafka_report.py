"""The machine a Kafka benchmark ran on, and its results as the kafka section of docs/benchmarks.md."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from kafka_common import ROOT, realistic_monitor

__all__ = ["machine", "same_metric_set", "render", "update_doc", "BEGIN", "END"]

QUIET = 0.1  # cores: other processes below this during both runs of a scaling round make it a quiet round
BEGIN = "<!-- kafka:begin -->"
END = "<!-- kafka:end -->"


def machine() -> dict[str, Any]:
    from kafka.record.util import crc32c_c  # kafka-python's C CRC32C, None when it computes it in Python

    from streammon.connectors.broker import tansu_binary

    cpu: dict[str, str] = {}
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        key, _, value = line.partition(":")
        cpu.setdefault(key.strip(), value.strip())

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu_model": cpu.get("model name") or platform.processor() or "unknown", "cpu_mhz": cpu.get("cpu MHz"),
            "cores": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": f"{platform.python_version()} ({platform.python_implementation()})", "platform": platform.platform(),
            "packages": {p: importlib.metadata.version(p) for p in ("kafka-python", "numpy", "pydantic", "prometheus_client")},
            "crc32c": "in C, by the crc32c package" if crc32c_c is not None else "in pure Python, no crc32c package",
            "broker": subprocess.run([tansu_binary(), "--version"], capture_output=True, text=True).stdout.strip(),
            "streammon_commit": git("rev-parse", "--short", "HEAD").strip(),
            # porcelain lines are "XY path": not stripped, as X may be a space
            "streammon_uncommitted": [line[3:] for line in git("status", "--porcelain", "--", "streammon").splitlines() if line]}


def same_metric_set() -> str:
    """Whether realistic_monitor() tracks what bench/engine_bench.py's new_monitor() tracks."""
    try:
        from engine_bench import new_monitor
    except ImportError as exc:
        return f"bench/engine_bench.py did not import ({exc}); the set is built here to the same list"

    def shape(m) -> list:
        return [(t.name, type(getattr(t.prototype, "stat", t.prototype)).__name__, [w.label for w in t.windows])
                for t in m.metrics] + [list(m.settings.segments)]

    if shape(new_monitor()) == shape(realistic_monitor()):
        return "the same as bench/engine_bench.py's (checked at run time)"
    return "DIFFERENT from bench/engine_bench.py's new_monitor(): update kafka_common.realistic_monitor"


def _n(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{1000 * x:,.0f} ms"


def _nth_largest(k: int) -> str:
    return {1: "largest", 2: "second largest", 3: "third largest"}.get(k, f"{k}th largest")


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _throughput_table(name: str, t: dict[str, Any]) -> list[str]:
    with_engine = "engine" in t["rounds"][0]
    head = ("| round | bare consume events/s | worker events/s | worker / bare | per CPU second | worker with prefetch "
            "events/s | with prefetch / bare | per CPU second |")
    out = [f"**{name}** ({t['produce']['messages']:,} messages, {t['produce']['value_bytes_mean']:.0f} bytes each on average, "
           f"produced at {t['produce']['messages_per_s']:,.0f}/s)", ""]
    if with_engine:
        head += " engine alone (no Kafka) events/s | predicted if poll and process add up |"
    out += [head, "|" + " --- |" * (head.count("|") - 1)]
    for i, r in enumerate(t["rounds"], 1):
        row = (f"| {i} | {_n(r['bare']['events_per_s'])} | {_n(r['monitor']['events_per_s'])} | {100 * r['ratio']:.0f} % | "
               f"{100 * r['ratio_cpu']:.0f} % | {_n(r['prefetch']['events_per_s'])} | {100 * r['ratio_prefetch']:.0f} % | "
               f"{100 * r['ratio_prefetch_cpu']:.0f} % |")
        if with_engine:
            e, b = r["engine"]["events_per_s"], r["bare"]["events_per_s"]
            row += f" {_n(e)} | {_n(1 / (1 / e + 1 / b))} |"
        out.append(row)
    out += ["", f"Medians of worker / bare: {100 * t['ratio_median']:.0f} % of the wall-clock rate "
                f"({100 * t['ratio_cpu_median']:.0f} % per CPU second); with prefetch {100 * t['ratio_prefetch_median']:.0f} % "
                f"({100 * t['ratio_prefetch_cpu_median']:.0f} % per CPU second).", ""]
    return out


def _header(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    return [BEGIN, "", "## Kafka: one worker end to end, scale-out, freshness, recovery", "",
            f"Results of `{r['command']}` on {m['date']}, {r['seconds']:.0f} s in all (`--quick`: smaller sizes, "
            f"writes `bench/results/kafka_quick.json` only). Raw figures: `bench/results/kafka.json`. "
            f"Broker: the embedded tansu on loopback (memory-only), topics of 4 partitions. Producers, broker, workers, "
            f"exporter and the benchmark all run on this one machine and share its {m['cores']} cores.", "",
            "| machine | |", "| --- | --- |",
            f"| CPU | {m['cpu_model']}, {m['cores']} cores |",
            f"| load average | {', '.join(map(str, m['load_average_at_start']))} at start, "
            f"{', '.join(map(str, m.get('load_average_at_end', [])))} at end (other work shares the cores: read ratios "
            f"measured side by side rather than absolute rates, and expect long latency tails) |",
            f"| Python | {m['python']}, {m['platform']} |",
            f"| kafka-python | {m['packages']['kafka-python']}, CRC32C {m.get('crc32c', 'n/a')} |",
            f"| broker | {m['broker']} (embedded) |",
            f"| streammon | commit {m['streammon_commit']}" + (f", uncommitted changes in {', '.join(m['streammon_uncommitted'])}"
                                                           if m["streammon_uncommitted"] else "") + " |", ""]


def _targets(r: dict[str, Any]) -> list[str]:
    tp, fr, rc = r["throughput"], r["freshness"], r["recovery"]
    gz, plain, other = tp["gzip"], tp["none"], r.get("freshness_long_wait")
    return ["### Targets", "", "| what | measured | target | |", "| --- | --- | --- | --- |",
            *(f"| {label} | {100 * t['ratio_median']:.0f} % (median of {len(t['rounds'])} rounds; "
              f"{100 * t['ratio_cpu_median']:.0f} % per CPU second); with `--prefetch` {100 * t['ratio_prefetch_median']:.0f} % "
              f"({100 * t['ratio_prefetch_cpu_median']:.0f} % per CPU second) | >= 80 % | {_met(t['ratio_median'] >= 0.8)}; "
              f"with `--prefetch` {_met(t['ratio_prefetch_median'] >= 0.8)} |"
              for label, t in (("one worker from Kafka / bare kafka-python consume, gzip", gz), ("the same, uncompressed", plain))),
            *_scaling_target(r),
            f"| freshness p99, `streammon run` under {fr['load_events_per_s']:,.0f} events/s | {_ms(fr['p99'])} "
            f"(p50 {_ms(fr['p50'])}, {fr['samples']} samples)" + (
                f"; with `-X fetch_max_wait_ms={other['fetch_max_wait_ms']}`: {_ms(other['p99'])} (p50 {_ms(other['p50'])})"
                if other else "") + f" | < 1 s | {_met(fr['p99'] < 1.0)} |",
            f"| restart after SIGKILL to /metrics showing {rc['pending']:,} pending predictions | {rc['restart_seconds']:.2f} s | "
            f"< 10 s | {_met(rc['restart_seconds'] < 10.0)} |", ""]


def _throughput(r: dict[str, Any]) -> list[str]:
    gz = r["throughput"]["gzip"]
    eng = statistics.median(x["engine"]["events_per_s"] for x in gz["rounds"])
    bare = statistics.median(x["bare"]["events_per_s"] for x in gz["rounds"])
    worker = statistics.median(x["monitor"]["events_per_s"] for x in gz["rounds"])
    out = ["### 1. Throughput of one worker", "",
           f"The stream of `bench/engine_bench.py` (`bench/synthetic_stream.py`: 100 predictions/s of event time, 90 % "
           f"with feedback after an exponential delay of mean 120 s, versions v1/v2, 32-character hex ids, two features), "
           f"written once to a pair of topics per compression with kafka-python's producer set as the SDK sets it "
           f"(linger 5 ms, 16 KiB batches), keyed by id. Metric set: {r['metric_set']}: 10 pair metrics x "
           f"{{Cumulative(), Sliding('1h')}}, mean score, score quantiles, class distribution, feedback delay quantiles, "
           f"per version, plus the join-health self metrics.", "",
           "Each round reads every message from the beginning three times, in turn (which goes first rotates): a bare "
           "kafka-python `KafkaConsumer` with `KafkaSource`'s fetch sizes polling batches of 4096 and doing nothing with "
           "them; one worker, `Monitor.run(KafkaSource(...))` in the benchmark process (no state_dir), until all are read "
           "and processed; and the same worker with its source in a child process, "
           "`PrefetchingSource(partial(KafkaSource, ...))`, what `streammon run --prefetch` does (its CPU time counts the "
           "child's). `engine alone` is `Monitor.process` on the same messages held in memory (batches of 4096): the "
           "engine's own rate, with no Kafka.", ""]
    out += _throughput_table("gzip", gz) + _throughput_table("uncompressed", r["throughput"]["none"])
    plain = r["throughput"]["none"]
    plain_bare = statistics.median(x["bare"]["events_per_s"] for x in plain["rounds"])
    pre = statistics.median(x["prefetch"]["events_per_s"] for x in gz["rounds"])
    floor = min(bare, eng)
    out += [f"Reading it. A worker without prefetch polls, then processes, in one thread, so its time per event is the "
            f"consumer's plus the engine's. With gzip the bare consumer here ran at {_n(bare)} events/s and the engine "
            f"alone at {_n(eng)} (medians): if their times add up, such a worker does about "
            f"{_n(1 / (1 / bare + 1 / eng))} events/s ({100 * eng / (bare + eng):.0f} % of bare consume; per round in the "
            f"last column); it did {_n(worker)}, so the target is {_met(gz['ratio_median'] >= 0.8)}. Reaching 80 % of the bare consumer this way needs an engine 4x faster "
            f"than the consumer ({_n(4 * bare)} events/s here, {4 * bare / eng:.1f}x the engine alone as measured here).", "",
            f"With `--prefetch` the consumer runs in a child process while the engine processes, so given a free core "
            f"for each, the rate is the slower of the two, not their sum: at best {_n(floor)} events/s here "
            f"({100 * floor / bare:.0f} % of bare consume); it did {_n(pre)} ({100 * gz['ratio_prefetch_median']:.0f} %), "
            f"on {r['machine']['cores']} cores that the broker and the benchmark share, so the target is "
            f"{_met(gz['ratio_prefetch_median'] >= 0.8)} with it."
            + ("" if eng >= 0.8 * bare else f" Beyond that the engine is the limit: 80 % needs it at {_n(0.8 * bare)} "
               f"events/s, {0.8 * bare / eng:.1f}x its rate here.")
            + f" Uncompressed, the bare consumer ran at {_n(plain_bare)} events/s; the worker reached "
            f"{100 * plain['ratio_median']:.0f} % of it, {100 * plain['ratio_prefetch_median']:.0f} % with prefetch. "
            f"Past one worker: more worker processes (section 2).", ""]
    if "profile" in r:
        out += _profile(r["profile"], r["machine"].get("crc32c", "n/a"))
    return out


def _profile(p: dict[str, Any], crc32c: str) -> list[str]:
    shares = {s["step"].strip(): s["share"] or 0.0 for s in p["steps"]}
    crc = next((v for k, v in shares.items() if k.startswith("CRC32C")), 0.0)
    own_loop = sum(v for k, v in shares.items() if k.startswith(("its own loop", "Message(")))
    decode = next((v for k, v in shares.items() if k.startswith("decode_event")), 0.0)
    apply = next((v for k, v in shares.items() if k.startswith("Engine.apply")), 0.0)
    out = [f"Profile (cProfile, one worker reading {p['events']:,} gzip messages in {p['run']['seconds']:.1f} s; the "
           f"profiler slows Python-heavy code most): time of each step as a share of the run; an indented step is part "
           f"of the one above.", "", "| step | seconds | share |", "| --- | --- | --- |"]
    out += [f"| {'&nbsp;' * 4 * ((len(s['step']) - len(s['step'].lstrip())) // 2)}{s['step'].strip()} | "
            + ("not called in this run | |" if s["cumulative"] is None else f"{s['cumulative']:.2f} | {100 * s['share']:.0f} % |")
            for s in p["steps"]]
    top = p["by_area"][0]
    out += ["", f"Where the time goes: reading from Kafka (`KafkaSource.poll`) took {100 * shares['KafkaSource.poll']:.0f} % "
                f"of the run and the engine (`Monitor.process`) {100 * shares['Monitor.process']:.0f} %. The area with the "
                f"most own time is {top['area']} ({100 * top['share']:.0f} %). kafka-python checks each record batch's "
                f"CRC32C ({crc32c}: {100 * crc:.0f} % of the run), and `KafkaSource.poll` builds a `Message` named tuple "
                f"per record (its loop and `Message(...)`: {100 * own_loop:.0f} %). In the engine, JSON decoding and "
                f"validation took {100 * decode:.0f} %, the join, windows and operators {100 * apply:.0f} %.", "",
            "Own time by area:", "", "| area | own s | share |", "| --- | --- | --- |"]
    out += [f"| {a['area']} | {a['own']:.2f} | {100 * a['share']:.0f} % |" for a in p["by_area"][:12]]
    out += ["", "Top functions by own time:", "", "| function | calls | own s | cumulative s |", "| --- | --- | --- | --- |"]
    out += [f"| `{x['function']}` | {x['calls']:,} | {x['own']:.2f} | {x['cumulative']:.2f} |" for x in p["top"][:12]]
    return out + [""]


def _cores(run: dict[str, Any]) -> dict[str, float]:
    """CPU used while a group run was timed, in cores (CPU seconds per wall second)."""
    c, wall = run["cpu_seconds"], run["seconds_to_shown"]
    ours = sum(c["workers"]) + c["exporter"] + (c["broker"] or 0.0) + c["benchmark"]
    return {"workers": sum(c["workers"]) / wall, "rest": (ours - sum(c["workers"])) / wall,
            "others": max(0.0, c["machine"] - ours) / wall}


def _scaling_target(r: dict[str, Any]) -> list[str]:
    sc = r.get("scaling")
    if not sc:
        return ["| scale-out, 1 -> 2 worker processes | not measured in this run | | n/a |"]
    lo, hi = (str(n) for n in (sc["counts"][0], sc["counts"][-1]))
    rate = {n: statistics.median(x[n]["events_per_s"] for x in sc["rounds"]) for n in (lo, hi)}
    return [f"| scale-out: events/s of {hi} worker processes / {lo}, to the exporter showing every event | "
            f"{sc['ratio_median']:.2f}x (median of {len(sc['rounds'])} rounds; medians {_n(rate[lo])} and {_n(rate[hi])} "
            f"events/s) on {r['machine']['cores']} cores shared with the broker and the exporter | none set | measured |"]


def _scaling(r: dict[str, Any]) -> list[str]:
    sc = r.get("scaling")
    if not sc:
        return []
    lo, hi = (str(n) for n in (sc["counts"][0], sc["counts"][-1]))
    runs = {n: [x[n] for x in sc["rounds"]] for n in (lo, hi)}
    sizes, total = sc["partition_sizes"], sum(sc["partition_sizes"])
    out = ["### 2. Scale-out from 1 to 2 worker processes", "",
           f"The first {total:,} messages of the same stream, written once (gzip, the SDK's batching) to a pair of topics "
           f"of {len(sizes)} partitions: {', '.join(f'{n:,}' for n in sizes)} messages per partition number (both topics), "
           f"read to the end by a consumer group of {lo}, then {hi}, worker processes. Each run has a fresh group and a "
           f"fresh shared state directory: `streammon export APP --state-dir DIR --refresh {sc['exporter_refresh']}` "
           f"first, then the workers launched together, each `streammon run APP --scale-out --group G --state-dir DIR "
           f"{sc['group_options']}` (tansu completes a group join in session_timeout_ms / 2) with the default 5 s "
           f"checkpoint interval and 1 s publish interval of the partials. The clock starts at the first scrape "
           f"(every {1000 * sc['period']:.0f} ms) in which a worker's `streammon_worker_partitions` is above 0, so process "
           f"start and the group join are left out (shown apart), but a rebalance after it, if the second worker joined "
           f"a generation later, is in. It stops at the first scrape of the exporter whose `streammon_events_total` "
           f"counts every event: what a user sees. `all read` is the first scrape in which every worker's "
           f"`streammon_consumer_lag` was 0 on every partition (each worker has its last batch in hand); the gap between "
           f"the two is mostly the publish interval. Runs of {lo} and {hi} workers alternate which goes first. The CPU "
           f"columns are CPU seconds per wall second over the timed part, from /proc: the workers; the broker, exporter "
           f"and the benchmark's scrapes; and every other process on the machine (other work that shares it).", "",
           "| round | workers | to the exporter | events/s | all read | events/s | launch to first partition | "
           "partitions per worker, as they changed | CPU: workers | broker, exporter, scrapes | other processes |",
           "|" + " --- |" * 11]
    for i, row in enumerate(sc["rounds"], 1):
        order = [lo, hi] if i % 2 == 1 else [hi, lo]
        for n in order:
            x, cores = row[n], _cores(row[n])
            seen = " -> ".join("/".join(map(str, counts)) for counts in x["partition_counts_seen"][1:])
            out.append(f"| {i} | {n} | {x['seconds_to_shown']:.1f} s | {_n(x['events_per_s'])} | "
                       f"{x['seconds_to_caught_up']:.1f} s | {_n(x['events_per_s_caught_up'])} | "
                       f"{x['launch_to_first_owner']:.1f} s | {seen} | {cores['workers']:.2f} | {cores['rest']:.2f} | "
                       f"{cores['others']:.2f} |")
    exact = all(x["events_shown_at_end"] == total for n in (lo, hi) for x in runs[n])
    per_event = {n: statistics.median(sum(x["cpu_seconds"]["workers"]) / total * 1e6 for x in runs[n]) for n in (lo, hi)}
    join = {n: statistics.median(x["launch_to_first_owner"] for x in runs[n]) for n in (lo, hi)}
    settle = statistics.median(x["first_owner_to_settled"] for x in runs[hi])
    share = max(max(x["event_shares"]) for x in runs[hi])
    busy = {n: statistics.median(_cores(x)["workers"] for x in runs[n]) for n in (lo, hi)}
    others = max(_cores(x)["others"] for n in (lo, hi) for x in runs[n])
    gaps = [x["seconds_to_shown"] - x["seconds_to_caught_up"] for n in (lo, hi) for x in runs[n]]
    quiet = [x["ratio"] for x in sc["rounds"] if all(_cores(x[n])["others"] < QUIET for n in (lo, hi))]
    out += ["", f"Median {hi} / {lo} workers: {sc['ratio_median']:.2f}x to the exporter, {sc['ratio_caught_up_median']:.2f}x "
                f"to all read (ratios taken within each round, then the median). "
                + (f"In the {len(quiet)} of {len(sc['rounds'])} rounds where other processes took under {QUIET} cores in "
                   f"both runs, the median was {statistics.median(quiet):.2f}x to the exporter." if quiet else
                   f"In no round did other processes take under {QUIET} cores in both runs."), "",
            f"Reading it. This machine has {r['machine']['cores']} cores, so {hi} workers cannot go more than "
            f"{min(int(hi), r['machine']['cores']) / int(lo):.0f}x faster here, less what the broker, the exporter and "
            f"other processes take; the ratio says nothing of what more cores would give. The workers used a median of "
            f"{busy[lo]:.2f} cores alone and {busy[hi]:.2f} as {hi}, with other processes taking up to {others:.2f} "
            f"cores during a run (last column). Split over {hi} workers, the work per event changed by "
            f"{100 * (per_event[hi] / per_event[lo] - 1):+.0f} %: {per_event[lo]:.1f} µs of worker CPU per event with "
            f"{lo} worker, {per_event[hi]:.1f} with {hi} (summed). The exporter showed everything a median "
            f"{statistics.median(gaps):.1f} s (at most {max(gaps):.1f} s) after all was read. The larger worker's share of "
            f"the events was at most "
            f"{100 * share:.1f} % (even: {100 / int(hi):.0f} %). The "
            f"exporter showed {'exactly' if exact else 'NOT exactly'} {total:,} events 1.5 s after the stop in every "
            f"run{'' if exact else ' (see kafka.json)'}. Left out of the timing: launch to the first owned partition "
            f"took a median {join[lo]:.1f} s with {lo} worker and {join[hi]:.1f} s with {hi} (interpreter, imports, app, "
            f"Kafka metadata and the group join); the {hi}-worker group then took a median {settle:.2f} s more to own "
            f"{len(sizes) // int(hi)} partitions each, inside the timing.", ""]
    return out


def _freshness(r: dict[str, Any]) -> list[str]:
    fr = r["freshness"]
    other = r.get("freshness_long_wait")
    runs = [fr] + ([other] if other else [])
    out = ["### 3. Freshness", "",
           f"A `streammon run` worker (a subprocess of the same app, with `--state-dir` and the default 5 s checkpoint "
           f"interval) under a steady background load of {fr['load_events_per_s']:,.0f} events/s sent by the SDK "
           f"(`EventProducer` with its defaults: gzip, linger 5 ms). Probes have a segment value of their own "
           f"(`version=\"probe\"`): their predictions are sent first and awaited; then, for each probe, the wall clock "
           f"is read, its feedback sent with `log_feedback`, and `/metrics` scraped every {1000 * fr['poll_period']:.0f} "
           f"ms until `streammon_accuracy_count{{version=\"probe\", window=\"cumulative\"}}` counts it (scraping more "
           f"often would slow the worker: a scrape costs it a few ms). Upper bound: the scrape that showed it had "
           f"returned; lower bound: the last scrape that did not show it had started. `KafkaSource` waits at most "
           f"{fr['fetch_max_wait_ms']} ms for a fetch (`fetch_max_wait_ms`)" + (
               f"; a second run gives the worker `-X fetch_max_wait_ms={other['fetch_max_wait_ms']}` (kafka-python's "
               f"default)" if other else "") + ". Beside each worker, a bare consumer of the same topics with the same "
           "settings, in the benchmark process (which also runs the load's producer), notes when each probe's feedback "
           "reaches a kafka-python client at all.", "",
           "| run | samples | p50 | p90 | p99 | max |", "| --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        name = f"`streammon run`{' -X' if run.get('set') else ''}, wait {run['fetch_max_wait_ms']} ms"
        rows = [("sent -> on /metrics (upper bound)", run), ("sent -> on /metrics (lower bound)", run["lower_bound"]),
                ("upper bound, waits with no checkpoint in them", run.get("without_checkpoint")),
                ("upper bound, waits with a checkpoint in them", run.get("with_checkpoint")),
                ("sent -> a bare consumer's poll returns it", run.get("bare_consumer"))]
        out += [f"| {name}: {label} | {q.get('samples', run['samples'])} | {_ms(q['p50'])} | {_ms(q['p90'])} | "
                f"{_ms(q['p99'])} | {_ms(q['max'])} |" for label, q in rows if q]
    idle = ", ".join(f"median {_ms(x['median'])}, max {_ms(x['max'])} at fetch_max_wait_ms={x['fetch_max_wait_ms']}"
                     for x in r.get("idle_fetch_wait", []))
    snaps = ", ".join(f"{(run.get('snapshot_bytes_at_end') or 0) / 2**20:.0f} MiB" for run in runs)
    checkpoints = ", ".join(_n(run.get("checkpoints_seen")) for run in runs)
    out += ["", "At the end of each run, the worker had read " + "; ".join(
                f"{_n(run['worker_events_read'])} events and was {_n(run['worker_lag_at_end'])} behind" for run in runs) + ".",
            "", f"Where the time goes. First, the broker: tansu answers a waiting fetch late. When no new data is "
                f"there as a fetch request arrives, data that comes a moment later is held back for part of "
                f"`fetch_max_wait_ms` (Apache Kafka answers as soon as `fetch_min_bytes` have arrived). Measured in this "
                f"run on idle topics, send to a bare consumer's poll: {idle}. A worker that keeps up is often caught up, "
                f"so it pays this on many batches; the bare consumer's rows show this part with the machine's load. "
                f"Then the worker's batch processing, and the checkpoints: every 5 s the worker "
                + ("forks a child that pickles and writes its whole state while the worker goes on; the worker pauses "
                   "for the fork, its lock held, and pays for copy-on-write after it" if r.get("background_checkpoints")
                   else "stops to pickle and write its whole state")
                + f". The last snapshot of each run: {snaps} (the store keeps an entry for every prediction of the last "
                f"7 days of event time, pending or joined, to catch duplicates). The rows split by checkpoint show what "
                f"they cost: {checkpoints} checkpoints seen per run; a wait counts as having one when the time the worker "
                f"reports as its last checkpoint ({'the fork' if r.get('background_checkpoints') else 'the end of the write'}) "
                f"falls inside it. Last, the scrape period. The tails move with other work on the "
                f"machine (see the load average above): p99 of {fr['samples']} samples is about their "
                f"{_nth_largest(round(0.01 * (fr['samples'] - 1)) + 1)}.", ""]
    return out


def _recovery(r: dict[str, Any]) -> list[str]:
    rc = r["recovery"]
    return ["### 4. Recovery after SIGKILL", "",
            f"{rc['pending']:,} predictions and no feedback on a gzip topic pair. A `streammon run` worker with "
            f"`--state-dir` reads them all ({rc['first_read_seconds']:.0f} s, checkpointing every 5 s as it goes); once "
            f"its snapshot holds every offset it is killed with SIGKILL and started again. The restart is timed from "
            f"the new process's start until its `/metrics` answers with `streammon_join_pending{{side=\"prediction\"}}` "
            f"= {rc['pending']:,} (scraped every 50 ms).", "",
            "| | |", "| --- | --- |",
            f"| restart to all {rc['pending']:,} pending shown again | {rc['restart_seconds']:.2f} s |",
            f"| of which: process start to serving /metrics (interpreter, imports, app, Kafka metadata) | "
            f"{rc['restart_to_serving_seconds']:.2f} s |",
            f"| of which: serving to restored (read and unpickle the snapshot, seek) | "
            f"{rc['restart_serving_to_restored_seconds']:.2f} s |",
            f"| snapshot size | {rc['snapshot_bytes'] / 2**20:.1f} MiB ({rc['snapshot_bytes_per_pending']:.0f} B per pending "
            f"prediction) |",
            "| write one snapshot (pickle, write, fsync, rename; median of 3, in the benchmark process"
            + ("; a worker has a forked child do this while it goes on" if r.get("background_checkpoints") else "")
            + f") | {rc['write_seconds']:.2f} s |",
            f"| restore it into a fresh engine (in the benchmark process) | {rc['restore_seconds_in_process']:.2f} s |", ""]


def render(r: dict[str, Any]) -> str:
    """The kafka section of docs/benchmarks.md, markers included."""
    return "\n".join(_header(r) + _targets(r) + _throughput(r) + _scaling(r) + _freshness(r) + _recovery(r) + [END])


def update_doc(path: Path, section: str) -> None:
    """Replace the kafka section of ``path`` (or append it), leaving every other part as it is now."""
    text = path.read_text() if path.exists() else ""  # read right before writing: others edit the file too
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    path.write_text(text)
