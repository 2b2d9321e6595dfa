"""A real Prometheus on loopback: a free port, a temporary data directory, started and stopped here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

__all__ = ["Job", "Prometheus", "free_port", "rss_bytes", "OWN_DIRS"]

OWN_DIRS: list[str] = []  # temporary directories of the servers this process started: how its leftovers are found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current, peak) resident memory of a process, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


@dataclass(frozen=True)
class Job:
    name: str
    target: str  # host:port
    interval: float
    timeout: float

    def config(self) -> str:
        return (f"  - job_name: {self.name}\n    scrape_interval: {self.interval:g}s\n"
                f"    scrape_timeout: {self.timeout:g}s\n    static_configs:\n      - targets: ['{self.target}']\n")


class Prometheus:
    """``with Prometheus([Job(...)]) as prom: prom.query("up")``; everything it wrote goes at exit."""

    def __init__(self, jobs: list[Job], *, query_timeout: float = 300.0) -> None:
        self.jobs = jobs
        self.query_timeout = query_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="compare-prom-")
        OWN_DIRS.append(self.dir)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Prometheus:
        config = self._write_config(self.jobs)
        self.log = open(os.path.join(self.dir, "prometheus.log"), "wb")
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}", f"--query.timeout={int(self.query_timeout)}s",
             "--web.enable-lifecycle", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited at start: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("prometheus was not ready within 60 s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _write_config(self, jobs: list[Job]) -> str:
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  evaluation_interval: 1h\nscrape_configs:\n" + "".join(j.config() for j in jobs))
        return config

    def reload(self, jobs: list[Job]) -> None:
        """Scrape ``jobs`` from now on (an empty list stops scraping; stored samples stay queryable)."""
        self.jobs = jobs
        self._write_config(jobs)
        request = urllib.request.Request(self.url + "/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=60) as r:
            r.read()

    def tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "prometheus.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def memory(self) -> tuple[int, int]:
        return rss_bytes(self.proc.pid)

    def query(self, expr: str, at: float | None = None) -> tuple[float, list]:
        """(seconds the HTTP API took, result vector) for an instant query."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=self.query_timeout + 30) as r:
                body = r.read()
        except urllib.error.HTTPError as exc:  # a PromQL error (e.g. a timeout) comes back as 4xx/5xx with JSON
            body = exc.read()
        elapsed = time.perf_counter() - t0
        reply = json.loads(body)
        if reply.get("status") != "success":
            raise RuntimeError(f"{reply.get('errorType')}: {reply.get('error')}")
        return elapsed, reply["data"]["result"]

    def scalar(self, expr: str, at: float | None = None) -> tuple[float, float | None]:
        """(seconds, the single value of ``expr``, or None when the result is empty)."""
        elapsed, result = self.query(expr, at)
        if not result:
            return elapsed, None
        if len(result) != 1:
            raise RuntimeError(f"{expr!r} gave {len(result)} series, expected one")
        return elapsed, float(result[0]["value"][1])

    def target(self, job: str) -> dict:
        with urllib.request.urlopen(self.url + "/api/v1/targets", timeout=30) as r:
            targets = json.loads(r.read())["data"]["activeTargets"]
        return next((t for t in targets if t["labels"].get("job") == job), {})

    def wait_scrape(self, job: str, timeout: float) -> dict:
        """Wait for the first finished scrape of ``job``; its outcome: up, duration, samples, error, time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.target(job)
            if t.get("lastScrape", "").startswith("0001"):  # Go's zero time: not scraped yet
                time.sleep(0.25)
                continue
            if t.get("health") in ("up", "down"):
                _, up = self.scalar(f'up{{job="{job}"}}')
                if up is None:  # the target page is ahead of the head block by a moment
                    time.sleep(0.1)
                    continue
                _, when = self.scalar(f'timestamp(up{{job="{job}"}})')
                _, duration = self.scalar(f'scrape_duration_seconds{{job="{job}"}}')
                _, samples = self.scalar(f'scrape_samples_scraped{{job="{job}"}}')
                return {"up": up == 1, "duration_s": duration, "samples": samples, "error": t.get("lastError", ""),
                        "at": when}
            time.sleep(0.25)
        return {"up": False, "duration_s": None, "samples": None, "error": f"no scrape finished within {timeout:.0f} s",
                "at": None}
