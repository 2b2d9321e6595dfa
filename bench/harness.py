"""What every benchmark section uses: the monitor under test, batching, scraping, clocks, engine workers."""

from __future__ import annotations

import gc
import statistics
import time
import traceback
from typing import Any

from prometheus_client import generate_latest
from synthetic_stream import StreamSpec, take

import streammon as sm
from streammon import operators as ops

__all__ = ["BATCH", "PAIR_METRICS", "ENGINES", "new_monitor", "spans", "batches", "scrape", "Clock", "Worker"]

BATCH = 4096
PAIR_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss", "brier_score", "roc_auc", "mae", "mse", "calibration")
ENGINES = ("streammon", "river_loop", "river_loop_lite")


def new_monitor(name: str = "bench", metrics: str = "realistic", windows: list | None = None) -> sm.Monitor:
    """The realistic metric set (or accuracy alone) per version, in ``windows`` (default Cumulative and Sliding('1h'))."""
    windows = [sm.Cumulative(), sm.Sliding("1h")] if windows is None else windows
    monitor = sm.Monitor(name, windows=windows, segments=["version"])
    if metrics == "accuracy":
        monitor.track(ops.Accuracy(), name="accuracy")
        return monitor
    for name_, op in zip(PAIR_METRICS, (ops.Accuracy(), ops.Precision(), ops.Recall(), ops.F1(), ops.LogLoss(),
                                        ops.BrierScore(), ops.ROCAUC(), ops.MAE(), ops.MSE(), ops.Calibration())):
        monitor.track(op, name=name_)
    monitor.track(ops.MeanScore(), name="mean_score")
    monitor.track(ops.Quantiles([0.5, 0.9, 0.99], of="score"), name="score_quantiles")
    monitor.track(ops.ClassDistribution(of="prediction"), name="class_distribution")
    monitor.track(ops.FeedbackDelay([0.5, 0.9, 0.99]), name="feedback_delay_seconds")  # join health, with the self metrics
    return monitor


def spans(start: int, stop: int, cuts: tuple[int, ...] = ()) -> list[tuple[int, int]]:
    """Batch bounds over [start, stop): BATCH long, also cut at each index in ``cuts``."""
    out, i = [], start
    while i < stop:
        j = min(i + BATCH, stop, *(c for c in cuts if c > i))
        out.append((i, j))
        i = j
    return out


def batches(msgs: list, start: int, stop: int) -> list[tuple[int, list]]:
    """(index after the batch, batch) over msgs[start:stop]."""
    return [(j, msgs[i:j]) for i, j in spans(start, stop)]


def scrape(monitor: sm.Monitor, repeats: int) -> dict[str, Any]:
    """Median time of a materialised collect and of the text exposition."""
    registry = monitor.registry
    generate_latest(registry)  # drains the batch-time histogram once, as the first real scrape would
    collect, expose = [], []
    samples = body = 0
    for _ in range(repeats):
        t = time.perf_counter()
        samples = sum(len(family.samples) for family in list(registry.collect()))
        collect.append(time.perf_counter() - t)
        t = time.perf_counter()
        body = len(generate_latest(registry))
        expose.append(time.perf_counter() - t)
    return {"samples": samples, "bytes": body, "collect_ms": 1000 * statistics.median(collect),
            "collect_ms_min": 1000 * min(collect), "exposition_ms": 1000 * statistics.median(expose)}


class Clock:
    """Wall and CPU time spent in ``run``, and the part of it the cyclic GC took."""

    running: Clock | None = None

    def __init__(self) -> None:
        self.wall = self.cpu = self.gc = 0.0
        self._gc_started: float | None = None

    def run(self, fn, arg) -> None:
        Clock.running = self
        w, c = time.perf_counter(), time.process_time()
        fn(arg)
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        Clock.running = None


def _gc_timer(phase: str, info: dict) -> None:
    # One process hosts every engine, so a collection is charged to the engine that triggered it.
    clock = Clock.running
    if clock is None:
        return
    if phase == "start":
        clock._gc_started = time.perf_counter()
    elif clock._gc_started is not None:
        clock.gc += time.perf_counter() - clock._gc_started
        clock._gc_started = None


gc.callbacks.append(_gc_timer)


def _serve(conn, name: str, msgs: list, stream, repeats: int) -> None:
    """A forked worker: one engine, fed slices of the shared stream on command, timing itself."""
    try:
        if name == "streammon":
            monitor = new_monitor()
            engine = monitor.process
        else:
            from baselines import RiverLoop  # imported when used: river and scikit-learn take ~2 s to load

            river = RiverLoop(StreamSpec().rate, {"v1": 0.8, "v2": 0.2}, rolling_quantiles=name == "river_loop")
            engine = river.process
        clock = Clock()
        while True:
            cmd, *args = conn.recv()
            if cmd == "run":
                batch = msgs[args[0]: args[1]]
                before = (clock.cpu, clock.wall, clock.gc)
                clock.run(engine, batch)
                conn.send((clock.cpu - before[0], clock.wall - before[1], clock.gc - before[2]))
            elif cmd == "scrape":
                conn.send(scrape(monitor, repeats))
            elif cmd == "values":
                conn.send({m: monitor.value(m, window="cumulative", version="v1") if name == "streammon"
                           else river.values("v1")[m] for m in args[0]})
            elif cmd == "extend":  # on to args[1] events, for the scrape after 1e7 (generation not timed)
                done, target = args
                clock = Clock()
                while done < target:
                    # Made ahead in chunks and frozen, as the first events were: the generator's
                    # live objects must not make the monitor's GC passes longer.
                    chunk = take(stream, min(500_000, target - done))
                    gc.collect()
                    gc.freeze()
                    for start, end in spans(0, len(chunk)):
                        clock.run(engine, chunk[start:end])
                    done += len(chunk)
                    del chunk
                conn.send({"process_seconds": clock.wall, "cpu_seconds": clock.cpu, **scrape(monitor, repeats)})
            else:
                conn.send(None)
                return
    except Exception:  # noqa: BLE001 - hand the trace to the parent, which raises it
        conn.send(RuntimeError(traceback.format_exc()))


class Worker:
    """An engine in a forked process (its own heap and GC, as in production), answering ``ask``."""

    def __init__(self, ctx, name: str, msgs: list, stream, repeats: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, name, msgs, stream, repeats), daemon=True)
        self.process.start()
        child.close()

    def ask(self, *cmd: Any) -> Any:
        self.conn.send(cmd)
        reply = self.conn.recv()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self) -> None:
        self.ask("stop")
        self.process.join(10)
