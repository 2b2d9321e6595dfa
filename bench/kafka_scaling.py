"""Scale-out from 1 to 2 worker processes: one pre-produced stream read to its end by a consumer group.

Each run starts a fresh group with a fresh shared state directory: ``streammon export`` on it, then
N ``streammon run --scale-out`` workers launched together (short group timeouts, as tansu completes
a join in ``session_timeout_ms / 2``). The clock starts when the first worker owns a partition (it
can read from then on; process start and the group join are reported apart) and stops when the
exporter's /metrics counts every event; the moment every worker's consumer lag reaches 0 (all read,
the last batch in hand) is noted too. Runs of 1 and 2 workers alternate in order across rounds.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from kafka_common import PARTITIONS, cpu_seconds, create_topics, produce
from kafka_live import Served, Worker, app_file, metric, samples

__all__ = ["group_run", "partition_sizes", "scaling"]

# tansu completes a group join in session_timeout_ms / 2: 1 s here (design section 10).
FAST_GROUP = ("-X", "session_timeout_ms=2000", "-X", "heartbeat_interval_ms=500")
# Seconds between scrapes. A scaled-out worker's /metrics is small (partitions, lag, a histogram),
# so scraping it this often costs little; the exporter, which renders every metric, is scraped
# only once the workers have read everything.
PERIOD = 0.05
REFRESH = 0.1  # the exporter's --refresh: how often it looks for new partials (default 0.5 s)


def partition_sizes(msgs: list, partitions: int = PARTITIONS) -> list[int]:
    """Messages per partition number (both topics), as kafka-python's default partitioner places keyed ones."""
    from kafka.partitioner.default import murmur2

    sizes = [0] * partitions
    for m in msgs:
        sizes[(murmur2(m.key) & 0x7FFFFFFF) % partitions] += 1
    return sizes


def _machine_busy() -> float:
    """CPU seconds all processes on the machine have used so far (every core), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def _lags(text: str) -> dict[tuple[str, int], float]:
    return {(labels["topic"], int(labels["partition"])): value for labels, value in samples(text, "streammon_consumer_lag")}


def _scrape(process: Served) -> str:
    try:
        return process.scrape()
    except OSError:  # busy or not serving yet: a "not yet"
        return ""


def group_run(bootstrap: str, workdir: Path, topics: tuple[str, str], sizes: list[int], n: int, name: str,
              broker_pid: int | None, timeout: float) -> dict[str, Any]:
    """N workers in a fresh group read the whole stream; when each step happened, and CPU spent meanwhile."""
    total = sum(sizes)
    state = workdir / f"state-{name}"
    state.mkdir()
    exporter = Served(["export", f"{app_file(workdir)}:monitor", "--state-dir", str(state), "--metrics-port", "0",
                       "--refresh", str(REFRESH)], workdir / f"{name}-export.log")
    workers = [Worker(workdir, bootstrap, topics, name, state, "--scale-out", *FAST_GROUP, name=f"{name}-{i}") for i in range(n)]
    everything = {(t, p) for t in topics for p in range(PARTITIONS)}
    marks: dict[str, float] = {}
    owned_seen: list[list[int]] = []  # each worker's partition count, at each change
    try:
        exporter.start()
        launched = time.time()
        for w in workers:
            w.launch()
        for w in workers:
            w.ready()
        marks["serving"] = time.time()
        deadline = launched + timeout
        pids = [w.proc.pid for w in workers] + [exporter.proc.pid] + ([broker_pid] if broker_pid else []) + [os.getpid()]
        forks = set(pids[:n])  # a worker's checkpoints are written by forked children: their CPU is the worker's
        cpu_start: list[float] = []
        owns: list[set[int]] = [set() for _ in workers]
        while "caught_up" not in marks:
            asked = time.time()
            texts = [_scrape(w) for w in workers]
            counts = [int(metric(t, "streammon_worker_partitions") or 0) for t in texts]
            if not owned_seen or counts != owned_seen[-1]:
                owned_seen.append(counts)
            if "first_owner" not in marks and any(counts):
                marks["first_owner"] = asked
                cpu_start = [cpu_seconds(p, children=p in forks) for p in pids] + [_machine_busy()]
            if "settled" not in marks and sorted(counts) == [PARTITIONS // n] * n:
                marks["settled"] = asked
            lags = [_lags(t) for t in texts]
            for i, lag in enumerate(lags):
                if lag:
                    owns[i] = {p for (_, p) in lag}
            merged = {k: v for lag in lags for k, v in lag.items()}
            if "settled" in marks and set(merged) == everything and not any(merged.values()):
                marks["caught_up"] = asked
                processing = [metric(t, "streammon_processing_seconds_sum") for t in texts]
            if time.time() > deadline:
                raise TimeoutError(f"{name}: the workers did not read everything in {timeout:.0f} s "
                                   f"(partitions {counts}, lag {merged}); logs in {workdir}")
            time.sleep(max(0.0, PERIOD - (time.time() - asked)))
        while True:
            asked = time.time()
            shown = metric(_scrape(exporter), "streammon_events_total") or 0
            if shown >= total:
                marks["shown"] = asked
                cpu_end = [cpu_seconds(p, children=p in forks) for p in pids] + [_machine_busy()]
                break
            if time.time() > deadline:
                raise TimeoutError(f"{name}: the exporter shows {shown:,.0f} of {total:,} events after {timeout:.0f} s")
            time.sleep(max(0.0, PERIOD - (time.time() - asked)))
        # Anything counted twice would show once the last partials are in.
        time.sleep(1.5)
        final = metric(_scrape(exporter), "streammon_events_total")
    finally:
        for w in workers:
            w.stop()
        exporter.stop()
        shutil.rmtree(state, ignore_errors=True)
    t0 = marks["first_owner"]
    cpu = [end - start for start, end in zip(cpu_start, cpu_end)]
    shares = [sum(sizes[p] for p in part) / total for part in owns]
    return {
        "workers": n, "events": total, "events_shown_at_end": final,
        "seconds_to_shown": marks["shown"] - t0, "seconds_to_caught_up": marks["caught_up"] - t0,
        "events_per_s": total / (marks["shown"] - t0), "events_per_s_caught_up": total / (marks["caught_up"] - t0),
        "launch_to_serving": marks["serving"] - launched, "launch_to_first_owner": t0 - launched,
        "first_owner_to_settled": marks["settled"] - t0, "partition_counts_seen": owned_seen,
        "partitions": [sorted(p) for p in owns], "event_shares": shares,
        "cpu_seconds": {"workers": cpu[:n], "exporter": cpu[n], "broker": cpu[n + 1] if broker_pid else None,
                        "benchmark": cpu[-2], "machine": cpu[-1]},
        "processing_seconds": processing,  # in Monitor.process, by each worker's histogram, up to caught_up
    }


def scaling(bootstrap: str, workdir: Path, log, msgs: list, *, rounds: int, broker_pid: int | None,
            counts: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Rounds of one group run per worker count, the order alternating; the last count over the first."""
    topics = ("predictions_scaling", "feedback_scaling")
    create_topics(bootstrap, *topics)
    made = produce(bootstrap, topics, msgs, "gzip")
    sizes = partition_sizes(msgs)
    log(f"scaling: produced {made['messages']:,} messages at {made['messages_per_s']:,.0f}/s, per partition {sizes}")
    timeout = 120 + len(msgs) / 2_000
    out = []
    for r in range(rounds):
        row: dict[str, Any] = {}
        for n in counts if r % 2 == 0 else counts[::-1]:
            run = group_run(bootstrap, workdir, topics, sizes, n, f"bench-scale-{r}-{n}", broker_pid, timeout)
            row[str(n)] = run
            log(f"scaling round {r + 1}, {n} worker(s): {run['events_per_s']:,.0f} events/s to the exporter "
                f"({run['seconds_to_shown']:.1f} s; all read at {run['seconds_to_caught_up']:.1f} s), group join "
                f"{run['launch_to_first_owner']:.1f} s after launch, partitions seen {run['partition_counts_seen']}")
        low, high = row[str(counts[0])], row[str(counts[-1])]
        row["ratio"] = high["events_per_s"] / low["events_per_s"]
        row["ratio_caught_up"] = high["events_per_s_caught_up"] / low["events_per_s_caught_up"]
        out.append(row)
    return {"topics": list(topics), "produce": made, "partition_sizes": sizes, "counts": list(counts),
            "period": PERIOD, "exporter_refresh": REFRESH, "group_options": " ".join(FAST_GROUP), "rounds": out,
            "ratio_median": statistics.median(r["ratio"] for r in out),
            "ratio_caught_up_median": statistics.median(r["ratio_caught_up"] for r in out)}
