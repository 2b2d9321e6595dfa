"""Benchmarks of streammon on Kafka: ``python bench/kafka_bench.py [--quick]``.

Measures, in one run, on the embedded tansu broker: (1) one worker's end-to-end events/s
(``Monitor.run(KafkaSource(...))`` with the realistic metric set, and with its source in a child
process as ``streammon run --prefetch`` runs it) beside a bare kafka-python consumer of the same
messages and ``Monitor.process`` on them without Kafka, gzip and uncompressed, in rounds whose
order rotates, with a cProfile of the worker; (2) scale-out: one pre-produced stream read to
its end by a group of 1, then 2, ``streammon run --scale-out`` worker processes, timed on the
``streammon export`` metrics, the order alternating across rounds; (3) freshness: feedback sent to
its effect on ``/metrics`` of a ``streammon run`` worker under a steady background load, with the
worker's fetch wait and with kafka-python's default; (4) recovery after SIGKILL with many pending
predictions: restart to ``/metrics`` showing them all again, snapshot size and write time. Writes
bench/results/kafka.json and its section of docs/benchmarks.md (``--quick``:
bench/results/kafka_quick.json only). No figure is asserted in any test.
Beside it: kafka_common (app, stream, topics), kafka_scaling (2), kafka_live (the worker
subprocesses: 3 and 4), kafka_report (machine, Markdown).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka_common import (
    BATCH,
    BENCH,
    PARTITIONS,
    ROOT,
    cpu_seconds,
    create_topics,
    produce,
    realistic_monitor,
    the_stream,
)
from kafka_live import freshness, idle_fetch_wait, recovery
from kafka_report import machine, render, same_metric_set, update_doc
from kafka_scaling import scaling

from streammon.connectors.broker import EmbeddedBroker


@dataclass(frozen=True)
class Plan:
    events: int = 200_000  # messages on each pair of throughput topics
    rounds_gzip: int = 3
    rounds_plain: int = 2
    profile_events: int = 80_000
    scaling_events: int = 400_000  # one worker takes ~10 s on them, so the exporter's ~1 s publish lag stays small
    scaling_rounds: int = 6  # each: a group of 1 and a group of 2, the first alternating
    load_rate: float = 5_000.0  # background events/s while timing freshness
    warmup: float = 5.0
    samples: int = 220
    samples_long_wait: int = 110  # again with kafka-python's default fetch_max_wait_ms, to show what the fetch wait costs
    long_wait_ms: int = 500
    pending: int = 1_000_000


QUICK = Plan(events=30_000, rounds_gzip=1, rounds_plain=1, profile_events=10_000, scaling_events=60_000, scaling_rounds=2,
             warmup=2.0, samples=30, samples_long_wait=10, pending=100_000)


# -- 1. throughput --------------------------------------------------------------------------------
class _Counted:
    """A source that counts what it hands out; ``done()`` (the monitor's ``until``) notes when all came."""

    def __init__(self, source: Any, n: int, child: int | None = None) -> None:
        self._source, self.n, self.read, self.finished = source, n, 0, None
        self.child = child  # a process reading for it, whose CPU time counts too

    def poll(self, max_records: int, timeout: float) -> list:
        batch = self._source.poll(max_records, timeout)
        self.read += len(batch)
        return batch

    def done(self) -> bool:
        if self.read >= self.n and self.finished is None:
            self.finished = time.perf_counter(), time.process_time() + cpu_seconds(self.child)
        return self.read >= self.n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


def bare_consume(bootstrap: str, topics: tuple[str, str], n: int) -> dict[str, float]:
    """A kafka-python consumer with KafkaSource's fetch settings, from the beginning, doing nothing."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20)
    partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    read, wall, cpu = 0, time.perf_counter(), time.process_time()
    while read < n:
        read += sum(len(rows) for rows in consumer.poll(timeout_ms=500, max_records=BATCH).values())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    consumer.close()
    return {"events": read, "seconds": wall, "events_per_s": read / wall, "events_per_cpu_s": read / cpu}


def monitor_consume(bootstrap: str, topics: tuple[str, str], n: int, group: str, prefetch: bool = False) -> dict[str, float]:
    """``Monitor.run(KafkaSource(...))`` in this process until ``n`` messages are read and processed; with
    ``prefetch``, the source runs in a child process (``PrefetchingSource``, what ``streammon run --prefetch`` does).
    CPU time counts the child's too. The clock starts once the source is ready, as it does for the bare consumer."""
    from streammon.connectors.kafka import KafkaSource
    from streammon.connectors.prefetch import PrefetchingSource

    factory = partial(KafkaSource, bootstrap, predictions_topic=topics[0], feedback_topic=topics[1], group_id=group)
    inner = PrefetchingSource(factory) if prefetch else factory()
    child = inner._process.pid if prefetch else None  # noqa: SLF001 - its CPU time is counted
    source = _Counted(inner, n, child)
    monitor = realistic_monitor()
    wall, cpu = time.perf_counter(), time.process_time() + cpu_seconds(child)
    monitor.run(source, until=source.done)
    wall, cpu = source.finished[0] - wall, source.finished[1] - cpu
    accepted = sum(s.value for s in monitor.values() if s.name == "streammon_events_total" and s.labels["outcome"] == "accepted")
    return {"events": source.read, "accepted": accepted, "seconds": wall, "events_per_s": source.read / wall,
            "events_per_cpu_s": source.read / cpu}


def in_process(msgs: list) -> dict[str, float]:
    """``Monitor.process`` on the same messages in batches of 4096, no Kafka: the engine's own rate."""
    monitor = realistic_monitor()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(msgs), BATCH):
        monitor.process(msgs[i:i + BATCH])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"events": len(msgs), "seconds": wall, "events_per_s": len(msgs) / wall, "events_per_cpu_s": len(msgs) / cpu}


def throughput(bootstrap: str, plan: Plan, msgs: list, compression: str, rounds: int, with_engine: bool, log) -> dict:
    topics = (f"predictions_{compression}", f"feedback_{compression}")
    create_topics(bootstrap, *topics)
    made = produce(bootstrap, topics, msgs, None if compression == "none" else compression)
    log(f"{compression}: produced {made['messages']:,} messages at {made['messages_per_s']:,.0f}/s")
    out = []
    for r in range(rounds):
        # Rotate which goes first, so a swing in the machine's load does not always hit the same one.
        row: dict[str, Any] = {}
        whats = ("bare", "monitor", "prefetch")
        for what in whats[r % 3:] + whats[:r % 3]:
            row[what] = (bare_consume(bootstrap, topics, len(msgs)) if what == "bare"
                         else monitor_consume(bootstrap, topics, len(msgs), f"bench-{compression}-{what}-{r}", what == "prefetch"))
        if with_engine:
            row["engine"] = in_process(msgs)
        for what, key in (("monitor", "ratio"), ("prefetch", "ratio_prefetch")):
            row[key] = row[what]["events_per_s"] / row["bare"]["events_per_s"]
            row[key + "_cpu"] = row[what]["events_per_cpu_s"] / row["bare"]["events_per_cpu_s"]
        out.append(row)
        log(f"{compression} round {r + 1}: bare {row['bare']['events_per_s']:,.0f}/s, monitor "
            f"{row['monitor']['events_per_s']:,.0f}/s ({100 * row['ratio']:.0f} %), with prefetch "
            f"{row['prefetch']['events_per_s']:,.0f}/s ({100 * row['ratio_prefetch']:.0f} %)"
            + (f", engine alone {row['engine']['events_per_s']:,.0f}/s" if with_engine else ""))
    return {"topics": list(topics), "produce": made, "rounds": out,
            **{key + "_median": statistics.median(r[key] for r in out)
               for key in ("ratio", "ratio_cpu", "ratio_prefetch", "ratio_prefetch_cpu")}}


def profile(bootstrap: str, compression: str, n: int) -> dict:
    """cProfile of one worker reading ``n`` messages: own time by area, cumulative time of the key steps."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    run = monitor_consume(bootstrap, (f"predictions_{compression}", f"feedback_{compression}"), n, "bench-profile")
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    rows = []
    for (file, line, func), (_, calls, own, cum, _) in stats.items():
        areas[_area(file, func)] = areas.get(_area(file, func), 0.0) + own
        rows.append({"function": f"{_short(file)}:{line}({func})", "calls": calls, "own": own, "cumulative": cum})
    total = sum(areas.values())
    # (label, file, function, own time only?); an indented label is a part of the row above it
    steps = [("KafkaSource.poll", "streammon/connectors/kafka.py", "poll", False),
             ("  kafka-python KafkaConsumer.poll", "kafka/consumer/group.py", "poll", False),
             ("    CRC32C check of each record batch", "kafka/record/util.py", "calc_crc32c", False),
             ("  its own loop over the records", "streammon/connectors/kafka.py", "poll", True),
             ("  Message(...) (a named tuple's generated __new__)", "<string>", "<lambda>", False),
             ("  KafkaSource._refresh_health", "streammon/connectors/kafka.py", "_refresh_health", False),
             ("Monitor.process", "streammon/monitor.py", "process", False),
             ("  decode_event (JSON, validation)", "streammon/events.py", "decode_event", False),
             ("  Engine.apply (join, windows, operators)", "streammon/engine.py", "apply", False),
             ("KafkaSource.commit (every batch without a state_dir)", "streammon/connectors/kafka.py", "commit", False)]
    key = {}
    for label, file, func, own_only in steps:
        found = [own if own_only else cum for (f, _, fn), (_, _, own, cum, _) in stats.items() if f.endswith(file) and fn == func]
        key[label] = max(found, default=None)  # None: not called (renamed or gone): the table says so
    return {"events": n, "run": run, "total_own_seconds": total,
            "by_area": [{"area": a, "own": s, "share": s / total} for a, s in sorted(areas.items(), key=lambda kv: -kv[1])],
            "steps": [{"step": k, "cumulative": v, "share": None if v is None else v / total} for k, v in key.items()],
            "top": sorted(rows, key=lambda x: -x["own"])[:25]}


def _short(file: str) -> str:
    for marker in ("/site-packages/", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    if "/lib/python3" in file:  # the standard library
        return "stdlib/" + file.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return file


def _area(file: str, func: str) -> str:
    if file == "~":  # a C function: name it by what it belongs to
        for mark, area in (("decompress", "zlib decompress (C)"), ("pydantic_core", "pydantic_core (C)"), ("numpy", "numpy (C)"),
                           ("crc32c", "crc32c (C)"), ("select", "socket wait (C)"),
                           ("recv", "socket I/O (C)"), ("send", "socket I/O (C)")):
            if mark in func:
                return area
        return "other builtins (C)"
    short = _short(file)
    if short.startswith("streammon/"):
        return short
    if short.startswith("kafka/"):
        return "kafka-python (" + "/".join(short.split("/")[1:-1] or ["kafka"]) + ")"
    if short == "<string>":
        return "generated code (Message.__new__)"
    return short.split("/", 1)[0] + " (Python)"


def background_checkpoints() -> bool:
    """Whether ``Monitor.run`` (so ``streammon run``) has a forked child write its snapshots by default."""
    import inspect

    import streammon as sm

    option = inspect.signature(sm.Monitor.run).parameters.get("background_checkpoints")
    return bool(option is not None and option.default and hasattr(os, "fork"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 90 s (a smoke check); writes kafka_quick.json only")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - started:6.1f} s] {m}", flush=True)  # noqa: E731
    results: dict[str, Any] = {"command": "python bench/kafka_bench.py" + (" --quick" if args.quick else ""),
                               "quick": args.quick, "machine": machine(), "plan": asdict(plan), "metric_set": same_metric_set(),
                               "background_checkpoints": background_checkpoints()}
    log(f"machine: {results['machine']['cpu_model']}, load {results['machine']['load_average_at_start']}")
    stream = the_stream(max(plan.events, plan.scaling_events))
    msgs = stream[:plan.events]  # the same stream's beginning
    # The input stays alive for the whole throughput part (a worker would not hold it): keep it out of the
    # cyclic GC, whose full passes would otherwise land on whatever allocates next.
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="kafka-bench-") as tmp, EmbeddedBroker() as broker:
        bootstrap, workdir = broker.bootstrap_servers, Path(tmp)
        results["throughput"] = {"gzip": throughput(bootstrap, plan, msgs, "gzip", plan.rounds_gzip, True, log),
                                 "none": throughput(bootstrap, plan, msgs, "none", plan.rounds_plain, False, log)}
        if plan.profile_events:
            results["profile"] = profile(bootstrap, "gzip", plan.profile_events)
            log(f"profiled {plan.profile_events:,} events")
        results["scaling"] = scaling(bootstrap, workdir, log, stream[:plan.scaling_events], rounds=plan.scaling_rounds,
                                     broker_pid=broker._process.pid)  # noqa: SLF001 - its CPU time is reported
        del msgs, stream
        gc.unfreeze()
        gc.collect()
        results["idle_fetch_wait"] = [idle_fetch_wait(bootstrap, wait) for wait in (plan.long_wait_ms, 100)]
        log("idle topic, send -> poll: " + ", ".join(f"{1000 * x['median']:.0f} ms at fetch_max_wait_ms={x['fetch_max_wait_ms']}"
                                                     for x in results["idle_fetch_wait"]))
        load = dict(load_rate=plan.load_rate, warmup=plan.warmup)
        results["freshness"] = freshness(bootstrap, workdir, log, **load, samples=plan.samples)
        if plan.samples_long_wait:
            results["freshness_long_wait"] = freshness(bootstrap, workdir, log, **load, samples=plan.samples_long_wait,
                                                       fetch_max_wait_ms=plan.long_wait_ms)
        results["recovery"] = recovery(bootstrap, workdir, log, n=plan.pending)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = time.perf_counter() - started
    out = BENCH / "results" / ("kafka_quick.json" if args.quick else "kafka.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {out.relative_to(ROOT)}")
    if not args.quick:
        update_doc(ROOT / "docs" / "benchmarks.md", render(results))
        log("updated the kafka section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
