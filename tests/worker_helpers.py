"""Helpers for tests that run ``streammon`` processes and read their /metrics (fixtures: tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """{(sample name, sorted labels): value} from a worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def wait_for(predicate: Callable[[], object], timeout: float, what: str, *, workers: Iterable[Worker] = ()) -> None:
    """Poll ``predicate`` until true; a worker not answering yet (OSError) or a missing sample is a 'not yet'.

    On timeout, the error ends with the log tail of each of ``workers``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, StopIteration):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + "".join(f"\n{w.report()}" for w in workers))


class Worker(subprocess.Popen):
    """``python -m streammon ARGS`` run from the repository root, its stderr appended to the file ``log``.

    Never a pipe: one nobody reads fills up and blocks a worker that logs (a hang, not a failure).
    Restarts may share a log: it then holds every run, in order.
    """

    def __init__(self, *args: str, log: Path) -> None:
        self.log = Path(log)
        with open(self.log, "ab") as out:
            super().__init__([sys.executable, "-m", "streammon", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=out, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def log_tail(self, n: int | None = 4000) -> str:
        """The last ``n`` bytes of the log (all of it for None)."""
        data = self.log.read_bytes() if self.log.exists() else b""
        return (data if n is None else data[-n:]).decode(errors="replace")

    def report(self) -> str:
        state = "running" if self.poll() is None else f"exit {self.returncode}"
        return f"log of streammon {' '.join(map(str, self.args[3:5]))} ({state}), {self.log}:\n{self.log_tail()}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Send ``sig`` and wait; kill it if it is still there after ``timeout`` s."""
        if self.poll() is None:
            self.send_signal(sig)
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.wait()


def create_topics(broker, names: Iterable[str], partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        admin.close()
