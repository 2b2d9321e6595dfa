"""A keyed table in RocksDB with a time index and an arrival index, its changes held until a commit.

The building block of :class:`streammon.disk_store.DiskJoinStore`: expiry reads the time index from
the oldest entry up to the horizon (O(expired)), eviction reads the arrival index from the oldest.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

__all__ = ["IndexedTable", "id_hash", "time_key", "encode", "decode"]

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder().decode
_pack_d, _pack_q = struct.Struct(">d").pack, struct.Struct(">Q").pack
_SIGN = 1 << 63


def id_hash(id: str) -> bytes:
    return hashlib.blake2b(id.encode(), digest_size=16).digest()


def time_key(ts: float) -> bytes:
    """8 bytes whose byte order is the order of the floats (negatives flipped, positives' sign bit set)."""
    (bits,) = struct.unpack(">Q", _pack_d(ts))
    return _pack_q(bits ^ 0xFFFFFFFFFFFFFFFF if bits & _SIGN else bits | _SIGN)


class IndexedTable:
    """One keyed table with a time index (expiry) and an arrival index (eviction), changes held until commit.

    A record is a list ``[ts, seq, *payload]``. ``get`` sees the changes since the last commit first.
    """

    @staticmethod
    def columns(name: str) -> tuple[str, str, str]:
        """The column families of a table: its records, its time index, its arrival index."""
        return name, name + "_time", name + "_seq"

    def __init__(self, db: Any, name: str) -> None:
        self.main, self.by_time, self.by_seq = (db.get_column_family(n) for n in self.columns(name))
        self.handles = [db.get_column_family_handle(n) for n in self.columns(name)]
        self.overlay: dict[bytes, list | None] = {}  # id hash -> record, or None once deleted
        self.stale: list[tuple[bytes, bytes]] = []  # (time key, seq key) of records deleted since the commit
        self.heap: list[tuple[float, int, bytes]] = []  # (ts, seq, hash) of records created since the commit
        self.arrivals: deque[tuple[int, bytes]] = deque()  # (seq, hash) created since the commit, in order
        self.time_floor = b""  # time keys below it in the store were handled (deleted at the next commit)
        self.seq_floor = b""
        self.count = 0
        self.next_seq = 0
        self.committed_seq = 0  # records numbered from here on were created since the last commit

    def prefetch(self, hashes: list[bytes]) -> dict[bytes, list | None]:
        missing = [h for h in hashes if h not in self.overlay]
        if not missing:
            return {}
        return {h: None if raw is None else decode(raw) for h, raw in zip(missing, self.main.get(missing))}

    def get(self, h: bytes, fetched: Mapping[bytes, list | None]) -> list | None:
        if h in self.overlay:
            return self.overlay[h]
        if h in fetched:
            return fetched[h]
        raw = self.main.get(h)
        return None if raw is None else decode(raw)

    def put_new(self, h: bytes, ts: float, payload: list) -> list:
        seq = self.next_seq
        self.next_seq += 1
        record = [ts, seq, *payload]
        self.overlay[h] = record
        heapq.heappush(self.heap, (ts, seq, h))
        self.arrivals.append((seq, h))
        self.count += 1
        return record

    def update(self, h: bytes, record: list) -> None:
        self.overlay[h] = record

    def delete(self, h: bytes, record: list) -> None:
        self.overlay[h] = None
        self.stale.append((time_key(record[0]) + h, _pack_q(record[1]) + h))
        self.count -= 1

    def expired(self, horizon: float, fetched: Mapping[bytes, list | None]) -> Iterator[tuple[bytes, list]]:
        """Every live record with ts < ``horizon`` (the caller deletes each), oldest first: O(expired)."""
        bound = time_key(horizon)
        it = self.by_time.iter()
        it.seek(self.time_floor)
        while it.valid():
            key = it.key()
            if key >= bound:
                break
            self.time_floor = key + b"\x00"
            h = key[8:]
            record = self.get(h, fetched)
            # A record created since the commit is the heap's, even if it has this time and id.
            if record is not None and record[1] < self.committed_seq and time_key(record[0]) == key[:8]:
                yield h, record
            it.next()
        heap = self.heap
        while heap and heap[0][0] < horizon:
            _, seq, h = heapq.heappop(heap)
            record = self.overlay.get(h)
            if record is not None and record[1] == seq:
                yield h, record

    def oldest(self, fetched: Mapping[bytes, list | None]) -> tuple[bytes, list] | None:
        """The live record that arrived first."""
        it = self.by_seq.iter()
        it.seek(self.seq_floor)
        while it.valid():
            key = it.key()
            self.seq_floor = key + b"\x00"
            h = key[8:]
            record = self.get(h, fetched)
            if record is not None and _pack_q(record[1]) == key[:8]:
                return h, record
            it.next()
        while self.arrivals:
            seq, h = self.arrivals.popleft()
            record = self.overlay.get(h)
            if record is not None and record[1] == seq:
                return h, record
        return None

    def write(self, batch: Any) -> None:
        main, by_time, by_seq = self.handles
        for time_k, seq_k in self.stale:
            batch.delete(time_k, by_time)
            batch.delete(seq_k, by_seq)
        for h, record in self.overlay.items():
            if record is None:
                batch.delete(h, main)
            else:
                batch.put(h, encode(record), main)
                if record[1] >= self.committed_seq:  # created since the commit: an updated one is indexed already
                    batch.put(time_key(record[0]) + h, b"", by_time)
                    batch.put(_pack_q(record[1]) + h, b"", by_seq)

    def committed(self) -> None:
        self.committed_seq = self.next_seq
        self.overlay.clear()
        self.stale.clear()
        self.arrivals.clear()
        # Records created since the last commit are in the time index now, except those below the
        # floor, which an expiry sweep of the store would no longer reach: they stay in the heap.
        floor = self.time_floor
        self.heap = [e for e in self.heap if time_key(e[0]) + e[2] < floor]
        heapq.heapify(self.heap)
