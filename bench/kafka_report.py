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
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu_model": cpu.get("model name") or platform.processor() or "unknown", "cpu_mhz": cpu.get("cpu MHz"),
            "cores": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": f"{platform.python_version()} ({platform.python_implementation()})", "platform": platform.platform(),
            "packages": {p: importlib.metadata.version(p) for p in ("kafka-python", "numpy", "pydantic", "prometheus_client")},
            "crc32c": "in C (the crc32c package)" if crc32c_c is not None else "in pure Python (no crc32c package)",
            "broker": subprocess.run([tansu_binary(), "--version"], capture_output=True, text=True).stdout.strip(),
            "streammon_commit": git("rev-parse", "--short", "HEAD"),
            "streammon_uncommitted": [line[3:] for line in git("status", "--porcelain", "--", "streammon").splitlines()]}


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


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _throughput_table(name: str, t: dict[str, Any]) -> list[str]:
    with_engine = "engine" in t["rounds"][0]
    head = "| round | bare consume events/s | worker events/s | worker / bare | per CPU second: worker / bare |"
    out = [f"**{name}** ({t['produce']['messages']:,} messages, {t['produce']['value_bytes_mean']:.0f} bytes each on average, "
           f"produced at {t['produce']['messages_per_s']:,.0f}/s)", ""]
    if with_engine:
        head += " engine alone (no Kafka) events/s | predicted if poll and process add up |"
    out += [head, "|" + " --- |" * (head.count("|") - 1)]
    for i, r in enumerate(t["rounds"], 1):
        row = (f"| {i} | {_n(r['bare']['events_per_s'])} | {_n(r['monitor']['events_per_s'])} | {100 * r['ratio']:.0f} % | "
               f"{100 * r['ratio_cpu']:.0f} % |")
        if with_engine:
            e, b = r["engine"]["events_per_s"], r["bare"]["events_per_s"]
            row += f" {_n(e)} | {_n(1 / (1 / e + 1 / b))} |"
        out.append(row)
    out += ["", f"Median worker / bare: {100 * t['ratio_median']:.0f} % of wall-clock rate, "
                f"{100 * t['ratio_cpu_median']:.0f} % per CPU second.", ""]
    return out


def _header(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    return [BEGIN, "", "## Kafka: one worker end to end, freshness, recovery", "",
            f"Results of `{r['command']}` on {m['date']}, {r['seconds']:.0f} s in all (`--quick`: smaller sizes, "
            f"~1 minute, writes `bench/results/kafka_quick.json` only). Raw figures: `bench/results/kafka.json`. "
            f"Broker: the embedded tansu on loopback (memory-only), topics of 4 partitions; producers, broker, workers "
            f"and the benchmark share the machine's cores.", "",
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
    gz, plain, short = tp["gzip"], tp["none"], r.get("freshness_short_wait")
    return ["### Targets", "", "| what | measured | target | |", "| --- | --- | --- | --- |",
            f"| one worker from Kafka / bare kafka-python consume, gzip | {100 * gz['ratio_median']:.0f} % "
            f"(median of {len(gz['rounds'])} rounds; {100 * gz['ratio_cpu_median']:.0f} % per CPU second) | >= 80 % | "
            f"{_met(gz['ratio_median'] >= 0.8)} |",
            f"| the same, uncompressed | {100 * plain['ratio_median']:.0f} % (median of {len(plain['rounds'])} rounds) | "
            f">= 80 % | {_met(plain['ratio_median'] >= 0.8)} |",
            "| scale-out, 1 -> 2 worker processes | not measured: not implemented in this release | | n/a |",
            f"| freshness p99, `streammon run` under {fr['load_events_per_s']:,.0f} events/s | {_ms(fr['p99'])} "
            f"(p50 {_ms(fr['p50'])}, {fr['samples']} samples)" + (
                f"; with `fetch_max_wait_ms=100`: {_ms(short['p99'])} (p50 {_ms(short['p50'])})" if short else "")
            + f" | < 1 s | {_met(fr['p99'] < 1.0)} |",
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
           "Each round reads every message from the beginning, in turn (the first one alternating): a bare kafka-python "
           "`KafkaConsumer` with `KafkaSource`'s fetch settings polling batches of 4096 and doing nothing with them, and "
           "one worker, `Monitor.run(KafkaSource(...))` in the benchmark process (no state_dir), until all are read and "
           "processed. `engine alone` is `Monitor.process` on the same messages held in memory (batches of 4096): the "
           "engine's own rate, with no Kafka.", ""]
    out += _throughput_table("gzip", gz) + _throughput_table("uncompressed", r["throughput"]["none"])
    out += [f"Why the target is missed: a worker polls, then processes, in one thread, so its time per event is the "
            f"consumer's plus the engine's. With gzip the bare consumer here ran at {_n(bare)} events/s and the engine "
            f"alone at {_n(eng)} (medians), so the best a sequential worker can do is {_n(1 / (1 / bare + 1 / eng))} "
            f"events/s ({100 * eng / (bare + eng):.0f} % of bare consume); it did {_n(worker)}. Reaching 80 % of the bare "
            f"consumer this way needs an engine 4x faster than the consumer ({_n(4 * bare)} events/s here), well past "
            f"the engine benchmark's figures. Uncompressed, the consumer is slower, so the same engine reaches a larger "
            f"share of it. What would move it: consuming in another process while the engine processes (the rate is "
            f"then the slower of the two, not their sum; a thread helps less, as kafka-python parses records in Python "
            f"under the GIL), a faster engine, and the cheaper steps the profile shows.", ""]
    if "profile" in r:
        out += _profile(r["profile"])
    return out


def _profile(p: dict[str, Any]) -> list[str]:
    shares = {s["step"].strip(): s["share"] for s in p["steps"]}
    crc = next((v for k, v in shares.items() if k.startswith("CRC32C")), 0.0)
    own_loop = sum(v for k, v in shares.items() if k.startswith(("its own loop", "Message.__init__")))
    decode = next((v for k, v in shares.items() if k.startswith("decode_event")), 0.0)
    apply = next((v for k, v in shares.items() if k.startswith("Engine.apply")), 0.0)
    out = [f"Profile (cProfile, one worker reading {p['events']:,} gzip messages in {p['run']['seconds']:.1f} s; the "
           f"profiler slows Python-heavy code most): time of each step as a share of the run; an indented step is part "
           f"of the one above.", "", "| step | seconds | share |", "| --- | --- | --- |"]
    out += [f"| {'&nbsp;' * 4 * ((len(s['step']) - len(s['step'].lstrip())) // 2)}{s['step'].strip()} | "
            f"{s['cumulative']:.2f} | {100 * s['share']:.0f} % |" for s in p["steps"]]
    out += ["", f"Where the time goes: reading from Kafka (`KafkaSource.poll`) took {100 * shares['KafkaSource.poll']:.0f} % "
                f"of the run and the engine (`Monitor.process`) {100 * shares['Monitor.process']:.0f} %. Two parts of the "
                f"reading are not inherent: kafka-python checks each record batch's CRC32C in pure Python unless the "
                f"optional `crc32c` package is installed ({100 * crc:.0f} % of the run here), and `KafkaSource.poll` wraps "
                f"every record in a frozen `Message` dataclass, whose `__init__` sets each field through "
                f"`object.__setattr__` (the loop and `Message.__init__`: {100 * own_loop:.0f} %). In the engine, JSON decoding and "
                f"validation took {100 * decode:.0f} %, the join, windows and operators {100 * apply:.0f} %.", "",
            "Own time by area:", "", "| area | own s | share |", "| --- | --- | --- |"]
    out += [f"| {a['area']} | {a['own']:.2f} | {100 * a['share']:.0f} % |" for a in p["by_area"][:12]]
    out += ["", "Top functions by own time:", "", "| function | calls | own s | cumulative s |", "| --- | --- | --- | --- |"]
    out += [f"| `{x['function']}` | {x['calls']:,} | {x['own']:.2f} | {x['cumulative']:.2f} |" for x in p["top"][:12]]
    return out + [""]


_SCALE_OUT = ["### 2. Scale-out from 1 to 2 workers", "",
              "Not measured, because it is not implemented yet: in this release a worker is assigned every partition of "
              "both topics (`KafkaSource` has no consumer-group rebalancing), so a second worker would read and count "
              "every event again rather than share the load. Only the single worker above is measured. Scale-out needs "
              "partition assignment in `KafkaSource` (each worker takes partition i of both topics) and a merge of the "
              "workers' series at query time (the scale-out plan in docs/kafka.md).", ""]


def _freshness(r: dict[str, Any]) -> list[str]:
    fr = r["freshness"]
    runs = [fr] + ([r["freshness_short_wait"]] if "freshness_short_wait" in r else [])
    out = ["### 3. Freshness", "",
           f"A `streammon run` worker (a subprocess of the same app, with `--state-dir` and the default 5 s checkpoint "
           f"interval) under a steady background load of {fr['load_events_per_s']:,.0f} events/s sent by the SDK "
           f"(`EventProducer` with its defaults: gzip, linger 5 ms). Probes have a segment value of their own "
           f"(`version=\"probe\"`): their predictions are sent first and awaited; then, for each probe, the wall clock "
           f"is read, its feedback sent with `log_feedback`, and `/metrics` scraped every {1000 * fr['poll_period']:.0f} "
           f"ms until `streammon_accuracy_count{{version=\"probe\", window=\"cumulative\"}}` counts it (scraping more "
           f"often would slow the worker: a scrape costs it a few ms). Upper bound: the scrape that showed it had "
           f"returned; lower bound: the last scrape that did not show it had started. A second run passes "
           f"`fetch_max_wait_ms=100` to `KafkaSource` (the same app and loop through the Python API; the CLI has no "
           f"such option). Beside each worker, a bare consumer of the same topics with the same settings, in the "
           f"benchmark process (which also runs the load's producer), notes when each probe's feedback reaches a "
           f"kafka-python client at all.", "",
           "| run | samples | p50 | p90 | p99 | max |", "| --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        via = run.get("via", "streammon run")
        name = f"{'`streammon run`' if via == 'streammon run' else via}, wait {run.get('fetch_max_wait_ms', 500)} ms"
        rows = [("sent -> on /metrics (upper bound)", run), ("sent -> on /metrics (lower bound)", run["lower_bound"]),
                ("upper bound, waits that no checkpoint ended in", run.get("without_checkpoint")),
                ("upper bound, waits that a checkpoint ended in", run.get("with_checkpoint")),
                ("sent -> a bare consumer's poll returns it", run.get("bare_consumer"))]
        out += [f"| {name}: {label} | {q.get('samples', run['samples'])} | {_ms(q['p50'])} | {_ms(q['p90'])} | "
                f"{_ms(q['p99'])} | {_ms(q['max'])} |" for label, q in rows if q]
    idle = ", ".join(f"median {_ms(x['median'])}, max {_ms(x['max'])} at fetch_max_wait_ms={x['fetch_max_wait_ms']}"
                     for x in r.get("idle_fetch_wait", []))
    snaps = ", ".join(f"{(run.get('snapshot_bytes_at_end') or 0) / 2**20:.0f} MiB" for run in runs)
    out += ["", "Each worker kept up with its load: " + "; ".join(
                f"{_n(run['worker_events_read'])} events read, {_n(run['worker_lag_at_end'])} behind at the end" for run in runs) + ".",
            "", f"Where the time goes. First, the broker: tansu answers a waiting fetch late. When no new data is "
                f"there as a fetch request arrives, data that comes a moment later is held back for part of "
                f"`fetch_max_wait_ms` (Apache Kafka answers as soon as `fetch_min_bytes` have arrived). Measured in this "
                f"run on idle topics, send to a bare consumer's poll: {idle}. A worker that keeps up is often caught up, "
                f"so it pays this on many batches; the bare consumer's rows show this part with the machine's load. "
                f"Then the worker's batch processing, and the checkpoints: every 5 s the worker stops to pickle and "
                f"write its whole state (the last snapshot of each run: {snaps}; the store keeps an entry for every "
                f"prediction of the last 7 days of event time, pending or joined, to catch duplicates), which is what "
                f"the rows split by checkpoint show. Last, the scrape period. The tails move with other work on the "
                f"machine (see the load average above): p99 of {fr['samples']} samples is about their third largest.", ""]
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
            f"| write one snapshot (pickle, write, fsync, rename; median of 3, in the benchmark process) | "
            f"{rc['write_seconds']:.2f} s |",
            f"| restore it into a fresh engine (in the benchmark process) | {rc['restore_seconds_in_process']:.2f} s |", ""]


def render(r: dict[str, Any]) -> str:
    """The kafka section of docs/benchmarks.md, markers included."""
    return "\n".join(_header(r) + _targets(r) + _throughput(r) + _SCALE_OUT + _freshness(r) + _recovery(r) + [END])


def update_doc(path: Path, section: str) -> None:
    """Replace the kafka section of ``path`` (or append it), leaving every other part as it is now."""
    text = path.read_text() if path.exists() else ""  # read right before writing: others edit the file too
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    path.write_text(text)
