"""The join store on its own: eviction past max_pending, compaction, time-outs, against a dict model."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streammon.join import DUPLICATE
from streammon.memory_store import MemoryJoinStore


class ReferenceStore:
    """The join rules of design section 5 in the plainest form: ordered dicts, one entry per id."""

    def __init__(self, feedback_ttl, prediction_ttl, max_pending):
        self.fttl, self.pttl, self.max = feedback_ttl, prediction_ttl, max_pending
        self.entries: OrderedDict[str, list] = OrderedDict()  # id -> [ts, pending?, prediction]; arrival order
        self.early: OrderedDict[str, tuple] = OrderedDict()
        self.evicted = [0, 0]

    def _insert(self, id, entry, now):
        if len(self.entries) >= self.max:  # timed-out entries go first, then the oldest
            for k in [k for k, e in self.entries.items() if e[0] < now - self.fttl]:
                del self.entries[k]
        if len(self.entries) >= self.max:
            _, oldest = self.entries.popitem(last=False)
            self.evicted[0] += oldest[1]
        self.entries[id] = entry

    def prediction(self, id, ts, pred, now):
        e = self.entries.get(id)
        if e is not None:
            if e[0] >= now - self.fttl:
                return DUPLICATE
            del self.entries[id]
        fb = self.early.pop(id, None)
        if fb is not None and fb[0] >= now - self.pttl:
            self._insert(id, [ts, False, None], now)
            return (ts, fb[0], fb[1], pred)
        self._insert(id, [ts, True, pred], now)
        return None

    def feedback(self, id, ts, label, now):
        e = self.entries.get(id)
        if e is not None:
            if e[0] < now - self.fttl:
                del self.entries[id]
            elif not e[1]:
                return DUPLICATE
            else:
                e[1] = False
                return (e[0], ts, label, e[2])
        fb = self.early.get(id)
        if fb is not None:
            if fb[0] >= now - self.pttl:
                return DUPLICATE
            del self.early[id]
        if len(self.early) >= self.max:
            for k in [k for k, f in self.early.items() if f[0] < now - self.pttl]:
                del self.early[k]
        if len(self.early) >= self.max:
            self.early.popitem(last=False)
            self.evicted[1] += 1
        self.early[id] = (ts, label)
        return None


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 30), st.integers(0, 100), st.integers(0, 1)), max_size=300)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(ops=ops, max_pending=st.integers(1, 40), sweep_every=st.integers(1, 50))
def test_store_matches_the_reference(ops, max_pending, sweep_every):
    store = MemoryJoinStore(feedback_ttl=40, prediction_ttl=15, max_pending=max_pending)
    ref = ReferenceStore(40, 15, max_pending)
    now = 0.0
    for step, (is_pred, key, ts, value) in enumerate(ops):
        now = max(now, float(ts))
        id = f"id{key}"
        if is_pred:
            got = store.add_prediction(id, float(ts), 0, value, 0.5, now)
            want = ref.prediction(id, float(ts), value, now)
            if isinstance(got, tuple):
                got = (got[0], got[1], got[3], got[4])
        else:
            got = store.add_feedback(id, float(ts), value, now)
            want = ref.feedback(id, float(ts), value, now)
            if isinstance(got, tuple):
                got = (got[0], got[1], got[3], got[4])
        assert got == want, step
        if step % sweep_every == 0:
            store.expire(now)  # sweeps must not change any answer
    assert store.counts.evicted_predictions == ref.evicted[0]
    assert store.counts.evicted_feedback == ref.evicted[1]
    store.expire(now)
    live_pending = sum(1 for e in ref.entries.values() if e[1] and e[0] >= now - 40)
    assert store.pending_predictions == live_pending
    assert store.pending_feedback == sum(1 for f in ref.early.values() if f[0] >= now - 15)


def test_compaction_keeps_every_pending_entry():
    store = MemoryJoinStore(feedback_ttl=1e9, prediction_ttl=1e9)
    # Many joins leave holes; compaction must keep the survivors and their columns.
    for i in range(20_000):
        store.add_prediction(f"p{i}", float(i), i % 7, i % 2, i / 20_000, now=float(i))
        if i % 10:
            pair = store.add_feedback(f"p{i}", float(i), 1, now=float(i))
            assert pair[0] == float(i) and pair[2] == i % 7 and pair[4] == i % 2
    assert store.pending_predictions == 2_000
    for i in range(0, 20_000, 10):
        pair = store.add_feedback(f"p{i}", float(20_000 + i), 0, now=20_000.0 + i)
        assert pair == (float(i), float(20_000 + i), i % 7, 0, i % 2, i / 20_000, f"p{i}")
    assert store.pending_predictions == 0


def test_score_maps_survive_the_join():
    store = MemoryJoinStore(feedback_ttl=100, prediction_ttl=100)
    store.add_prediction("a", 1.0, 0, "cat", {"cat": 0.7, "dog": 0.3}, now=1.0)
    assert store.add_feedback("a", 2.0, "dog", now=2.0)[5] == {"cat": 0.7, "dog": 0.3}


def test_without_remembering_joins_a_second_feedback_waits_as_early():
    store = MemoryJoinStore(feedback_ttl=100, prediction_ttl=100, remember_joined=False)
    store.add_prediction("a", 1.0, 0, 1, None, now=1.0)
    assert store.add_feedback("a", 2.0, 1, now=2.0) is not None
    assert store.add_feedback("a", 3.0, 1, now=3.0) is None
    assert store.pending_feedback == 1
