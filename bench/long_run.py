"""One worker on the disk store for minutes, then SIGKILLed and started again: drift, RSS, restart time.

``python bench/long_run.py [--minutes 10] [--quick]``. A child process runs ``Monitor.run`` (the
realistic metric set, default TTLs and ``max_pending``, ``--state-dir``: the join on disk, a
checkpoint every 5 s) over a synthetic source of JSON messages: two predictions, then one feedback
for a prediction made 100,000 predictions earlier (half of the predictions never get feedback), 50
predictions per second of event time. The parent scrapes its /metrics and reads its RSS and CPU
time from /proc every 10 s. At the end the child is SIGKILLed, and a new one is started on the same
state directory with a source that holds nothing new: the time from its spawn to a /metrics that
shows the restored pending count is the restart time, next to the same for an empty state directory
(interpreter, imports, server). Figures are printed and written to bench/results/long_run.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAG = 100_000  # predictions between a prediction and its feedback
RATE = 50.0  # predictions per second of event time
START = 1_700_000_000.0
CLOCK_HZ = os.sysconf("SC_CLK_TCK")


class SyntheticSource:
    """Message ``i`` is a pure function of ``i``, so a seek is free: seekable like a Kafka partition."""

    topic = "synthetic"

    def __init__(self, *, idle: bool = False) -> None:
        self.position = 0
        self.idle = idle  # after a restart: nothing new, so /metrics shows what was restored

    def message(self, i: int) -> Any:
        from streammon.connectors.base import Message

        block, r = divmod(i, 3)
        if r < 2:
            p = 2 * block + r
            score = (p * 2654435761 % 1000) / 1000
            value = (f'{{"id":"p{p}","ts":{START + p / RATE:.3f},"prediction":{int(score > 0.5)},'
                     f'"score":{score},"segment":{{"version":"v1"}}}}').encode()
            return Message(value, "prediction", f"p{p}".encode(), self.topic, 0, i)
        p = 2 * block - LAG
        if p < 0:  # nothing to give feedback for yet: another prediction
            p = 2 * block + 2 + 10**12
            value = f'{{"id":"p{p}","ts":{START + block / RATE * 2:.3f},"prediction":1,"score":0.9}}'.encode()
            return Message(value, "prediction", f"p{p}".encode(), self.topic, 0, i)
        label = int((p * 2654435761 % 1000) / 1000 > 0.5) if p % 10 < 8 else int(p % 3 == 0)
        value = f'{{"id":"p{p}","ts":{START + (2 * block) / RATE:.3f},"label":{label}}}'.encode()
        return Message(value, "feedback", f"p{p}".encode(), self.topic, 0, i)

    def poll(self, max_records: int, timeout: float) -> list:
        if self.idle:
            time.sleep(timeout)
            return []
        out = [self.message(i) for i in range(self.position, self.position + max_records)]
        self.position += max_records
        return out

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.position = offsets.get((self.topic, 0), 0)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        pass

    @property
    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        pass


def child(state_dir: str, port: int, idle: bool) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from harness import new_monitor

    import streammon as sm

    monitor = new_monitor("long", windows=[sm.Cumulative(), sm.Sliding("1h")])
    monitor.serve(port)
    monitor.run(SyntheticSource(idle=idle), state_dir=state_dir, checkpoint_interval=5.0)


def scrape(port: int) -> dict[str, float] | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "streammon_events_total":
                out["events"] = out.get("events", 0.0) + s.value
            elif s.name == "streammon_join_pending":
                out["pending_" + s.labels["side"]] = s.value
    return out


def proc(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:")) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / CLOCK_HZ


def spawn(state_dir: str, port: int, idle: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", state_dir, str(port), *(["--idle"] if idle else [])],
                            stdout=subprocess.DEVNULL, stderr=open(Path(state_dir).parent / "child.log", "ab"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_metrics(state_dir: str, want_pending: bool) -> dict:
    port = free_port()
    began = time.perf_counter()
    worker = spawn(state_dir, port, idle=True)
    first = None
    try:
        while time.perf_counter() - began < 120:
            got = scrape(port)
            if got is not None and first is None:
                first = time.perf_counter() - began
            if got is not None and (not want_pending or got.get("pending_prediction", 0) > 0):
                return {"first_metrics_s": round(first, 3), "restored_s": round(time.perf_counter() - began, 3),
                        "pending_predictions": got.get("pending_prediction"), "rss_mib": round(proc(worker.pid)[0], 1)}
            time.sleep(0.01)
        raise SystemExit("the restarted worker did not show its pending predictions within 120 s")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="one minute: a smoke check (results not written)")
    ap.add_argument("--child", nargs=2, metavar=("STATE_DIR", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.idle)
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from report import machine

    minutes = 1.0 if args.quick else args.minutes
    meta = machine(ROOT)
    work = Path(tempfile.mkdtemp(prefix="long-run-", dir="/tmp"))
    state_dir = str(work / "state")
    port = free_port()
    worker = spawn(state_dir, port, idle=False)
    began, samples = time.perf_counter(), []
    try:
        while time.perf_counter() - began < minutes * 60:
            time.sleep(10)
            if worker.poll() is not None:
                raise SystemExit(f"the worker stopped by itself; see {work / 'child.log'}")
            got = scrape(port)
            if got is None:
                continue
            rss, cpu = proc(worker.pid)
            samples.append({"t_s": round(time.perf_counter() - began, 1), "events": got.get("events", 0.0),
                            "pending_predictions": got.get("pending_prediction", 0.0), "rss_mib": round(rss, 1),
                            "cpu_s": round(cpu, 2)})
            print(samples[-1], flush=True)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    disk_mib = sum(f.stat().st_size for f in Path(state_dir).rglob("*") if f.is_file()) / 2**20
    intervals = []
    for a, b in itertools.pairwise(samples):
        events, cpu = b["events"] - a["events"], b["cpu_s"] - a["cpu_s"]
        intervals.append({"t_s": b["t_s"], "events_per_s": round(events / (b["t_s"] - a["t_s"])),
                          "events_per_cpu_s": round(events / cpu) if cpu else None, "rss_mib": b["rss_mib"]})
    restart = time_to_metrics(state_dir, want_pending=True)
    empty = time_to_metrics(str(work / "empty"), want_pending=False)
    minute = max(1, int(60 / 10))  # samples per minute
    first, last = intervals[:minute], intervals[-minute:]
    summary = {
        "events": samples[-1]["events"] if samples else 0,
        "pending_predictions_at_kill": samples[-1]["pending_predictions"] if samples else 0,
        "first_minute_events_per_cpu_s": round(sum(i["events_per_cpu_s"] or 0 for i in first) / len(first)),
        "last_minute_events_per_cpu_s": round(sum(i["events_per_cpu_s"] or 0 for i in last) / len(last)),
        "rss_mib_min_max_after_first_minute": [min(i["rss_mib"] for i in intervals[minute:] or intervals),
                                               max(i["rss_mib"] for i in intervals[minute:] or intervals)],
        "disk_mib": round(disk_mib, 1), "restart": restart, "empty_start": empty,
    }
    print(json.dumps(summary, indent=2))
    subprocess.run(["rm", "-rf", str(work)], check=False)
    if not args.quick:
        out = ROOT / "bench" / "results" / "long_run.json"
        out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": meta, "minutes": minutes,
                                   "summary": summary, "intervals": intervals, "samples": samples}, indent=2) + "\n")
        print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
