"""/metrics under hostile clients: idle and slow connections, TLS, basic auth from the command line.

No assert here is on speed: a scrape must *complete* while an idle connection is still open (the
idle timeout is set far longer than any scrape needs), and a slow client must be *dropped* while it
keeps trickling bytes, which only a deadline on the whole connection can do.
"""

from __future__ import annotations

import base64
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import streammon as sm
from streammon import operators as ops
from streammon.cli import main
from streammon.server import MAX_CONNECTIONS
from worker_helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "examples" / "taxi_app.py")
EVENTS = [{"id": f"e{i}", "ts": 1000 + i, "prediction": i % 2} for i in range(20)] + [
    {"id": f"e{i}", "ts": 1010 + i, "label": 1} for i in range(20)]


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate and its key, as tests/test_exporter.py makes them."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture()
def monitor():
    m = sm.Monitor("guarded", windows=[sm.Cumulative()])
    m.track(ops.Accuracy())
    m.replay(EVENTS)
    yield m
    m.close()


def client_context(cert: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    return context


def scrape(url: str, *, context=None, auth=None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return response.status, response.read().decode()


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither closed nor answered the connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def dropped_by_server(sock: socket.socket, wait: float = 15.0) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def serve(monitor, scheme: str, tls, **options):
    if scheme == "https":
        server = monitor.serve(0, certfile=tls[0], keyfile=tls[1], **options)
        return server, client_context(tls[0])
    return monitor.serve(0, **options), None


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_idle_and_half_sent_connections_do_not_block_other_scrapes(monitor, tls, scheme):
    server, context = serve(monitor, scheme, tls, timeout=30)
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    half = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    if scheme == "http":
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the blank line that ends it never comes
    else:
        half.sendall(b"\x16\x03\x01\x02\x00\x01")  # the first bytes of a TLS ClientHello, and no more
    with idle, half:
        for _ in range(5):
            status, body = scrape(server.url, context=context)
            assert status == 200 and "streammon_accuracy{" in body
        assert still_open(idle) and still_open(half)  # the scrapes did not wait for the server to drop them


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_idle_connection_is_dropped_after_the_timeout(monitor, tls, scheme):
    server, _ = serve(monitor, scheme, tls, timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle:
        assert dropped_by_server(idle)


@pytest.mark.slow
def test_a_client_trickling_its_request_is_dropped_though_it_never_pauses_long(monitor):
    server = monitor.serve(0, timeout=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        dropped = False
        for _ in range(300):  # 30 s of one byte per 0.1 s: each read is quick, the request never ends
            try:
                slow.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
            readable, _, _ = select.select([slow], [], [], 0.1)
            if readable:
                dropped = dropped_by_server(slow)
                break
        assert dropped
    assert scrape(server.url)[0] == 200


def test_connections_past_the_cap_are_closed_and_the_server_recovers(monitor):
    server = monitor.serve(0, timeout=30)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        wait_for(lambda: _refused(server.url), 30, "a connection past the cap to be closed at once")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: scrape(server.url)[0] == 200, 30, "a scrape once the held connections are gone")


def _refused(url: str) -> bool:
    try:
        scrape(url)
    except (urllib.error.URLError, ConnectionError) as exc:  # closed without an answer, not timed out
        return not isinstance(getattr(exc, "reason", exc), TimeoutError)
    return False


def test_a_timeout_that_is_not_positive_is_refused(monitor):
    with pytest.raises(sm.RegistrationError, match="timeout=0"):
        monitor.serve(0, timeout=0)


# -- the command line -------------------------------------------------------------------------
@pytest.fixture()
def auth_file(tmp_path) -> str:
    path = tmp_path / "metrics-auth"
    path.write_text("prom:s3cr:et\n")  # a password may hold a colon; the user may not
    path.chmod(0o600)
    return str(path)


@pytest.fixture()
def events_file(tmp_path) -> str:
    path = tmp_path / "events.jsonl"
    sm.connectors.write_events(path, EVENTS)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "export"])
def test_the_command_line_serves_tls_with_basic_auth_from_a_file(command, tls, auth_file, events_file, tmp_path):
    if command == "run":
        argv = ["run", APP, "--source", events_file]
    else:
        argv = ["export", "tests/kafka_app.py:monitor", "--state-dir", str(tmp_path)]
    argv += ["--metrics-port", "0", "--tls-cert", tls[0], "--tls-key", tls[1], "--basic-auth-file", auth_file]
    proc = subprocess.Popen([sys.executable, "-m", "streammon", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"(https://127\.0\.0\.1:\d+/metrics)", proc.stdout.readline()).group(1)
        context = client_context(tls[0])
        for auth in (None, ("prom", "wrong"), ("prom", "s3cr")):
            with pytest.raises(urllib.error.HTTPError) as err:
                scrape(url, context=context, auth=auth)
            assert err.value.code == 401
        status, body = scrape(url, context=context, auth=("prom", "s3cr:et"))
        assert status == 200 and "streammon_" in body
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "s3cr" not in err


@pytest.mark.parametrize("content", ["", "prom\n", "prom:\n", ":s3cret\n", "prom:a\nroot:b\n", b"prom:\xff\xfe\n"])
@pytest.mark.parametrize("command", ["run", "export"])
def test_a_garbled_auth_file_is_a_usage_error_that_shows_the_fix(capsys, tmp_path, events_file, command, content):
    path = tmp_path / "auth"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    path.chmod(0o600)
    code = main([*_command(command, events_file, tmp_path), "--basic-auth-file", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--basic-auth-file {path}" in err and "one line user:password" in err and f"chmod 600 {path}" in err
    assert "root:b" not in err and "s3cret" not in err  # the content is never echoed


def test_a_missing_auth_file_is_a_usage_error(capsys, tmp_path, events_file):
    code = main([*_command("run", events_file, tmp_path), "--basic-auth-file", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "user:password" in err


@pytest.mark.slow
def test_an_auth_file_other_users_can_read_is_served_with_a_warning(capsys, tmp_path, events_file, auth_file):
    argv = [*_command("run", events_file, tmp_path), "--exit-when-done", "--basic-auth-file", auth_file]
    assert main(argv) == 0
    assert "readable by other users" not in capsys.readouterr().err
    Path(auth_file).chmod(0o644)
    assert main(argv) == 0
    assert f"readable by other users (mode 644): chmod 600 {auth_file}" in capsys.readouterr().err


def test_a_certificate_or_key_that_cannot_be_loaded_is_a_usage_error(capsys, tmp_path, events_file, tls):
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(["openssl", "pkey", "-in", tls[1], "-out", str(encrypted), "-aes256", "-passout", "pass:x"],
                   check=True, capture_output=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (["--tls-cert", tls[0], "--tls-key", str(tmp_path / "nowhere.pem")], "No such file or directory"),
        (["--tls-cert", str(garbage), "--tls-key", tls[1]], "give a PEM certificate (chain) and its PEM private key"),
        (["--tls-cert", tls[0], "--tls-key", str(encrypted)], "is encrypted: give an unencrypted key"),
        (["--tls-cert", tls[0]], "give a PEM certificate (chain) and its PEM private key"),  # no key in the file
        (["--tls-key", tls[1]], "--tls-key needs --tls-cert FILE"),
    ]
    for flags, message in cases:
        assert main([*_command("run", events_file, tmp_path), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert "streammon run: error:" in err and message in err, (flags, err)


def _command(command: str, events_file: str, tmp_path) -> list[str]:
    if command == "run":
        return ["run", APP, "--source", events_file, "--metrics-port", "0"]
    return ["export", "tests/kafka_app.py:monitor", "--state-dir", str(tmp_path), "--metrics-port", "0"]
