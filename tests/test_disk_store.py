"""The disk-backed join store answers exactly as the in-memory one (itself checked against a dict model in
test_join.py and by the engine's oracle tests), batch by batch, through commits, reopenings and crashes:
after a crash it is as of its last commit, like the in-memory store restored from the same checkpoint. A worker
on either store, stopped or crashed and restarted, is checked in test_checkpoint.py."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streammon as sm
from streammon import operators as ops
from streammon.connectors import MemorySource
from streammon.disk_store import DiskJoinStore
from streammon.disk_table import time_key, time_key_ints
from streammon.memory_store import MemoryJoinStore

pytestmark = pytest.mark.slow

values = st.sampled_from([0, 1, True, False, "cat", 2.5, -1])
scores = st.one_of(st.none(), st.floats(0, 1), st.just(math.nan), st.just(1), st.just({"cat": 0.7, "dog": 0.3}))
events = st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.floats(0, 300), st.integers(0, 3), values, scores),
                  max_size=250)
# After each batch: 0 nothing, 1 commit, 2 commit and reopen, 3 crash (reopen without committing)
steps = st.lists(st.tuples(st.integers(1, 30), st.sampled_from([0, 0, 0, 1, 2, 3])), min_size=1, max_size=40)
store_settings = st.fixed_dictionaries({
    "feedback_ttl": st.sampled_from([5.0, 40.0, 1e9]), "prediction_ttl": st.sampled_from([3.0, 25.0, 1e9]),
    "max_pending": st.sampled_from([4, 30, 10**7]), "remember_joined": st.booleans()})


def comparable(joined) -> list[tuple]:
    return [tuple(None if isinstance(x, float) and math.isnan(x) else x for x in row) for row in zip(*joined)]


def state(store) -> tuple:
    return vars(store.counts), store.pending_predictions, store.pending_feedback


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(evs=events, plan=steps, kw=store_settings)
def test_the_disk_store_answers_as_the_memory_store_through_commits_and_crashes(evs, plan, kw, tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "join"
    memory, disk = MemoryJoinStore(**kw), DiskJoinStore(path, **kw)
    committed = pickle.dumps(memory)  # the memory store as of the disk store's last commit
    now, i = -math.inf, 0
    try:
        for size, action in plan:
            batch = evs[i:i + size]
            i += size
            if not batch:
                break
            nows = []
            for e in batch:
                now = max(now, e[2])
                nows.append(now)
            args = ([e[0] for e in batch], [f"id{e[1]}" for e in batch], [e[2] for e in batch], [e[3] for e in batch],
                    [e[4] for e in batch], [e[5] for e in batch], nows)
            assert comparable(disk.join(*args)) == comparable(memory.join(*args))
            memory.expire(now)
            disk.expire(now)
            assert state(disk) == state(memory)
            if action in (1, 2):
                disk.commit()
                committed = pickle.dumps(memory)
            if action in (2, 3):  # a crash loses what was not committed: both go back to the last commit
                disk.close()
                disk = DiskJoinStore(path, **kw)
                memory = pickle.loads(committed)
                assert state(disk) == state(memory)
    finally:
        disk.close()


def test_time_keys_sort_as_the_times():
    times = [-1e300, -5.5, -1.0, -0.0, 0.0, 1e-300, 1.0, 3.25, 1.7e9, 1e300]
    assert sorted(times, key=time_key) == times
    assert all(time_key(t) < time_key(u) for t, u in itertools.pairwise(times))
    # The batch form (numpy, what a commit writes) agrees with the scalar form
    batch = time_key_ints(times).astype(">u8").tobytes()
    assert [batch[i:i + 8] for i in range(0, len(batch), 8)] == [time_key(t) for t in times]


def build() -> sm.Monitor:
    monitor = sm.Monitor("disk", windows=[sm.Cumulative()], max_future_seconds=1e12)
    monitor.track(ops.Count(of="prediction"), name="n")
    return monitor


def stream(n: int) -> list[dict]:
    return [{"id": f"p{i}", "ts": 1000.0 + i, "prediction": i % 2} for i in range(n)]


def test_the_two_stores_refuse_each_others_state_directory(tmp_path):
    from streammon.errors import CheckpointError

    build().run(MemorySource(stream(50)), state_dir=str(tmp_path / "memory"), join_store="memory")
    with pytest.raises(CheckpointError, match="--join-store memory"):
        build().run(MemorySource(stream(50)), state_dir=str(tmp_path / "memory"), join_store="disk")
    build().run(MemorySource(stream(50)), state_dir=str(tmp_path / "disk"), join_store="disk")
    with pytest.raises(CheckpointError, match="--join-store disk"):
        build().run(MemorySource(stream(50)), state_dir=str(tmp_path / "disk"), join_store="memory")


def test_auto_keeps_the_join_on_disk_unless_the_directory_holds_an_in_memory_snapshot(tmp_path):
    from streammon.state_dir import StateDirectory

    fresh, old = tmp_path / "fresh", tmp_path / "old"
    build().run(MemorySource(stream(50)), state_dir=str(fresh))  # join_store="auto", the default
    assert StateDirectory(fresh).join_store().is_dir() and not StateDirectory(fresh).snapshot().exists()
    build().run(MemorySource(stream(50)), state_dir=str(old), join_store="memory")
    again = build()
    again.run(MemorySource(stream(80)), state_dir=str(old))  # auto: resumes the in-memory snapshot, as it was
    assert StateDirectory(old).snapshot().exists() and not StateDirectory(old).join_store().exists()
    assert again.value("n") == 80


def test_a_store_whose_options_files_lag_its_column_families_still_opens(tmp_path):
    # A worker killed on its first start, after RocksDB logged a new column family but before the OPTIONS
    # file naming it was written, left a store the next start could not open ("Column families not opened",
    # found by the backlog SIGKILL test). Without any OPTIONS file the store is in that state.
    kw = dict(feedback_ttl=10.0, prediction_ttl=10.0)
    store = DiskJoinStore(tmp_path / "join", **kw)
    store.join([True], ["a"], [1.0], [0], [1], [None], [1.0])
    store.commit()
    store.close()
    for options in (tmp_path / "join").glob("OPTIONS-*"):
        options.unlink()
    again = DiskJoinStore(tmp_path / "join", **kw)
    try:
        assert again.pending_predictions == 1
        assert again.join([False], ["a"], [2.0], [0], [1], [None], [2.0]).at == [0]
    finally:
        again.close()


_COMMITTER = """
import sys
from streammon.disk_store import DiskJoinStore
store = DiskJoinStore(sys.argv[1], feedback_ttl=1e12, prediction_ttl=1e12)
k, n = int(store.meta(b"k") or 0), int(sys.argv[2])
while True:
    ids = [f"{k}-{i}" for i in range(n)]
    store.join([True] * n, ids, [float(k)] * n, [0] * n, [1] * n, [0.5] * n, [float(k)] * n)
    print("committing", k, flush=True)
    store.commit({b"k": str(k + 1).encode()})
    print("committed", k, flush=True)
    k += 1
"""


def test_a_kill_during_a_commit_leaves_the_store_as_of_one_commit_or_the_next(tmp_path):
    # A commit is one synced RocksDB write batch: a worker killed while it writes finds, at restart, every
    # change of the commit or none, with the matching metadata (the offsets, in a worker).
    import random
    import signal
    import subprocess
    import sys
    import time

    path, n, mid_commit = tmp_path / "join", 60_000, 0
    for kill in range(6):
        child = subprocess.Popen([sys.executable, "-c", _COMMITTER, str(path), str(n)], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        lines = [child.stdout.readline() for _ in range(1 + kill % 2 * 2)]  # into the first or second commit
        assert lines[-1].startswith("committing"), lines
        time.sleep(random.uniform(0.0, 0.15))  # a commit of this size takes ~0.2-0.4 s here
        child.send_signal(signal.SIGKILL)
        child.wait()
        rest = child.stdout.read().split()
        mid_commit += not rest  # killed before "committed" was printed: inside the write, or just after it
        store = DiskJoinStore(path, feedback_ttl=1e12, prediction_ttl=1e12)
        try:
            k = int(store.meta(b"k") or 0)
            assert store.pending_predictions == k * n
            if k:  # the last commit's predictions are there, whole; the next one's are not, at all
                last = [f"{k - 1}-{i}" for i in range(0, n, 997)]
                got = store.join([False] * len(last), last, [0.0] * len(last), [0] * len(last), [1] * len(last),
                                 [None] * len(last), [float(k)] * len(last))
                assert len(got.at) == len(last)
            lost = [f"{k}-{i}" for i in range(0, n, 997)]
            got = store.join([False] * len(lost), lost, [0.0] * len(lost), [0] * len(lost), [1] * len(lost),
                             [None] * len(lost), [float(k)] * len(lost))
            assert got.at == []
        finally:
            store.close()
    assert mid_commit >= 1


def test_a_store_written_before_index_entries_carried_their_state_still_expires_right(tmp_path):
    from rocksdict import Options, Rdict

    path = tmp_path / "join"
    store = DiskJoinStore(path, feedback_ttl=10.0, prediction_ttl=10.0)
    for i, ts in enumerate([1.0, 2.0, 3.0]):
        store.add_prediction(f"p{i}", ts, 0, 1, 0.5, now=ts)
    assert store.add_feedback("p1", 3.0, 1, now=3.0) is not None  # joined: remembered, expires without counting
    store.add_prediction("p3", 30.0, 0, 1, 0.5, now=30.0)
    store.commit()
    store.close()
    opts = Options(raw_mode=True)
    raw = Rdict(str(path), opts, column_families={name: opts for name in Rdict.list_cf(str(path), opts)})
    index = raw.get_column_family("pred_time")
    for key in list(index.keys()):
        index[key] = b""  # as the first format wrote them
    del index
    raw.close()
    store = DiskJoinStore(path, feedback_ttl=10.0, prediction_ttl=10.0)
    try:
        store.add_prediction("p0", 31.0, 0, 1, 0.5, now=31.0)  # p0 again: its old entry is replaced, not expired twice
        store.expire(35.0)
        assert store.counts.expired_predictions == 2  # p0 (first one, at the re-send), p2; p1 was joined
        assert store.pending_predictions == 2  # p3 and the new p0
    finally:
        store.close()
