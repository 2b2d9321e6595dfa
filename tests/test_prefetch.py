"""Reading a source in a child process: same results, seek and commit forwarded, failures reported."""

from __future__ import annotations

import functools
import random

import pytest

import streammon as sm
from streammon import operators as ops
from streammon.connectors import MemorySource
from streammon.connectors.prefetch import PrefetchingSource
from streammon.errors import SourceError


def events(n: int = 3000, seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({"id": f"p{i}", "ts": 1000 + i + rng.uniform(-50, 50), "prediction": rng.randint(0, 1), "score": rng.random()})
        if rng.random() < 0.8:
            out.append({"id": f"p{i}", "ts": 1100 + i, "label": rng.randint(0, 1)})
    out.insert(17, b'{"id": 5}')  # one malformed
    return out


def build() -> sm.Monitor:
    monitor = sm.Monitor("pf", windows=[sm.Cumulative(), sm.Sliding(300, 30)], batch_size=256)
    monitor.track(ops.Accuracy())
    monitor.track(ops.Mean(of="score"), name="mean_score")
    return monitor


def published(monitor: sm.Monitor) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in monitor.values() if not s.name.startswith(("streammon_processing_seconds", "streammon_checkpoint_age"))}


def test_a_prefetched_source_gives_the_same_metrics_as_the_source_itself():
    stream = events()
    direct, prefetched = build(), build()
    direct.run(MemorySource(stream))
    prefetched.run(PrefetchingSource(functools.partial(MemorySource, stream), max_records=100))
    assert published(prefetched) == pytest.approx(published(direct), nan_ok=True)
    assert sum(v for (n, _), v in published(prefetched).items() if n == "streammon_events_total") == len(stream)


@pytest.mark.slow
def test_a_prefetched_worker_resumes_from_its_checkpoint_exactly_once(tmp_path):
    stream = events()
    whole = build()
    whole.run(MemorySource(stream))
    first = build()
    first.run(PrefetchingSource(functools.partial(MemorySource, stream), max_records=100), state_dir=str(tmp_path),
              until=lambda: first._engine.health.events[("predictions", "accepted")] > 1000)
    assert 0 < first._engine.health.events[("predictions", "accepted")] < 3000
    second = build()  # seek is forwarded to the child before it reads anything
    second.run(PrefetchingSource(functools.partial(MemorySource, stream), max_records=100), state_dir=str(tmp_path))
    assert published(second) == pytest.approx(published(whole), nan_ok=True)


def _broken_source():
    raise SourceError("topic(s) predictions not found on the broker")


def test_a_source_that_cannot_start_fails_here_with_its_reason():
    with pytest.raises(SourceError, match="did not start: SourceError: topic\\(s\\) predictions not found"):
        PrefetchingSource(_broken_source)


def test_a_pipe_reset_by_a_killed_parent_reads_as_the_parent_gone_not_as_a_failure():
    from streammon.connectors.prefetch import _ParentPipe

    class Reset:
        def send(self, *args):
            raise ConnectionResetError(104, "Connection reset by peer")

        recv = poll = send

    pipe = _ParentPipe(Reset())
    with pytest.raises(EOFError):
        pipe.recv()
    with pytest.raises(EOFError):
        pipe.poll(0.1)
    with pytest.raises(BrokenPipeError):
        pipe.send(("health",))
