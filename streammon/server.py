"""``/metrics`` over HTTP(S): a small threaded server with TLS, basic auth and a per-connection deadline."""

from __future__ import annotations

import base64
import hmac
import io
import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .errors import RegistrationError

__all__ = ["MetricsServer"]

log = logging.getLogger("streammon")


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
        # http.server only writes to wfile and flushes it, as on its own unbuffered _SocketWriter: a raw
        # stream serves, though typeshed declares a buffered one.
        self.rfile, self.wfile = io.BufferedReader(raw), cast(io.BufferedIOBase, raw)

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
