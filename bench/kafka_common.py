"""What the Kafka benchmarks share: the realistic app, the stream, topics and producing.

Only light imports here: the ``streammon run`` workers of bench/kafka_live.py import this module for
their app, and a restart's time should not include imports a real app would not make.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import streammon as sm  # noqa: E402
from streammon import operators as ops  # noqa: E402

__all__ = ["ROOT", "BENCH", "PARTITIONS", "BATCH", "realistic_monitor", "create_topics", "produce", "the_stream", "cpu_seconds"]

PAIR_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss", "brier_score", "roc_auc", "mae", "mse", "calibration")
PARTITIONS = 4
BATCH = 4096  # the monitor's default batch_size: what one poll may return


def realistic_monitor(name: str = "bench") -> sm.Monitor:
    """The realistic metric set of bench/engine_bench.py (checked equal at run time when that imports)."""
    monitor = sm.Monitor(name, windows=[sm.Cumulative(), sm.Sliding("1h")], segments=["version"])
    for metric, op in zip(PAIR_METRICS, (ops.Accuracy(), ops.Precision(), ops.Recall(), ops.F1(), ops.LogLoss(),
                                         ops.BrierScore(), ops.ROCAUC(), ops.MAE(), ops.MSE(), ops.Calibration())):
        monitor.track(op, name=metric)
    monitor.track(ops.MeanScore(), name="mean_score")
    monitor.track(ops.Quantiles([0.5, 0.9, 0.99], of="score"), name="score_quantiles")
    monitor.track(ops.ClassDistribution(of="prediction"), name="class_distribution")
    monitor.track(ops.FeedbackDelay([0.5, 0.9, 0.99]), name="feedback_delay_seconds")
    return monitor


def create_topics(bootstrap: str, *names: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    finally:
        admin.close()


def produce(bootstrap: str, topics: tuple[str, str], msgs: list, compression: str | None, batch_bytes: int = 16384) -> dict[str, Any]:
    """Write ``msgs`` once, keyed by id; by default batched as the SDK's EventProducer batches (linger 5 ms, 16 KiB)."""
    from kafka import KafkaProducer

    started = time.perf_counter()
    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type=compression, linger_ms=5, batch_size=batch_bytes)
    for m in msgs:
        producer.send(topics[0] if m.kind == "prediction" else topics[1], key=m.key, value=m.value)
    producer.flush()
    producer.close()
    seconds = time.perf_counter() - started
    return {"messages": len(msgs), "seconds": seconds, "messages_per_s": len(msgs) / seconds,
            "value_bytes_mean": sum(len(m.value) for m in msgs) / len(msgs)}


def the_stream(n: int, **spec: Any) -> list:
    """The first ``n`` messages of bench/synthetic_stream.py's realistic stream (JSON bytes, keyed)."""
    from synthetic_stream import StreamSpec, messages, take

    return take(messages(StreamSpec(**spec)), n)


def cpu_seconds(pid: int | None, *, children: bool = False) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far, from /proc; 0 for None, nan once it is gone.
    ``children``: with those of its children it has waited for (a worker's forked checkpoint writers)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = sum(int(x) for x in fields[11:15 if children else 13])  # utime, stime[, cutime, cstime]
    return ticks / os.sysconf("SC_CLK_TCK")
