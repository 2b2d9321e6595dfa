"""Checkpoints: state and offsets saved together; a restart resumes exactly."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from river import metrics as river_metrics

import streammon as sm
from streammon import operators as ops
from streammon.connectors import MemorySource
from streammon.errors import CheckpointError


def build(**settings) -> sm.Monitor:
    """The 'app': rebuilt from code on every start, as a restarted worker would."""
    m = sm.Monitor("ck", windows=[sm.Cumulative(), sm.Sliding(60, 10)], segments=["version"], feedback_ttl=300, **settings)
    m.track(ops.Accuracy())
    m.track(ops.Quantiles([0.5], of="score"), name="score_q")
    m.track(river_metrics.F1(), name="river_f1")
    m.metric(lambda cm: cm.recall(1), stat=ops.ConfusionMatrix(), name="recall_1")  # a lambda: not picklable
    m.metric(lambda y_true, y_pred: float(y_true != y_pred), name="error_rate")
    return m


def stream(n=3000, seed=1):
    rng = np.random.default_rng(seed)
    events, pending = [], []
    for i in range(n):
        ts = 1000.0 + i
        events.append({"id": f"p{i}", "ts": ts, "prediction": int(rng.integers(0, 2)), "score": float(rng.random()),
                       "segment": {"version": f"v{i % 2}"}})
        if rng.random() < 0.9:
            pending.append((ts + float(rng.integers(1, 120)), f"p{i}", int(rng.integers(0, 2))))
        pending.sort()
        while pending and pending[0][0] <= ts:
            t, pid, y = pending.pop(0)
            events.append({"id": pid, "ts": t, "label": y})
    events.append(b"{broken")
    return events


def published(monitor):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in monitor.values()
            if not s.name.startswith(("streammon_processing_seconds", "streammon_checkpoint_age"))}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9, nan_ok=True), k


STORES = pytest.mark.parametrize("join_store", ["memory", "disk"])


@STORES
def test_a_restart_resumes_from_the_checkpoint_exactly(tmp_path, join_store):
    events = stream()
    reference = build()
    reference.replay(events)
    # A worker that stops part-way (as a crash after its last checkpoint would leave it)...
    first = build(batch_size=256)
    first.run(MemorySource(events), state_dir=str(tmp_path), join_store=join_store,
              until=lambda: first._engine.health.events[("predictions", "accepted")] > 1200)
    mid = published(first)
    assert mid != published(reference)
    # ...and a new process of the same app picks up from its snapshot.
    second = build(batch_size=256)
    second.run(MemorySource(events), state_dir=str(tmp_path), join_store=join_store)
    assert_same(published(second), published(reference))


@STORES
def test_events_after_the_last_checkpoint_are_read_again_not_lost(tmp_path, join_store):
    events = stream(800)
    reference = build()
    reference.replay(events)
    crashed = build(batch_size=100)
    # A long interval: only the initial and final checkpoints happen; simulate a crash before the final one
    # by stopping the loop from inside process() without letting run() finish its last checkpoint.
    original = crashed.pipeline.process
    calls = {"n": 0}

    class Crash(Exception):
        pass

    def process(engine, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Crash
        original(engine, batch)

    crashed.pipeline.process = process
    with pytest.raises(Crash):
        crashed.run(MemorySource(events), state_dir=str(tmp_path), checkpoint_interval=0.0, join_store=join_store)
    restarted = build(batch_size=100)
    restarted.run(MemorySource(events), state_dir=str(tmp_path), join_store=join_store)
    assert_same(published(restarted), published(reference))


def test_a_metric_added_to_the_app_starts_empty_and_the_others_keep_their_state(tmp_path):
    events = stream(2000)
    first_part = events[:1500]
    build().run(MemorySource(first_part), state_dir=str(tmp_path))
    changed = build()
    changed.track(ops.Count(of="prediction"), name="n", windows=[sm.Cumulative()])
    changed.run(MemorySource(events), state_dir=str(tmp_path))  # resumes after first_part
    reference = build()
    reference.replay(events)
    got, want = published(changed), published(reference)
    assert_same({k: v for k, v in got.items() if not k[0].startswith(("streammon_n", "streammon_metric_start"))}, want)
    later = sum(1 for e in events[len(first_part):] if isinstance(e, dict) and "prediction" in e)
    assert sum(v for (name, _), v in got.items() if name == "streammon_n") == later  # only what came after
    starts = {dict(labels)["metric"] for (name, labels) in got if name == "streammon_metric_start_time_seconds"}
    assert starts == {"n"}


def test_a_metric_removed_from_the_app_leaves_the_others_their_state(tmp_path):
    events = stream(1500)
    with_extra = build()
    with_extra.track(ops.Count(of="prediction"), name="n")
    with_extra.run(MemorySource(events[:1200]), state_dir=str(tmp_path))
    restarted = build()
    restarted.run(MemorySource(events), state_dir=str(tmp_path))
    reference = build()
    reference.replay(events)
    assert_same(published(restarted), published(reference))


@pytest.mark.parametrize("change, named", [
    (lambda m: m.track(ops.MAE(), name="accuracy"), "metric 'accuracy' is defined differently"),
    (lambda m: m.track(ops.Accuracy(), windows=[sm.Cumulative()]), "metric 'accuracy' is defined differently"),
])
def test_a_metric_whose_definition_changed_is_refused_by_name_with_the_fix(tmp_path, change, named):
    events = stream(200)
    original = sm.Monitor("ck", windows=[sm.Cumulative(), sm.Sliding(60, 10)], segments=["version"])
    original.track(ops.Accuracy())
    original.run(MemorySource(events), state_dir=str(tmp_path))
    changed = sm.Monitor("ck", windows=[sm.Cumulative(), sm.Sliding(60, 10)], segments=["version"])
    change(changed)
    with pytest.raises(CheckpointError, match=named + r".*give the new one another name"):
        changed.run(MemorySource(events), state_dir=str(tmp_path))


def test_changed_segments_are_refused_with_the_fix(tmp_path):
    events = stream(200)
    build().run(MemorySource(events), state_dir=str(tmp_path))
    other = sm.Monitor("ck", windows=[sm.Cumulative(), sm.Sliding(60, 10)], segments=["region"], feedback_ttl=300)
    other.track(ops.Accuracy())
    with pytest.raises(CheckpointError, match=r"segments \(region\) differ from the snapshot's \(version\)"):
        other.run(MemorySource(events), state_dir=str(tmp_path))


def test_checkpoint_age_is_published(tmp_path):
    m = build()
    m.run(MemorySource(stream(100)), state_dir=str(tmp_path), until=lambda: m._engine.stream_time > 1050)
    # run() has returned; the age of its last checkpoint is still published
    ages = [s.value for s in m.values() if s.name == "streammon_checkpoint_age_seconds"]
    assert len(ages) == 1 and 0 <= ages[0] < 60 and not math.isnan(ages[0])


def test_a_single_worker_and_a_scaled_out_group_refuse_each_others_state(tmp_path):
    from streammon.scaleout import PartitionWorker

    events = [{"id": "a", "ts": 1, "prediction": 1}]
    single = sm.Monitor("m", windows=[sm.Cumulative()])
    single.track(ops.Count(of="prediction"), name="n")
    single.run(MemorySource(events), state_dir=str(tmp_path / "single"))
    with pytest.raises(CheckpointError, match="single worker's snapshot"):
        PartitionWorker(single.pipeline, single.metrics, MemorySource([]), str(tmp_path / "single"))
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "partition-0.pkl").write_bytes(b"")
    again = sm.Monitor("m", windows=[sm.Cumulative()])
    again.track(ops.Count(of="prediction"), name="n")
    with pytest.raises(CheckpointError, match="scaled-out group's state"):
        again.run(MemorySource(events), state_dir=str(tmp_path / "group"))


def test_a_writer_killed_mid_write_leaves_nothing_that_survives_the_next_start(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f"snapshot.pkl.{dead}.tmp"
    orphan.write_bytes(b"half a snapshot")
    live = tmp_path / f"snapshot.pkl.{os.getppid()}.tmp"  # a live process: a restart never deletes its file
    live.write_bytes(b"")
    monitor = sm.Monitor("m", windows=[sm.Cumulative()])
    monitor.track(ops.Count(of="prediction"), name="n")
    monitor.run(MemorySource([{"id": "a", "ts": 1, "prediction": 1}]), state_dir=str(tmp_path))
    assert not orphan.exists() and live.exists()
    assert monitor.value("n") == 1


class _CommitChecking(MemorySource):
    """Checks, at every commit, that the snapshot on disk already holds those offsets."""

    def __init__(self, events, snapshot, slow_down):
        super().__init__(events)
        self.snapshot, self.slow_down = snapshot, slow_down
        self.commits, self.behind = 0, []

    def poll(self, max_records, timeout):
        self.slow_down()
        return super().poll(max_records, timeout)

    def commit(self, offsets):
        from streammon.snapshot import loads
        self.commits += 1
        on_disk = loads(self.snapshot.read_bytes(), build()._engine)["offsets"]
        if on_disk != dict(offsets):
            self.behind.append((dict(offsets), on_disk))
        super().commit(offsets)


@pytest.mark.slow
@pytest.mark.parametrize("background", [True, False])
def test_offsets_are_committed_only_once_their_snapshot_is_on_disk(tmp_path, background):
    import time
    events = stream()
    reference = build()
    reference.replay(events)
    source = _CommitChecking(events, tmp_path / "snapshot.pkl", lambda: time.sleep(0.002))
    worker = build(batch_size=64)
    # The snapshot file of the in-memory store; the disk store's commits are checked by the crash tests above
    worker.run(source, state_dir=str(tmp_path), checkpoint_interval=0.01, background_checkpoints=background,
               join_store="memory")
    assert source.commits > 5 and source.behind == []
    assert_same(published(worker), published(reference))
    again = build(batch_size=64)  # nothing left to read: the last snapshot holds everything
    again.run(MemorySource(events), state_dir=str(tmp_path), join_store="memory")
    assert_same(published(again), published(reference))


def test_a_background_snapshot_that_fails_stops_the_worker_with_the_reason(tmp_path):
    import shutil
    worker = build(batch_size=64)

    def gone():  # the state directory disappears under the running worker
        shutil.rmtree(tmp_path / "state", ignore_errors=True)
        return False
    with pytest.raises(CheckpointError, match=r"cannot write the snapshot .*No such file or directory"):
        worker.run(MemorySource(stream()), state_dir=str(tmp_path / "state"), checkpoint_interval=0.01, until=gone,
                   join_store="memory")


class _HoldsALock:
    """Copied by clone() (so it registers), but a lock cannot be pickled into a checkpoint."""

    def __init__(self) -> None:
        import threading
        self.lock, self.n = threading.Lock(), 0

    def update(self, x) -> None:
        self.n += 1

    def get(self) -> float:
        return float(self.n)

    def clone(self) -> _HoldsALock:
        return _HoldsALock()


def test_a_metric_a_checkpoint_cannot_save_is_refused_at_start_by_name(tmp_path):
    monitor = sm.Monitor("m", windows=[sm.Cumulative()])
    monitor.track(_HoldsALock(), of="prediction", name="locked")
    events = [{"id": "a", "ts": 1, "prediction": 1}]
    with pytest.raises(CheckpointError, match=r"metric 'locked' cannot be saved in a checkpoint .*TypeError"):
        monitor.run(MemorySource(events), state_dir=str(tmp_path))
    monitor.run(MemorySource(events))  # without a state directory it runs
    assert monitor.value("locked") == 1


@pytest.mark.parametrize("given, memory, disk", [(None, 10_000_000, 1_000_000_000), (5000, 5000, 5000)])
def test_max_pending_defaults_to_the_stores_own_bound_and_a_given_one_bounds_both(tmp_path, given, memory, disk):
    kw = {} if given is None else {"max_pending": given}
    in_memory = build(**kw)
    in_memory.replay(stream(10))
    assert in_memory._engine.store.max_pending == memory
    on_disk = build(**kw)
    on_disk.run(MemorySource(stream(10)), state_dir=str(tmp_path), join_store="disk")
    assert type(on_disk._engine.store).__name__ == "DiskJoinStore" and on_disk._engine.store.max_pending == disk
    again = build(**kw)  # restored: the app's setting, not the one of the day the state was written
    again.run(MemorySource(stream(10)), state_dir=str(tmp_path), join_store="disk")
    assert again._engine.store.max_pending == disk
