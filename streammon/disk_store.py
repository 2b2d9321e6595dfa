"""A disk-backed join store: RocksDB (through ``rocksdict``) per state, durable in O(changes).

The same :class:`~streammon.join.JoinStore` semantics as :class:`~streammon.memory_store.MemoryJoinStore`
(the oracle tests run on both), with state on disk and memory bounded by RocksDB's block cache plus
the changes since the last commit. Layout, one column family each, keys are bytes:

- ``pred``: id hash (16 bytes) -> a pending prediction or a joined id kept to catch duplicate feedback
- ``pred_time``: event time (8 bytes, order-preserving) + id hash: expiry reads only what expired
- ``pred_seq``: arrival number (8 bytes) + id hash: eviction past ``max_pending`` takes the oldest
- ``early``, ``early_time``, ``early_seq``: the same for feedback waiting for its prediction
- ``meta``: counters, and whatever the caller commits with them (the engine's snapshot, offsets)

Ids are kept as 128-bit BLAKE2b hashes: two of 7e8 live ids collide with probability about 1e-21.
Changes are held in memory (an overlay) and written in one atomic, synced write batch by
:meth:`DiskJoinStore.commit`, together with the caller's metadata: after a crash the store is
exactly as of the last commit, with the offsets that reflect it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .disk_table import IndexedTable, decode, encode, id_hashes
from .errors import CheckpointError
from .join import JoinCounts, Joined, OneEventAtATime, as_stored
from .state_dir import engine_storage_error

__all__ = ["DiskJoinStore", "CACHE_BYTES"]

CACHE_BYTES = 256 << 20  # RocksDB block cache per store
# A week of feedback for 1e8 predictions a day is 7e8 entries; the cap is a safety net for the disk (~100 GB).
DEFAULT_MAX_PENDING = 1_000_000_000
WRITE_BUFFER_BYTES = 128 << 20  # every column family's memtables together
WAL_BYTES = 64 << 20  # bounds what a restart replays
_PENDING, _JOINED = 1, 2
_FORMAT = 1
_META_COUNTERS = b"streammon.counters"


class DiskJoinStore(OneEventAtATime):
    """The join's state in RocksDB at ``path``, durable at each :meth:`commit` (see the module docstring).

    ``cache_bytes`` bounds the block cache; what else it holds in memory is the changes since the
    last commit. Settings as :class:`~streammon.memory_store.MemoryJoinStore`'s.
    """

    DEFAULT_MAX_PENDING = DEFAULT_MAX_PENDING

    def __init__(self, path: str | os.PathLike[str], *, feedback_ttl: float, prediction_ttl: float,
                 max_pending: int = DEFAULT_MAX_PENDING, remember_joined: bool = True, cache_bytes: int = CACHE_BYTES) -> None:
        from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, Options, Rdict

        self.path = Path(path)
        self.feedback_ttl, self.prediction_ttl = feedback_ttl, prediction_ttl
        self.max_pending, self.remember_joined = max_pending, remember_joined
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(cache_bytes))
        table.set_bloom_filter(10, False)
        # Filters and indexes live in the cache too, so memory is bounded by the cache rather than growing
        # with the entries on disk; memtables share one budget, and the write-ahead log is capped, which
        # bounds the replay at a restart. Nothing but each file's top-level index is pinned: pinning level
        # 0's blocks held the whole cache pinned, above its capacity, and grew with the data (1e8 entries:
        # 317 MiB pinned of a 256 MiB cache); unpinned, 14.6 against 16.0 us per event (1e7, 32 MiB cache).
        table.set_cache_index_and_filter_blocks(True)
        # Partitioned: a lookup reads one 4 KiB slice of a file's index and filter, not all of it, so a cache
        # far smaller than the filters (~1.2 bytes per entry) still serves them (1e7 entries, 32 MiB cache:
        # 13.7 against 17.1 us per event, side by side).
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_metadata_block_size(4096)
        table.set_pin_top_level_index_and_filter(True)
        table.set_format_version(5)
        opts.set_block_based_table_factory(table)
        opts.set_db_write_buffer_size(WRITE_BUFFER_BYTES)
        opts.set_max_total_wal_size(WAL_BYTES)
        # Most lookups miss (a new prediction's id): a bloom filter on the memtable answers those without a search.
        opts.set_memtable_prefix_bloom_ratio(0.1)
        opts.set_memtable_whole_key_filtering(True)
        try:
            # Every column family named at open and created there if missing: RocksDB creates them in one
            # step, so a worker killed on its first start never leaves a store that cannot be opened.
            opts.create_missing_column_families(True)
            names = [*IndexedTable.columns("pred"), *IndexedTable.columns("early"), "meta"]
            self.db = Rdict(str(self.path), opts, column_families={name: opts for name in names})
            self._families = [self.db.get_column_family(name) for name in names]
        except Exception as exc:
            raise engine_storage_error("open the join store at", self.path, exc) from exc
        self._pred = IndexedTable(self.db, "pred", tag_at=3)  # [ts, seq, code, state, score, prediction]
        self._early = IndexedTable(self.db, "early")
        self._meta = self.db.get_column_family("meta")
        self._meta_handle = self.db.get_column_family_handle("meta")
        self._closed_early: int | None = None
        self.counts = JoinCounts()
        self._pending = 0
        self._load_counters()

    # -- persistence ------------------------------------------------------------------------
    def _load_counters(self) -> None:
        raw = self._meta.get(_META_COUNTERS)
        if raw is None:
            return
        saved = decode(raw)
        if saved.get("format") != _FORMAT:
            raise CheckpointError(f"the join store at {self.path} has format {saved.get('format')}, not {_FORMAT}; "
                                  f"move the state directory away to start afresh")
        self.counts = JoinCounts(**saved["counts"])
        self._pending = saved["pending"]
        for table, name in ((self._pred, "pred"), (self._early, "early")):
            table.count, table.next_seq = saved[name]
            table.committed_seq = table.next_seq

    def commit(self, meta: Mapping[bytes, bytes] = {}) -> None:
        """Write every change since the last commit and ``meta`` in one atomic, synced write batch."""
        from rocksdict import WriteBatch, WriteOptions

        batch = WriteBatch(raw_mode=True)
        self._pred.write(batch)
        self._early.write(batch)
        counters = {"format": _FORMAT, "counts": vars(self.counts),
                    "pending": self._pending, "pred": [self._pred.count, self._pred.next_seq],
                    "early": [self._early.count, self._early.next_seq]}
        batch.put(_META_COUNTERS, encode(counters), self._meta_handle)
        for key, value in meta.items():
            batch.put(key, value, self._meta_handle)
        options = WriteOptions()
        options.sync = True
        try:
            self.db.write(batch, options)
        except Exception as exc:
            raise engine_storage_error("write the join store at", self.path, exc) from exc
        self._pred.committed()
        self._early.committed()

    def meta(self, key: bytes) -> bytes | None:
        """What the last :meth:`commit` wrote under ``key``."""
        return self._meta.get(key)

    def memory_usage(self) -> dict[str, int]:
        """Bytes RocksDB holds in memory, by what for (its own estimates): the block cache (of it, the pinned
        part), the index and filter blocks held outside it, and the memtables; all column families."""
        def total(prop: str) -> int:
            return sum(cf.property_int_value(prop) or 0 for cf in self._families)
        return {"block_cache": self.db.property_int_value("rocksdb.block-cache-usage") or 0,
                "block_cache_pinned": self.db.property_int_value("rocksdb.block-cache-pinned-usage") or 0,
                "table_readers": total("rocksdb.estimate-table-readers-mem"),
                "memtables": total("rocksdb.cur-size-all-mem-tables")}

    def close(self) -> None:
        """Release the files; the counters stay readable (a stopped worker's /metrics still shows them)."""
        if self._closed_early is not None:
            return
        self._closed_early = self._early.count
        # The column families' handles keep RocksDB (and its lock) open until they are gone too.
        del self._pred, self._early, self._meta, self._meta_handle, self._families
        self.db.close()

    # -- the JoinStore protocol ---------------------------------------------------------------
    def configure(self, *, feedback_ttl: float, prediction_ttl: float, max_pending: int) -> None:
        self.feedback_ttl, self.prediction_ttl, self.max_pending = feedback_ttl, prediction_ttl, max_pending

    def snapshot(self) -> dict[str, Any]:
        return {"disk_store": str(self.path)}  # the data is in the store itself, committed with the snapshot

    def restore(self, saved: Any) -> None:
        pass  # opened at its path: it is already as of its last commit

    @property
    def pending_predictions(self) -> int:
        return self._pending

    @property
    def pending_feedback(self) -> int:
        return self._early.count if self._closed_early is None else self._closed_early

    def join(self, is_prediction: Sequence[bool], ids: Sequence[str], times: Sequence[float], codes: Sequence[int],
             values: Sequence[Any], scores: Sequence[Any], nows: Sequence[float]) -> Joined:
        """As :meth:`MemoryJoinStore.join`: the batch's events in order, the store read once per batch."""
        if self._closed_early is not None:
            raise CheckpointError(f"the join store at {self.path} was closed when its run ended; build the app's "
                                  f"monitor anew and run it with the same state directory: it resumes from the store")
        out = Joined([], [], [], [], [], [], [], [])
        accepted, at, pred_ts, fb_ts, pair_code, y_true, y_pred, pair_score = out
        hashes = id_hashes(list(ids))
        pred, early = self._pred, self._early
        fetched_pred = pred.prefetch(hashes)
        fetched_early = early.prefetch(hashes) if early.count else {}
        counts = self.counts
        fttl, pttl, remember = self.feedback_ttl, self.prediction_ttl, self.remember_joined
        for i, is_pred in enumerate(is_prediction):
            h, ts, now = hashes[i], times[i], nows[i]
            record = pred.get(h, fetched_pred)
            if is_pred:
                if record is not None:
                    if record[0] >= now - fttl:
                        counts.duplicate_predictions += 1
                        accepted.append(False)
                        continue
                    self._expire_prediction(h, record)
                accepted.append(True)
                fb = early.get(h, fetched_early) if early.count else None
                if fb is not None:
                    early.delete(h, fb[0], fb[1])
                    if fb[0] >= now - pttl:
                        counts.joined += 1
                        if remember:
                            self._ensure_capacity(now)
                            pred.put_new(h, ts, [codes[i], _JOINED, None, None])
                        at.append(i)
                        pred_ts.append(ts)
                        fb_ts.append(fb[0])
                        pair_code.append(codes[i])
                        y_true.append(fb[2])
                        y_pred.append(values[i])
                        pair_score.append(scores[i])
                        continue
                    counts.expired_feedback += 1
                self._ensure_capacity(now)
                pred.put_new(h, ts, [codes[i], _PENDING, as_stored(scores[i]), values[i]])
                self._pending += 1
                continue
            if record is not None:
                if record[0] < now - fttl:
                    self._expire_prediction(h, record)
                elif record[3] == _JOINED:
                    counts.duplicate_feedback += 1
                    accepted.append(False)
                    continue
                else:
                    accepted.append(True)
                    counts.joined += 1
                    self._pending -= 1
                    at.append(i)
                    pred_ts.append(record[0])
                    fb_ts.append(ts)
                    y_true.append(values[i])
                    pair_code.append(record[2])
                    y_pred.append(record[5])
                    pair_score.append(record[4])
                    if remember:
                        pred.update(h, [record[0], record[1], record[2], _JOINED, None, None])
                    else:
                        pred.delete(h, record[0], record[1])
                    continue
            accepted.append(self._wait_early(h, ts, values[i], now, fetched_early))
        return out

    def _ensure_capacity(self, now: float) -> None:
        # Timed-out entries leave before a live one is evicted, as in the memory store.
        if self._pred.count >= self.max_pending:
            self._expire_predictions(now)
            if self._pred.count >= self.max_pending:
                oldest = self._pred.oldest()
                if oldest is not None:
                    h, record = oldest
                    if record[3] == _PENDING:
                        self.counts.evicted_predictions += 1
                        self._pending -= 1
                    self._pred.delete(h, record[0], record[1])

    def _wait_early(self, h: bytes, ts: float, label: Any, now: float, fetched: Mapping[bytes, list | None]) -> bool:
        early = self._early
        waiting = early.get(h, fetched)
        if waiting is not None:
            if waiting[0] >= now - self.prediction_ttl:
                self.counts.duplicate_feedback += 1
                return False
            early.delete(h, waiting[0], waiting[1])
            self.counts.expired_feedback += 1
        if early.count >= self.max_pending:
            self._expire_feedback(now)
            if early.count >= self.max_pending:
                oldest = early.oldest()
                if oldest is not None:
                    early.delete(oldest[0], oldest[1][0], oldest[1][1])
                    self.counts.evicted_feedback += 1
        early.put_new(h, ts, [label])
        return True

    def _expire_prediction(self, h: bytes, record: list) -> None:
        self._expired_prediction(h, record[0], record[1], record[3])

    def _expired_prediction(self, h: bytes, ts: float, seq: int, state: int) -> None:
        if state == _PENDING:
            self.counts.expired_predictions += 1
            self._pending -= 1
        self._pred.delete(h, ts, seq)

    def expire(self, now: float) -> None:
        self._expire_predictions(now)
        self._expire_feedback(now)

    def _expire_predictions(self, now: float) -> None:
        states = self._pred.expire(now - self.feedback_ttl)
        if states:
            pending = states.count(_PENDING)
            self.counts.expired_predictions += pending
            self._pending -= pending

    def _expire_feedback(self, now: float) -> None:
        self.counts.expired_feedback += len(self._early.expire(now - self.prediction_ttl))
