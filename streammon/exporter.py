"""Exposition: a prometheus_client Collector that reads the monitor's state at scrape time."""

from __future__ import annotations

import base64
import hmac
import io
import logging
import math
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Iterator, NamedTuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .engine import OTHER, PROCESSING_BUCKETS
from .errors import RegistrationError

if TYPE_CHECKING:
    from .monitor import Monitor

__all__ = ["Sample", "MonitorCollector", "MetricsServer"]

log = logging.getLogger("streammon")

PREFIX = "streammon_"
MAX_OUTPUT_KEYS = 100


class Sample(NamedTuple):
    """One published series: exactly a line of ``/metrics``."""

    name: str
    labels: dict[str, str]
    value: float


class MonitorCollector:
    """Yields one gauge family per metric (and its ``_count``) plus the self metrics."""

    def __init__(self, monitor: "Monitor") -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        with self.monitor._lock:
            worker = self.monitor._worker
            if worker is not None:
                # A scaled-out worker holds only some partitions: metrics come from the exporter.
                yield from self._worker_families(worker)
                return
            yield from self._metric_families()
            yield from self._self_families()
            if self.monitor._exporter is not None:
                yield from self._exporter_families(self.monitor._exporter)

    def _worker_families(self, worker) -> Iterator[Metric]:
        mon = [self.monitor.name]
        owned = GaugeMetricFamily(PREFIX + "worker_partitions", "Input partitions this worker owns (scaled out)", labels=["monitor"])
        owned.add_metric(mon, len(worker.partitions))
        yield owned
        if worker.last_saved is not None:
            age = GaugeMetricFamily(PREFIX + "checkpoint_age_seconds", "Seconds since the last checkpoint", labels=["monitor"])
            age.add_metric(mon, max(0.0, time.time() - worker.last_saved))
            yield age
        yield self._processing_histogram(worker.health)
        yield from self._source_families()

    def _exporter_families(self, exporter) -> Iterator[Metric]:
        age = GaugeMetricFamily(PREFIX + "partials_age_seconds", "Seconds since each partition's partial aggregates were "
                                "written by its worker (scaled out)", labels=["monitor", "partition"])
        for partition, seconds in sorted(exporter.ages().items()):
            age.add_metric([self.monitor.name, str(partition)], seconds)
        yield age
        errors = CounterMetricFamily(PREFIX + "partials_errors", "Versions of a partition's partials file the exporter "
                                     "could not use (truncated, garbage, another app's); it kept the last good one",
                                     labels=["monitor", "partition"])
        for partition, n in sorted(exporter.errors.items()):
            errors.add_metric([self.monitor.name, partition], n)
        yield errors

    def _metric_families(self) -> Iterator[Metric]:
        m = self.monitor
        engine = m._engine
        base = ["monitor", "model", "window", *engine.keys.segments]
        for tracked, states in engine.metrics:
            name = PREFIX + tracked.name
            doc = f"{tracked.name} ({type(getattr(tracked.prototype, 'stat', tracked.prototype)).__name__} over {tracked.feed.stream}s)"
            out = tracked.output_label
            values = GaugeMetricFamily(name, doc, labels=base + [out] if out else base)
            counts = GaugeMetricFamily(name + "_count", f"Events in the window of {tracked.name}", labels=base)
            for state in states:
                for code, count, op in state.series():
                    labels = [m.name, *engine.keys.labels[code][:1], state.window.label, *engine.keys.labels[code][1:]]
                    counts.add_metric(labels, count)
                    value = self._value(tracked.name, state.window.label, op, count)
                    if out is None:
                        values.add_metric(labels, value if isinstance(value, float) else math.nan)
                    elif isinstance(value, dict):
                        for key, v in list(value.items())[:MAX_OUTPUT_KEYS]:
                            values.add_metric(labels + [str(key)], _number(v))
            yield values
            yield counts

    def _value(self, name: str, window: str, op, count: int):
        if count == 0:
            return math.nan
        try:
            value = op.get()
        except Exception as exc:  # noqa: BLE001 - a user finalizer must never break a scrape
            self.monitor._engine._error_sink(name)(window, None, exc)
            return math.nan
        return value if isinstance(value, dict) else _number(value)

    def _self_families(self) -> Iterator[Metric]:
        m = self.monitor
        engine, store = m._engine, m._engine.store
        health = engine.health
        mon = [m.name]
        events = CounterMetricFamily(PREFIX + "events", "Events read, by topic and outcome", labels=["monitor", "topic", "outcome"])
        for (topic, outcome), n in sorted(health.events.items()):
            events.add_metric(mon + [topic, outcome], n)
        yield events
        pending = GaugeMetricFamily(PREFIX + "join_pending", "Entries waiting for the other side of the join", labels=["monitor", "side"])
        pending.add_metric(mon + ["prediction"], store.pending_predictions)
        pending.add_metric(mon + ["feedback"], store.pending_feedback)
        yield pending
        c = store.counts
        joined = CounterMetricFamily(PREFIX + "joined", "Predictions joined with their feedback", labels=["monitor"])
        joined.add_metric(mon, c.joined)
        yield joined
        for fam, doc, pred, fb in (
            ("join_expired", "Join entries that timed out unmatched, by side", c.expired_predictions, c.expired_feedback),
            ("join_evicted", "Join entries evicted past max_pending, by side", c.evicted_predictions, c.evicted_feedback),
            ("duplicates", "Duplicate events ignored (same id, same side)", c.duplicate_predictions, c.duplicate_feedback),
        ):
            family = CounterMetricFamily(PREFIX + fam, doc, labels=["monitor", "side"])
            family.add_metric(mon + ["prediction"], pred)
            family.add_metric(mon + ["feedback"], fb)
            yield family
        late = CounterMetricFamily(PREFIX + "late_events", "Events too old to enter a sliding window, by the event time "
                                   "judged (a pair is judged by its prediction's or its feedback's time)",
                                   labels=["monitor", "window", "stream", "time"])
        for (window, stream, basis), n in sorted(health.late.items()):
            late.add_metric(mon + [window, stream, basis], n)
        yield late
        errors = CounterMetricFamily(PREFIX + "operator_errors", "Events a metric's operator raised on", labels=["monitor", "metric", "window"])
        for (metric, window), n in sorted(health.operator_errors.items()):
            errors.add_metric(mon + [metric, window], n)
        yield errors
        overflow = CounterMetricFamily(PREFIX + "segment_overflow", f"Events whose label value went to {OTHER} (cardinality guard)", labels=["monitor", "label"])
        for label, n in sorted(engine.keys.overflow.items()):
            overflow.add_metric(mon + [label], n)
        yield overflow
        dead = CounterMetricFamily(PREFIX + "dead_letters", "Rejected events handed to the dead-letter sink", labels=["monitor"])
        dead.add_metric(mon, health.dead_letters)
        yield dead
        stream_time = GaugeMetricFamily(PREFIX + "stream_time_seconds", "Largest event time seen (the watermark)", labels=["monitor"])
        stream_time.add_metric(mon, engine.stream_time if math.isfinite(engine.stream_time) else math.nan)
        yield stream_time
        if m._exporter is None:  # batches are timed by each worker, on its own /metrics
            yield self._processing_histogram(health)
        yield from self._source_families()

    def _source_families(self) -> Iterator[Metric]:
        m = self.monitor
        mon = [m.name]
        checkpointer = m._checkpointer
        if checkpointer is not None and checkpointer.last_saved is not None:
            age = GaugeMetricFamily(PREFIX + "checkpoint_age_seconds", "Seconds since the last checkpoint", labels=["monitor"])
            age.add_metric(mon, max(0.0, time.time() - checkpointer.last_saved))
            yield age
        # A Kafka sink counts its own failures (at send and the broker's answers after); for others, the
        # sends that raised, counted by the monitor.
        failed = getattr(m.dead_letter, "failed", None)
        lost = CounterMetricFamily(PREFIX + "dead_letter_failures", "Rejected events the dead-letter sink could not "
                                   "deliver (logged; after truncation to its max_record_bytes)", labels=["monitor"])
        lost.add_metric(mon, failed if isinstance(failed, int) else m._sink_failures)
        yield lost
        source = m._source
        if source is None:
            return
        if hasattr(source, "connected"):
            up = GaugeMetricFamily(PREFIX + "source_connected", "1 while the source reaches its broker", labels=["monitor"])
            up.add_metric(mon, 1.0 if source.connected else 0.0)
            yield up
        if callable(getattr(source, "lag", None)):
            lag = GaugeMetricFamily(PREFIX + "consumer_lag", "Messages behind the end of each input partition",
                                    labels=["monitor", "topic", "partition"])
            for (topic, partition), n in sorted(source.lag().items()):
                lag.add_metric(mon + [topic, str(partition)], n)
            yield lag

    def _processing_histogram(self, health) -> Metric:
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, PROCESSING_BUCKETS), "+Inf"), health.batch_buckets):
            cumulative += n
            buckets.append((bound, cumulative))
        hist = HistogramMetricFamily(PREFIX + "processing_seconds", "Time to process one batch of events", labels=["monitor"])
        hist.add_metric([self.monitor.name], buckets, health.batch_seconds)
        return hist


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # a user operator's get() returned something else: NaN, not a broken scrape
        return math.nan


def samples(registry: CollectorRegistry) -> list[Sample]:
    return [Sample(s.name, dict(s.labels), float(s.value)) for family in registry.collect() for s in family.samples]


CLIENT_TIMEOUT = 10.0
MAX_CONNECTIONS = 64


class MetricsServer:
    """``/metrics`` over HTTP(S) in a daemon thread, with optional basic auth.

    Each connection gets its own short-lived daemon thread (at most ``MAX_CONNECTIONS`` at once) and
    one request, and is closed ``timeout`` seconds after it was accepted whatever it is doing (TLS
    handshake, sending its request, reading the response), so no client can hold the endpoint.

    >>> from prometheus_client import CollectorRegistry
    >>> server = MetricsServer(CollectorRegistry(), host="127.0.0.1", port=0, timeout=5.0)
    >>> server.url.startswith("http://127.0.0.1:")
    True
    >>> server.close()
    """

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int, certfile: str | None = None,
                 keyfile: str | None = None, basic_auth: tuple[str, str] | None = None,
                 timeout: float = CLIENT_TIMEOUT) -> None:
        if not timeout > 0:
            raise RegistrationError(f"timeout={timeout!r}: give the seconds a /metrics client may take, e.g. timeout=10")
        context = _tls_context(certfile, keyfile) if certfile else None
        expected = None
        if basic_auth is not None:
            expected = "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
        self.httpd = _HTTPServer((host, port), registry=registry, context=context, expected_auth=expected, timeout=timeout)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if context else 'http'}://{host}:{self.port}/metrics"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="streammon-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _tls_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    def no_passphrase():
        raise RegistrationError(f"the TLS key {keyfile or certfile} is encrypted: give an unencrypted key "
                                "(e.g. openssl pkey -in KEY -out PLAIN_KEY), readable only by this user")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A callback, not None: OpenSSL would otherwise prompt on the terminal for an encrypted key.
        context.load_cert_chain(certfile, keyfile, password=no_passphrase)
    except OSError as exc:
        files = f"{certfile} and {keyfile}" if keyfile else certfile
        raise RegistrationError(f"cannot load the TLS certificate and key from {files}: {exc.strerror or exc}; "
                                "give a PEM certificate (chain) and its PEM private key") from exc
    return context


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS  # a burst of scrapes waits in the kernel, not in SYN retries

    def __init__(self, address, *, registry: CollectorRegistry, context: ssl.SSLContext | None,
                 expected_auth: str | None, timeout: float) -> None:
        self.registry, self.context, self.expected_auth, self.client_timeout = registry, context, expected_auth, timeout
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        # Full: drop the newcomer at once rather than queue it (or the accept loop) behind the slow ones.
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # A failed handshake or a client that went away is routine for a public port: no traceback on stderr.
        log.debug("/metrics connection from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def setup(self) -> None:
        timeout = self.server.client_timeout
        deadline = time.monotonic() + timeout
        self.request.settimeout(timeout)
        if self.server.context is not None:
            # Here, in this connection's thread: a handshake in the accept loop would stall every client.
            self.request = self.server.context.wrap_socket(self.request, server_side=True)
        self.connection = self.request
        raw = _DeadlineIO(self.request, deadline)
        self.rfile, self.wfile = io.BufferedReader(raw), raw

    def finish(self) -> None:
        super().finish()
        if self.server.context is not None:  # the TLS socket took over the descriptor the server would close
            self.request.close()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        expected = self.server.expected_auth
        if expected is not None and not hmac.compare_digest(self.headers.get("Authorization", ""), expected):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="streammon"')
            self.end_headers()
            return
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _DeadlineIO(io.RawIOBase):
    """A connection's reads and writes, each given only the time left before one deadline."""

    # A per-call socket timeout alone would let a client that sends a byte every few seconds live forever.
    def __init__(self, sock, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._arm()
        return self._sock.recv_into(buffer)

    def write(self, data) -> int:
        self._arm()
        self._sock.sendall(data)
        return len(data)

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the /metrics client ran out of time")
        self._sock.settimeout(left)
