"""The Kafka benchmarks that run ``streammon run`` workers: freshness under load, recovery after SIGKILL.

Each worker is a subprocess of the realistic app (bench/kafka_common.py), scraped on its /metrics
as Prometheus would scrape it, only more often.
"""

from __future__ import annotations

import os
import random
import re
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka_common import BATCH, BENCH, PARTITIONS, ROOT, create_topics, produce, realistic_monitor, the_stream

import streammon as sm

__all__ = ["Served", "Worker", "app_file", "metric", "samples", "wait_for", "freshness", "idle_fetch_wait", "recovery"]

# Seconds between /metrics scrapes while timing freshness and recovery: a scrape of the realistic set
# over three versions costs the worker 3-8 ms, so scraping faster would slow what it measures.
POLL_PERIOD = 0.05


def app_file(workdir: Path) -> Path:
    """The realistic app as a file ``streammon run`` and ``streammon export`` can load."""
    app = workdir / "bench_app.py"
    if not app.exists():
        app.write_text(f"import sys\nsys.path.insert(0, {str(BENCH)!r})\nfrom kafka_common import realistic_monitor\n"
                       f"monitor = realistic_monitor()\n")
    return app


class Served:
    """A ``python -m streammon`` subprocess that prints ``serving URL`` first (a worker or an exporter)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.command = [sys.executable, "-m", "streammon", *args]
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def launch(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)

    def ready(self, timeout: float = 60.0) -> None:
        """Wait for the ``serving URL`` line."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("serving "):
            self.kill()
            raise RuntimeError(f"{self.command[3]} did not start: {self.log.read_text()[-2000:]}")
        self.url = line.split()[1]

    def start(self, timeout: float = 60.0) -> float:
        """Start; return the seconds until it serves /metrics (interpreter, imports, app, Kafka metadata)."""
        started = time.perf_counter()
        self.launch()
        self.ready(timeout)
        return time.perf_counter() - started

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return response.read().decode()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
        self._reap()


class Worker(Served):
    """``streammon run`` of the realistic app on a pair of topics, serving /metrics on a free port;
    ``options`` are more of its command-line arguments (``-X fetch_max_wait_ms=500``, ``--scale-out``)."""

    def __init__(self, workdir: Path, bootstrap: str, topics: tuple[str, str], group: str, state_dir: Path,
                 *options: str, name: str | None = None) -> None:
        super().__init__(["run", f"{app_file(workdir)}:monitor", "--bootstrap-servers", bootstrap, "--topics", ",".join(topics),
                          "--group", group, "--state-dir", str(state_dir), "--metrics-port", "0", *options],
                         workdir / f"worker-{name or group}.log")


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each sample of ``name`` in a text exposition."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if metric_name == name:
            out.append((dict(_LABEL.findall(label_text)), float(value)))
    return out


def metric(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a text exposition; None if none."""
    found = [value for have, value in samples(text, name) if all(have.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


def wait_for(worker: Worker, check: Callable[[str], bool], timeout: float, period: float = POLL_PERIOD) -> tuple[float, float, str]:
    """Scrape until ``check(text)``; (start of the last scrape that did not show it, time it showed, text)."""
    deadline = time.time() + timeout
    before = time.time()
    while True:
        asked = time.time()
        try:
            text = worker.scrape()
        except OSError:
            text = ""
        if text and check(text):
            return before, time.time(), text
        before = asked
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s on {worker.url}; log: {worker.log.read_text()[-1500:]}")
        time.sleep(max(0.0, period - (time.time() - asked)))


# -- 3. freshness ---------------------------------------------------------------------------------
def _load(bootstrap: str, topics: tuple[str, str], rate: float, stop: threading.Event, sent: list[int]) -> None:
    """Realistic events at ``rate`` per second through the SDK, event time close to the wall clock."""
    from synthetic_stream import StreamSpec, messages

    stream = messages(StreamSpec(rate=rate / 1.9, mean_delay=10.0, start=time.time(), seed=11))  # 1.9 events per prediction
    began = time.monotonic()
    with sm.EventProducer(bootstrap, predictions_topic=topics[0], feedback_topic=topics[1]) as producer:
        while not stop.is_set():
            for _ in range(max(0, int((time.monotonic() - began) * rate) - sent[0])):
                msg = next(stream)
                producer.send(msg.value, kind=msg.kind)
                sent[0] += 1
            stop.wait(0.01)


def _watch(bootstrap: str, topics: tuple[str, str], stop: threading.Event, seen: dict[bytes, float], wait_ms: int) -> None:
    """A bare consumer beside the worker (KafkaSource's settings): when each probe's feedback reaches a client."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=wait_ms,
                             max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20)
    partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    while not stop.is_set():
        for tp, rows in consumer.poll(timeout_ms=200, max_records=BATCH).items():
            if tp.topic == topics[1]:
                now = time.time()
                for r in rows:
                    if r.key and r.key.startswith(b"probe-"):
                        seen.setdefault(r.key, now)
    consumer.close()


def idle_fetch_wait(bootstrap: str, wait_ms: int, samples: int = 12) -> dict[str, float]:
    """Send -> returned by a bare consumer polling all along, on a pair of topics with no other traffic: what
    the broker's handling of a waiting fetch costs alone (Apache Kafka answers it as soon as data arrives)."""
    from kafka import KafkaProducer

    topics = (f"idle_predictions_{wait_ms}", f"idle_feedback_{wait_ms}")
    create_topics(bootstrap, *topics)
    stop, seen = threading.Event(), {}
    watcher = threading.Thread(target=_watch, args=(bootstrap, topics, stop, seen, wait_ms), daemon=True)
    watcher.start()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    sent = {}
    try:
        time.sleep(1.0)  # the watcher is polling
        for i in range(samples):
            time.sleep(random.uniform(0.2, 0.2 + wait_ms / 1000))  # at a random point of a waiting fetch
            key = f"probe-{i}".encode()
            sent[key] = time.time()
            producer.send(topics[1], key=key, value=b"{}")
            producer.flush()
        time.sleep(2 * wait_ms / 1000 + 0.5)
    finally:
        stop.set()
        watcher.join(timeout=10)
        producer.close()
    out = [seen[k] - t for k, t in sent.items() if k in seen]
    return {"fetch_max_wait_ms": wait_ms, "samples": len(out), "median": statistics.median(out), "max": max(out)}


def source_fetch_wait(bootstrap: str, topics: tuple[str, str]) -> int:
    """The ``fetch_max_wait_ms`` a ``KafkaSource`` uses when not told one (what ``streammon run`` uses)."""
    from streammon.connectors.kafka import KafkaSource

    source = KafkaSource(bootstrap, predictions_topic=topics[0], feedback_topic=topics[1])
    try:
        return int(source._consumer.config["fetch_max_wait_ms"])  # noqa: SLF001 - the bench reports the library's setting
    finally:
        source.close()


def _quantiles(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return {"p50": q[49], "p90": q[89], "p99": q[98], "max": max(xs)}


def freshness(bootstrap: str, workdir: Path, log, *, load_rate: float, warmup: float, samples: int,
              fetch_max_wait_ms: int | None = None) -> dict:
    """Feedback sent (wall clock before the SDK's send) to the worker's /metrics showing it, under load.
    ``fetch_max_wait_ms`` None: ``streammon run`` as it is; else that setting given with ``-X``."""
    name = "default" if fetch_max_wait_ms is None else f"wait{fetch_max_wait_ms}"
    topics = (f"predictions_fresh_{name}", f"feedback_fresh_{name}")
    create_topics(bootstrap, *topics)
    wait = source_fetch_wait(bootstrap, topics) if fetch_max_wait_ms is None else fetch_max_wait_ms
    state = workdir / f"state-fresh-{name}"
    worker = Worker(workdir, bootstrap, topics, f"bench-fresh-{name}", state,
                    *(() if fetch_max_wait_ms is None else ("-X", f"fetch_max_wait_ms={fetch_max_wait_ms}")))
    stop, sent, seen = threading.Event(), [0], {}
    threads = [threading.Thread(target=_load, args=(bootstrap, topics, load_rate, stop, sent), daemon=True),
               threading.Thread(target=_watch, args=(bootstrap, topics, stop, seen, wait), daemon=True)]
    probe = {"version": "probe"}  # a segment value of its own: its counts move only with the probes
    sent_at: dict[bytes, float] = {}
    upper, lower, waits = [], [], []
    checkpoints: set[float] = set()  # wall-clock times the worker reported as its last checkpoint
    try:
        worker.start()
        for t in threads:
            t.start()
        time.sleep(warmup)
        load_began, sent_began = time.monotonic(), sent[0]
        with sm.EventProducer(bootstrap, predictions_topic=topics[0], feedback_topic=topics[1]) as producer:
            # The probes' predictions first, so each feedback meets its prediction already in the store.
            for i in range(samples):
                producer.log_prediction(f"probe-{i}", 1, score=0.8, segment=probe)
            producer.flush()
            wait_for(worker, lambda t: metric(t, "streammon_mean_score_count", window="cumulative", **probe) == samples, 60)
            for i in range(samples):
                time.sleep(random.uniform(0.05, 0.15))  # out of phase with the worker's poll cycle
                sent_at[f"probe-{i}".encode()] = now = time.time()
                producer.log_feedback(f"probe-{i}", 1)
                before, shown, text = wait_for(
                    worker, lambda t: (metric(t, "streammon_accuracy_count", window="cumulative", **probe) or 0) > i, 30)  # noqa: B023 - called before the loop moves on
                upper.append(shown - now)
                lower.append(max(0.0, before - now))
                waits.append((now, shown))
                age = metric(text, "streammon_checkpoint_age_seconds")
                if age is not None:
                    checkpoints.add(round(shown - age, 3))
        load_rate = (sent[0] - sent_began) / (time.monotonic() - load_began)
        text = worker.scrape()
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:
                t.join(timeout=30)
        worker.stop()
    bare = [seen[k] - t for k, t in sent_at.items() if k in seen]
    # A wait "had a checkpoint" when a checkpoint time fell inside it: a snapshot's end when the worker
    # writes it itself, the fork when a child writes it (the worker reports either as its last checkpoint).
    # Each scrape gives a checkpoint's time plus its own latency: values within 1 s are one checkpoint (the
    # interval is 5 s), whose time is the smallest of them.
    times: list[float] = []
    for t in sorted(checkpoints):
        if not times or t - times[-1] > 1.0:
            times.append(t)
    checkpointed = [any(sent <= t <= shown for t in times) for sent, shown in waits]
    calm = [x for x, c in zip(upper, checkpointed) if not c]
    hit = [x for x, c in zip(upper, checkpointed) if c]
    result = {"fetch_max_wait_ms": wait, "set": fetch_max_wait_ms is not None,
              "samples": len(upper), **_quantiles(upper), "lower_bound": _quantiles(lower),
              "bare_consumer": {"samples": len(bare), **_quantiles(bare)} if len(bare) > 1 else None,
              "without_checkpoint": {"samples": len(calm), **_quantiles(calm)} if len(calm) > 1 else None,
              "with_checkpoint": {"samples": len(hit), **_quantiles(hit)} if len(hit) > 1 else None,
              "load_events_per_s": load_rate, "worker_events_read": metric(text, "streammon_events_total"),
              "worker_lag_at_end": metric(text, "streammon_consumer_lag"), "poll_period": POLL_PERIOD,
              "checkpoints_seen": len(times),
              "snapshot_bytes_at_end": (state / "snapshot.pkl").stat().st_size if (state / "snapshot.pkl").exists() else None,
              "seconds": upper}
    log(f"freshness ({name}): p50 {1000 * result['p50']:.0f} ms, p99 {1000 * result['p99']:.0f} ms over {len(upper)} samples "
        f"at {load_rate:,.0f} events/s (a bare consumer: p50 {1000 * (result['bare_consumer'] or {}).get('p50', float('nan')):.0f} ms)")
    return result


# -- 4. recovery ----------------------------------------------------------------------------------
def _restore_final(state: Path, n: int) -> tuple[Any, dict, float]:
    """Restore the worker's snapshot here (timed) once it holds all ``n`` offsets: the worker writes
    one more snapshot after its last batch, then none, as nothing changes."""
    from streammon.checkpoint import Checkpointer

    snapshot, last = state / "snapshot.pkl", None
    deadline = time.time() + 120
    while time.time() < deadline:
        mtime = snapshot.stat().st_mtime_ns if snapshot.exists() else None
        if mtime is not None and mtime != last:
            last = mtime
            monitor = realistic_monitor()
            started = time.perf_counter()
            offsets = Checkpointer(state).restore(monitor._engine)  # noqa: SLF001 - the bench times the library's own step
            seconds = time.perf_counter() - started
            if sum(offsets.values()) == n:
                return monitor, offsets, seconds
        time.sleep(0.2)
    raise TimeoutError(f"no snapshot in {state} holds all {n:,} offsets after 120 s")


def recovery(bootstrap: str, workdir: Path, log, *, n: int) -> dict:
    """SIGKILL a worker holding ``n`` pending predictions, restart it, time until /metrics shows them all."""
    from streammon.checkpoint import Checkpointer

    topics = ("predictions_pending", "feedback_pending")
    create_topics(bootstrap, *topics)
    # Larger producer batches than the SDK's: only the worker's first read depends on them, not the restart.
    made = produce(bootstrap, topics, the_stream(n, feedback_share=0.0, seed=5), "gzip", batch_bytes=1 << 20)
    log(f"recovery: produced {n:,} predictions at {made['messages_per_s']:,.0f}/s")
    state = workdir / "state-pending"
    all_pending = lambda t: metric(t, "streammon_join_pending", side="prediction") == n  # noqa: E731
    # SIGKILL only once the snapshot holds everything, and never before the first read is done.
    first = Worker(workdir, bootstrap, topics, "bench-pending", state)
    try:
        began = time.time()
        first.start()
        _, shown, _ = wait_for(first, all_pending, 120 + n / 2_000, period=0.25)
        read_seconds = shown - began
        monitor, offsets, restore_seconds = _restore_final(state, n)
    finally:
        first.kill()
    size = (state / "snapshot.pkl").stat().st_size
    restored = int(monitor._engine.store.pending_predictions)  # noqa: SLF001
    writes = []
    for _ in range(3):
        started = time.perf_counter()
        Checkpointer(workdir / "state-copy").save(monitor._engine, offsets)  # noqa: SLF001
        writes.append(time.perf_counter() - started)
    del monitor
    second = Worker(workdir, bootstrap, topics, "bench-pending", state)
    try:
        started = time.time()
        serving = second.start()
        _, shown, _ = wait_for(second, all_pending, 60)
        restart_seconds = shown - started
    finally:
        second.stop()
    result = {"pending": n, "produce": made, "first_read_seconds": read_seconds, "snapshot_bytes": size,
              "snapshot_bytes_per_pending": size / n, "snapshot_pending": restored,
              "restore_seconds_in_process": restore_seconds, "write_seconds": statistics.median(writes),
              "write_seconds_all": writes, "restart_seconds": restart_seconds, "restart_to_serving_seconds": serving,
              "restart_serving_to_restored_seconds": restart_seconds - serving}
    log(f"recovery: {restart_seconds:.2f} s to /metrics showing {n:,} pending again; snapshot {size / 2**20:.1f} MiB, "
        f"written in {result['write_seconds']:.2f} s")
    return result
