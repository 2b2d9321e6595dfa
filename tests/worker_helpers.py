"""Helpers for tests that run a worker process and read its /metrics."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from streammon.connectors.broker import _free_port as free_port  # noqa: F401 - re-exported for the tests


def scrape(port: int) -> dict:
    """{(sample name, sorted labels): value} from a worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; a worker not answering yet (OSError) or a missing sample is a 'not yet'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, StopIteration):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
