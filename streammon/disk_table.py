"""A keyed table in RocksDB with a time index and an arrival index, its changes held until a commit.

The building block of :class:`streammon.disk_store.DiskJoinStore`: expiry reads the time index from
the oldest entry up to the horizon (O(expired)), eviction reads the arrival index from the oldest.
A time index entry carries the record's arrival number and tag (its state), so expiry never reads
the records themselves.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

__all__ = ["IndexedTable", "id_hashes", "time_key", "time_key_ints", "encode", "decode"]

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder().decode
_pack_d, _pack_q = struct.Struct(">d").pack, struct.Struct(">Q").pack
_PAST_EVERY_KEY = b"\xff" * 32  # sorts after every time key (8 + 16 bytes)
_index_value = struct.Struct(">Qb")
# The rows a commit writes to the indexes, built in numpy: (time key, hash) -> (seq, tag); (seq, hash) -> b"".
_INDEX_ROW = np.dtype([("time", ">u8"), ("hash", "V16"), ("seq", ">u8"), ("tag", "i1")])
_TIME_KEY = np.dtype([("time", ">u8"), ("hash", "V16")])
_INDEX_VALUE = np.dtype([("seq", ">u8"), ("tag", "i1")])
_SEQ_KEY = np.dtype([("seq", ">u8"), ("hash", "V16")])
_SIGN = 1 << 63


def id_hashes(ids: list[str]) -> list[bytes]:
    blake2b = hashlib.blake2b
    return [blake2b(i.encode(), digest_size=16).digest() for i in ids]


def time_key(ts: float) -> bytes:
    """8 bytes whose byte order is the order of the floats (negatives flipped, positives' sign bit set)."""
    (bits,) = struct.unpack(">Q", _pack_d(ts))
    return _pack_q(bits ^ 0xFFFFFFFFFFFFFFFF if bits & _SIGN else bits | _SIGN)


def time_key_ints(ts: list[float]) -> np.ndarray:
    """:func:`time_key` of many at once, as unsigned integers (``>u8`` bytes of each are its key)."""
    bits = np.asarray(ts, dtype=np.float64).view(np.uint64)
    return np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(_SIGN))


class IndexedTable:
    """One keyed table with a time index (expiry) and an arrival index (eviction), changes held until commit.

    A record is a list ``[ts, seq, *payload]``; ``record[tag_at]`` (a small int, e.g. a state) is kept in
    the time index too, so expiry knows it without reading the record. ``get`` sees the changes since
    the last commit first.
    """

    @staticmethod
    def columns(name: str) -> tuple[str, str, str]:
        """The column families of a table: its records, its time index, its arrival index."""
        return name, name + "_time", name + "_seq"

    def __init__(self, db: Any, name: str, *, tag_at: int | None = None) -> None:
        self.main, self.by_time, self.by_seq = (db.get_column_family(n) for n in self.columns(name))
        self.handles = [db.get_column_family_handle(n) for n in self.columns(name)]
        self.tag_at = tag_at
        self.overlay: dict[bytes, list | None] = {}  # id hash -> record, or None once deleted
        self.stale: list[tuple[bytes, bytes]] = []  # (time key, seq key) of records deleted since the commit
        self.created: list[tuple[float, int, bytes]] = []  # (ts, seq, hash) created since the commit, in order
        self.created_min = float("inf")  # no record in `created` is older
        self.created_from = 0  # entries of `created` before this one were evicted
        self.time_floor = b""  # time keys below it in the store were handled (deleted at the next commit)
        self.time_next: bytes | None = None  # no committed time key in [time_floor, time_next); None: not known
        self.seq_floor = b""
        self._seq_iter: Any = None  # eviction's place in the arrival index, until the next commit
        self._lowest_new: bytes | None = None
        self.count = 0
        self.next_seq = 0
        self.committed_seq = 0  # records numbered from here on were created since the last commit

    def prefetch(self, hashes: list[bytes]) -> dict[bytes, list | None]:
        overlay = self.overlay
        missing = [h for h in hashes if h not in overlay] if overlay else hashes
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

    def put_new(self, h: bytes, ts: float, payload: list) -> None:
        seq = self.next_seq
        self.next_seq += 1
        self.overlay[h] = [ts, seq, *payload]
        self.created.append((ts, seq, h))
        if ts < self.created_min:
            self.created_min = ts
        self.count += 1

    def update(self, h: bytes, record: list) -> None:
        self.overlay[h] = record

    def delete(self, h: bytes, ts: float, seq: int) -> None:
        self.overlay[h] = None
        if seq < self.committed_seq:  # in the store's indexes: their keys go at the commit
            self.stale.append((time_key(ts) + h, _pack_q(seq) + h))
        self.count -= 1

    def _tag(self, record: list) -> int:
        return 0 if self.tag_at is None else record[self.tag_at]

    def expire(self, horizon: float) -> list[int]:
        """Delete every live record with ts < ``horizon``, in O(expired): those in the store, oldest first,
        then those created since the commit. Returns their tags, in that order."""
        from rocksdict import ReadOptions

        tags: list[int] = []
        bound = time_key(horizon)
        if self.time_floor < bound and self.time_next is not None and bound <= self.time_next:
            self.time_floor = bound  # nothing committed lies below the horizon: no iterator (eviction asks per event)
        elif self.time_floor < bound:
            bounded = ReadOptions()
            bounded.set_iterate_upper_bound(bound)
            overlay, stale, tag_at = self.overlay, self.stale, self.tag_at
            unpack, size = _index_value.unpack, _index_value.size
            for key, value in self.by_time.items(from_key=self.time_floor, read_opt=bounded):
                h = key[8:]
                if len(value) != size:  # written before index entries carried seq and tag
                    raw = self.main.get(h)  # the committed record this key was written for
                    if raw is None:
                        continue
                    record = decode(raw)
                    seq, tag = record[1], self._tag(record)
                else:
                    seq, tag = unpack(value)
                if h in overlay:
                    record = overlay[h]
                    # Deleted, or deleted and created anew since the commit: this key is stale.
                    if record is None or record[1] != seq:
                        continue
                    if tag_at is not None:
                        tag = record[tag_at]
                overlay[h] = None
                stale.append((key, _pack_q(seq) + h))  # the record was committed: its keys go at the next commit
                tags.append(tag)
            self.count -= len(tags)
            self.time_floor = bound
            after = self.by_time.iter()
            after.seek(bound)
            self.time_next = after.key() if after.valid() else _PAST_EVERY_KEY
        if self.created_min < horizon:
            keep, gone, low = [], [], float("inf")
            overlay = self.overlay
            for entry in self.created[self.created_from:]:
                record = overlay.get(entry[2])
                if record is None or record[1] != entry[1]:
                    continue  # deleted since
                if entry[0] < horizon:
                    gone.append((entry, self._tag(record)))
                else:
                    keep.append(entry)
                    low = min(low, entry[0])
            self.created, self.created_from, self.created_min = keep, 0, low
            for (_, _, h), tag in sorted(gone):
                overlay[h] = None  # created since the commit: in no index of the store yet
                tags.append(tag)
            self.count -= len(gone)
        return tags

    def oldest(self) -> tuple[bytes, list] | None:
        """The live record that arrived first."""
        it = self._seq_iter
        if it is None:  # one iterator per commit interval: evictions come one per new entry once full
            it = self._seq_iter = self.by_seq.iter()
            it.seek(self.seq_floor)
        overlay = self.overlay
        while it.valid():
            key = it.key()
            it.next()
            self.seq_floor = key + b"\x00"
            h = key[8:]
            (seq,) = struct.unpack(">Q", key[:8])
            if h in overlay:
                record = overlay[h]
                if record is not None and record[1] == seq:
                    return h, record
            else:
                raw = self.main.get(h)  # eviction only: rare
                if raw is not None:
                    return h, decode(raw)
        created = self.created
        while self.created_from < len(created):
            _, seq, h = created[self.created_from]
            self.created_from += 1
            record = overlay.get(h)
            if record is not None and record[1] == seq:
                return h, record
        return None

    def write(self, batch: Any) -> None:
        """Every change since the last commit into ``batch``."""
        main, by_time, by_seq = self.handles
        # A record created since the commit gets every index; one changed since gets its time index entry
        # rewritten with its new tag; one deleted loses its keys (`stale`).
        for time_k, seq_k in self.stale:  # before the puts: a key deleted here may be written anew below
            batch.delete(time_k, by_time)
            batch.delete(seq_k, by_seq)
        self._lowest_new = None
        if not self.overlay:
            return
        # RocksDB inserts keys given in key order ~2.5x faster than in random order, and id hashes are
        # random: each column family's writes are sorted, in numpy. Python objects are read once, in the
        # order they were made (where they were allocated); the keys and index values are built as arrays.
        hashes, records = list(self.overlay), list(self.overlay.values())
        joined = b"".join(hashes)
        order = np.frombuffer(joined, dtype=">u8")[::2].argsort()  # the leading 8 bytes order them enough
        values = [None if r is None else encode(r) for r in records]
        put, delete = batch.put, batch.delete
        for i in order.tolist():
            if values[i] is None:
                delete(hashes[i], main)
            else:
                put(hashes[i], values[i], main)
        live = [i for i, r in enumerate(records) if r is not None]
        if not live:
            return
        rows = [r for r in records if r is not None]
        tag_at = self.tag_at
        index = np.empty(len(rows), dtype=_INDEX_ROW)
        index["time"] = time_key_ints([r[0] for r in rows])
        index["hash"] = np.frombuffer(joined, dtype="V16")[live]
        index["seq"] = [r[1] for r in rows]
        index["tag"] = 0 if tag_at is None else [r[tag_at] for r in rows]
        by_key = index[np.argsort(index["time"], kind="stable")]
        keys = by_key[["time", "hash"]].astype(_TIME_KEY).tobytes()
        marks = by_key[["seq", "tag"]].astype(_INDEX_VALUE).tobytes()
        kw, vw = _TIME_KEY.itemsize, _INDEX_VALUE.itemsize
        for k in range(len(by_key)):
            put(keys[kw * k:kw * k + kw], marks[vw * k:vw * k + vw], by_time)
        new = index[index["seq"] >= self.committed_seq]
        if len(new):
            new = new[np.argsort(new["seq"], kind="stable")]
            seq_keys = new[["seq", "hash"]].astype(_SEQ_KEY).tobytes()
            sw = _SEQ_KEY.itemsize
            for k in range(len(new)):
                put(seq_keys[sw * k:sw * k + sw], b"", by_seq)
            self._lowest_new = np.asarray(new["time"].min(), dtype=">u8").tobytes()  # see committed()

    def committed(self) -> None:
        # What was created since the last commit is in the time index now, some of it perhaps below the
        # floor an expiry sweep starts from: lower the floor to it (below, only deleted keys were left).
        if self._lowest_new is not None:
            self.time_floor = min(self.time_floor, self._lowest_new)
            self._lowest_new = None
        self.committed_seq = self.next_seq
        self.time_next, self._seq_iter = None, None  # the store changed: both are found again
        self.overlay.clear()
        self.stale.clear()
        self.created, self.created_from, self.created_min = [], 0, float("inf")
