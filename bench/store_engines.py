"""Embedded store engines for the join: rocksdict (RocksDB) beside LMDB on the disk-backed join store's pattern.

    python bench/store_engines.py            # full run: 1e6, 1e7 and 1e8 entries (3e7 if 1e8 does not fit the budget)
    python bench/store_engines.py --quick    # smoke run: 1e5 and 1e6 entries, about a minute
    python bench/store_engines.py --cache-sweep 1e7   # after a full run: rocksdict 256 MiB / 1 GiB cache beside LMDB, warm page cache

What it measures, per engine and store size, in one run with the engines side by side (issue 11):

1. A keyed table ``16-byte id hash -> 40-byte value`` (now, ts, code, prediction, score, flags), loaded by
   the fast path (rocksdict: ``SstFileWriter`` + ``ingest_external_file``; LMDB: one transaction per
   1e6 sorted entries, ``putmulti(append=True)``). Then batches of 4096 events as the engine joins them:
   one multi-get of 4096 keys (2048 new predictions: misses; 2048 feedbacks: hits on pending entries),
   then one atomic write holding 4096 puts (2048 new predictions, 2048 overwrites) and 2048 deletes
   (the joined predictions) together with an ``offsets`` key. No fsync per batch (see 3).
2. Expiry over a time-ordered secondary table (``8-byte big-endian bucket + id hash``): drop one bucket of
   ~1e5 entries with the point deletes of its ids in the main table, in one atomic write (rocksdict:
   scan + ``WriteBatch.delete`` + ``WriteBatch.delete_range``; LMDB: cursor deletes), and the index drop
   alone (``Rdict.delete_range`` then ``compact_range``, against LMDB cursor deletes); then batches right
   after, against those right before.
3. Durability per commit against the changes since the last one (1e3, 1e4, 1e5): unsynced writes, then
   the fsync (rocksdict: ``flush_wal(sync=True)``; LMDB: ``Environment.sync(True)``), and the bytes sent
   to storage per change (``/proc/self/io``).
4. Memory: VmRSS / RssAnon / RssFile of the process serving the store (a fresh process, not the loader),
   rocksdict with a 256 MiB block cache holding index and filter blocks too (settings: ``rocks_options``);
   the page cache held by the store files (``fincore``: shared and evictable). At the largest size, also
   batches after the store's files are dropped from the page cache (``posix_fadvise DONTNEED``, those
   files only) and the store reopened: the read path when the data does not fit in RAM.
5. Disk bytes per entry, and open after SIGKILL mid-stream at 1e7 (time to the first get, and that the
   offsets key matches the last committed batch's writes).

Also "lmdb_writemap": LMDB opened with ``writemap=True`` on the files the lmdb run left (steady state and
fsync only): faster writes, but a machine crash between syncs may corrupt the file, not just lose commits.

Each (engine, size) is loaded by one child process and served by another; a reference child runs
``streammon.memory_store.MemoryJoinStore.join`` on the same batch mix at 1e6, with the cost of hashing
the ids and packing the values beside it. Figures are printed and written to
``bench/results/store_engines.json`` (``--quick``: ``store_engines_quick.json`` in the temp directory). Data lives under a
temporary directory in /tmp and is deleted at the end. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BATCH = 4096
HALF = BATCH // 2
CACHE_BYTES = 256 << 20
MULT = 0x9E3779B97F4A7C15  # odd: i -> i * MULT mod 2**64 is a bijection, the low half of a key
PERM = 2_654_435_761  # prime, so coprime with the sizes: j -> (PERM * j + 12345) mod n walks every entry once
BASE_TS = 1_700_000_000.0
OFFSETS = b"~offsets"  # not 16 bytes long: never collides with an id hash
VALUE = np.dtype([("now", "<f8"), ("ts", "<f8"), ("code", "<i4"), ("pred", "<f8"), ("score", "<f8"), ("flags", "<u4")])
assert VALUE.itemsize == 40
VALUE_STRUCT = struct.Struct("<ddiddI")
ENGINES = ("rocksdict", "lmdb")


# --------------------------------------------------------------------------- keys, values, the workload

def main_keys(idx: np.ndarray, n: int) -> bytes:
    """Keys of loaded entries ``idx`` (sorted when idx is): uniform over the 128-bit space, as hashes are."""
    idx = idx.astype(np.uint64)
    arr = np.empty(len(idx), dtype=[("hi", ">u8"), ("lo", ">u8")])
    arr["hi"] = idx * np.uint64((1 << 64) // n)
    arr["lo"] = idx * np.uint64(MULT)
    return arr.tobytes()


def index_keys(bucket: int, idx: np.ndarray, n: int) -> bytes:
    arr = np.empty(len(idx), dtype=[("b", ">u8"), ("hi", ">u8"), ("lo", ">u8")])
    idx = idx.astype(np.uint64)
    arr["b"] = bucket
    arr["hi"] = idx * np.uint64((1 << 64) // n)
    arr["lo"] = idx * np.uint64(MULT)
    return arr.tobytes()


def values(idx: np.ndarray) -> bytes:
    arr = np.zeros(len(idx), VALUE)
    ts = BASE_TS + idx * 0.01
    arr["now"], arr["ts"], arr["code"] = ts + 0.5, ts, idx % 8
    arr["pred"], arr["score"] = idx & 1, ((idx.astype(np.uint64) * np.uint64(MULT)) % np.uint64(10_000)) / 10_000
    return arr.tobytes()


def split(buf: bytes, width: int) -> list[bytes]:
    return [buf[i: i + width] for i in range(0, len(buf), width)]


def bucket_bounds(bucket: int) -> tuple[bytes, bytes]:
    return struct.pack(">Q", bucket), struct.pack(">Q", bucket + 1)


class Workload:
    """Batches of the join's pattern, the same for every engine: feedback hits walk the loaded entries
    in a permutation (each hit once), new predictions get random keys, overwrites hit the previous
    batch's new predictions."""

    def __init__(self, n: int, seed: int = 7, j: int = 0, b: int = 0) -> None:
        self.n, self.seed, self.j, self.b = n, seed, j, b
        self.prev_new: list[bytes] = []
        self._vals = split(values(np.arange(BATCH, dtype=np.int64) + 12_345), 40)

    def existing(self, count: int) -> list[bytes]:
        j = np.arange(self.j, self.j + count, dtype=np.uint64)
        self.j += count
        return split(main_keys((j * np.uint64(PERM) + np.uint64(12_345)) % np.uint64(self.n), self.n), 16)

    @staticmethod
    def new_keys(seed: int, b: int, count: int) -> list[bytes]:
        return split(np.random.default_rng([seed, b]).bytes(16 * count), 16)

    def batch(self) -> tuple[list[bytes], list[tuple[bytes, bytes]], list[bytes], bytes]:
        new = self.new_keys(self.seed, self.b, HALF)
        hits = self.existing(HALF)
        over = self.prev_new or self.existing(HALF)
        lookups = new + hits
        puts = list(zip(new + over, self._vals))
        self.prev_new = new
        offsets = struct.pack("<QQ", self.b, (self.b + 1) * BATCH)
        self.b += 1
        return lookups, puts, hits, offsets

    def changes(self, k: int) -> list[tuple[list[tuple[bytes, bytes]], list[bytes], bytes]]:
        """k changed keys (half puts of new keys, half deletes of loaded ones) as writes of <= 4096."""
        out = []
        left = k
        while left > 0:
            m = min(BATCH, left)
            puts = list(zip(self.new_keys(self.seed + 1, self.b, m - m // 2), self._vals))
            out.append((puts, self.existing(m // 2), struct.pack("<QQ", self.b, 0)))
            self.b += 1
            left -= m
        return out


# --------------------------------------------------------------------------- process facts

def status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


def proc_io() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = int(value)
    except OSError:
        pass
    return out


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def resident_page_cache(path: Path) -> int | None:
    """Bytes of the store's files in the page cache (``fincore``), or None."""
    files = [str(p) for p in path.rglob("*") if p.is_file() and p.stat().st_size > 0]
    if not files or not shutil.which("fincore"):
        return None
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *files],
                          capture_output=True, text=True)
    try:
        return sum(int(x) for x in done.stdout.split())
    except ValueError:
        return None


def drop_from_page_cache(path: Path) -> None:
    """Write back and drop this store's files (only them) from the page cache: a cold read path."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# --------------------------------------------------------------------------- the engines

def rocks_options(cache_bytes: int = CACHE_BYTES):
    """(main table options, index options, the shared block cache): the settings measured.

    Both: level compaction with dynamic level bytes, lz4, 2 background jobs, one LRU block cache that
    also holds the index and filter blocks (partitioned, top level pinned), so memory is the cache plus
    the memtables whatever the entry count. Main table (point lookups only): 10-bit whole-key bloom
    filters, a hash index inside data blocks, a hash-skiplist memtable (needs a prefix extractor: the
    first 4 bytes of the hash) with a whole-key memtable bloom filter; 64 MiB memtables. Index (range
    scans and range deletes): plain skiplist memtable, no prefix extractor, 16 MiB memtables.
    """
    from rocksdict import (
        BlockBasedIndexType,
        BlockBasedOptions,
        Cache,
        DataBlockIndexType,
        DBCompactionStyle,
        DBCompressionType,
        MemtableFactory,
        Options,
        SliceTransform,
    )

    cache = Cache(cache_bytes)

    def common(table_tweak) -> Any:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_max_background_jobs(2)
        opts.set_compaction_style(DBCompactionStyle.level())
        opts.set_level_compaction_dynamic_level_bytes(True)
        opts.set_compression_type(DBCompressionType.lz4())
        opts.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_pin_top_level_index_and_filter(True)
        table.set_bloom_filter(10, False)
        table_tweak(table)
        opts.set_block_based_table_factory(table)
        return opts

    def point(table) -> None:
        table.set_data_block_index_type(DataBlockIndexType.binary_and_hash())
        table.set_data_block_hash_ratio(0.75)

    main = common(point)
    main.set_write_buffer_size(64 << 20)
    main.set_prefix_extractor(SliceTransform.create_fixed_prefix(4))
    main.set_memtable_factory(MemtableFactory.hash_skip_list(1 << 20, 4, 4))
    main.set_allow_concurrent_memtable_write(False)  # the hash skiplist needs it; one writer per partition anyway
    main.set_memtable_prefix_bloom_ratio(0.02)
    main.set_memtable_whole_key_filtering(True)
    index = common(lambda table: None)
    index.set_write_buffer_size(16 << 20)
    return main, index, cache


class Rocks:
    name = "rocksdict"

    def __init__(self, path: Path, cache_bytes: int = CACHE_BYTES) -> None:
        from rocksdict import Rdict, WriteOptions

        self.path = path
        self.opts, self.index_opts, self.cache = rocks_options(cache_bytes)
        self.db = Rdict(str(path), self.opts, column_families={"by_time": self.index_opts})
        self.by_time = self.db.get_column_family("by_time")
        self.by_time_handle = self.db.get_column_family_handle("by_time")
        self.wo = WriteOptions()
        self.wo.sync = False  # WAL on, no fsync per batch: a process kill loses nothing, a machine crash the last interval
        self.wo_sync = WriteOptions()
        self.wo_sync.sync = True

    def get(self, keys: list[bytes]) -> int:
        return sum(v is not None for v in self.db.get(keys))  # Rdict.get(list) is the multi-get

    def write(self, puts, deletes, offsets: bytes, sync: bool = False) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for k, v in puts:
            wb.put(k, v)
        for k in deletes:
            wb.delete(k)
        wb.put(OFFSETS, offsets)
        self.db.write(wb, self.wo_sync if sync else self.wo)

    def get_one(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def sync(self) -> None:
        self.db.flush_wal(True)

    def expire(self, bucket: int) -> int:
        """Drop a bucket: its ids out of the main table and the bucket out of the index, atomically."""
        from rocksdict import ReadOptions, WriteBatch

        lo, hi = bucket_bounds(bucket)
        ro = ReadOptions()
        ro.set_iterate_upper_bound(hi)
        ids = [k[8:] for k in self.by_time.keys(from_key=lo, read_opt=ro)]
        wb = WriteBatch(raw_mode=True)
        for k in ids:
            wb.delete(k)
        wb.delete_range(lo, hi, self.by_time_handle)
        self.db.write(wb, self.wo)
        return len(ids)

    def drop_index_bucket(self, bucket: int) -> None:
        lo, hi = bucket_bounds(bucket)
        self.by_time.delete_range(lo, hi)

    def compact_index(self, bucket: int) -> None:
        lo, hi = bucket_bounds(bucket)
        self.by_time.compact_range(lo, hi)

    def seek_after(self, bucket: int) -> bytes | None:
        """The first index key at or after a dropped bucket (reads skip its range tombstone)."""
        lo, _ = bucket_bounds(bucket)
        for k in self.by_time.keys(from_key=lo):
            return k
        return None

    def stats(self) -> dict[str, Any]:
        p = self.db.property_int_value
        out = {"block_cache_usage": self.cache.get_usage(), "block_cache_pinned": self.cache.get_pinned_usage()}
        for name in ("rocksdb.cur-size-all-mem-tables", "rocksdb.estimate-table-readers-mem", "rocksdb.estimate-num-keys",
                     "rocksdb.total-sst-files-size", "rocksdb.num-running-compactions", "rocksdb.estimate-pending-compaction-bytes"):
            try:
                out[name.removeprefix("rocksdb.")] = p(name)
            except Exception:  # noqa: BLE001 - a property this build lacks
                out[name.removeprefix("rocksdb.")] = None
        levels = []
        for level in range(7):
            try:
                levels.append(int(self.db.property_value(f"rocksdb.num-files-at-level{level}")))
            except Exception:  # noqa: BLE001
                levels.append(None)
        out["files_per_level"] = levels
        try:
            out["index_sst_bytes"] = self.by_time.property_int_value("rocksdb.total-sst-files-size")
        except Exception:  # noqa: BLE001
            out["index_sst_bytes"] = None
        return out

    def close(self) -> None:
        self.by_time.close()
        self.db.close()
        del self.by_time, self.by_time_handle, self.db
        gc.collect()


def lmdb_open(path: Path, map_size: int, writemap: bool = False):
    import lmdb

    # sync=False: a commit writes its pages to the file (the page cache) without fsync; sync(True) at the
    # commit interval makes it durable. A process kill loses nothing; a machine crash undoes the commits
    # since the last sync, with integrity kept (writemap off). readahead=False: random access.
    return lmdb.open(str(path), map_size=map_size, subdir=True, max_dbs=4, sync=False, metasync=True,
                     readahead=False, writemap=writemap, meminit=False, lock=True)


class Lmdb:
    name = "lmdb"

    def __init__(self, path: Path, map_size: int, writemap: bool = False) -> None:
        self.path = path
        self.env = lmdb_open(path, map_size, writemap=writemap)
        self.main = self.env.open_db(b"join")
        self.by_time = self.env.open_db(b"by_time")
        self._txn = None

    def get(self, keys: list[bytes]) -> int:
        # One write transaction per batch (a partition has one writer): the multi-get reads in it.
        self._txn = self.env.begin(write=True)
        return len(self._txn.cursor(self.main).getmulti(sorted(keys)))

    def write(self, puts, deletes, offsets: bytes, sync: bool = False) -> None:
        txn = self._txn or self.env.begin(write=True)
        self._txn = None
        txn.cursor(self.main).putmulti(sorted(puts))
        delete = txn.delete
        for k in sorted(deletes):
            delete(k, db=self.main)
        txn.put(OFFSETS, offsets, db=self.main)
        txn.commit()
        if sync:
            self.env.sync(True)

    def get_one(self, key: bytes) -> bytes | None:
        with self.env.begin(db=self.main) as txn:
            return txn.get(key)

    def sync(self) -> None:
        self.env.sync(True)

    def _drop(self, txn, bucket: int) -> list[bytes]:
        lo, hi = bucket_bounds(bucket)
        cur = txn.cursor(self.by_time)
        ids = []
        if cur.set_range(lo):
            while True:
                k = cur.key()
                if not k or k >= hi:
                    break
                ids.append(k[8:])
                if not cur.delete():
                    break
        return ids

    def expire(self, bucket: int) -> int:
        txn = self.env.begin(write=True)
        ids = self._drop(txn, bucket)
        delete = txn.delete
        for k in ids:
            delete(k, db=self.main)
        txn.commit()
        return len(ids)

    def drop_index_bucket(self, bucket: int) -> None:
        txn = self.env.begin(write=True)
        self._drop(txn, bucket)
        txn.commit()

    def compact_index(self, bucket: int) -> None:
        pass  # LMDB frees the pages at commit: nothing to compact

    def seek_after(self, bucket: int) -> bytes | None:
        lo, _ = bucket_bounds(bucket)
        with self.env.begin(db=self.by_time) as txn:
            cur = txn.cursor()
            return cur.key() if cur.set_range(lo) else None

    def stats(self) -> dict[str, Any]:
        with self.env.begin() as txn:
            main, idx = txn.stat(self.main), txn.stat(self.by_time)
        info = self.env.info()
        psize = main["psize"]
        pages = lambda s: s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]  # noqa: E731
        return {"depth": main["depth"], "entries": main["entries"], "main_bytes": pages(main) * psize,
                "index_bytes": pages(idx) * psize, "index_entries": idx["entries"],
                "file_used_bytes": (info["last_pgno"] + 1) * psize, "map_size": info["map_size"]}

    def close(self) -> None:
        self.env.close()


def open_engine(engine: str, path: Path, n: int, writemap: bool = False, cache_bytes: int = CACHE_BYTES):
    return Rocks(path, cache_bytes) if engine == "rocksdict" else Lmdb(path, lmdb_map_size(n), writemap=writemap)


def lmdb_map_size(n: int) -> int:
    return max(1 << 30, n * 300)  # ~70 B/entry of main table + index + free pages; the file grows as used


# --------------------------------------------------------------------------- children: load, run, crash, recover

CHUNK = 1_000_000


def index_plan(n: int, bucket_size: int, partial: bool) -> tuple[int, list[int]]:
    """(number of buckets, the buckets loaded): entry i is in bucket i % nb, so a bucket's ids are spread
    over the whole key space, as event times are over hashes."""
    nb = max(1, n // bucket_size)
    return nb, list(range(min(nb, 3))) if partial else list(range(nb))


def child_load(engine: str, path: Path, n: int, bucket_size: int, partial_index: bool) -> dict[str, Any]:
    nb, buckets = index_plan(n, bucket_size, partial_index)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"engine": engine, "n": n, "buckets": nb, "index_buckets_loaded": len(buckets),
                           "index_entries": sum(len(range(b, n, nb)) for b in buckets)}
    if engine == "rocksdict":
        from rocksdict import IngestExternalFileOptions, Rdict, SstFileWriter

        opts, index_opts, _ = rocks_options()
        sst_dir = path.parent / (path.name + ".sst")
        sst_dir.mkdir()
        per_file = 4 * CHUNK

        def write_ssts(prefix: str, chunks, opts) -> list[str]:
            files, writer, in_file = [], None, 0
            for kbuf, vbuf, width in chunks:
                if writer is None:
                    writer = SstFileWriter(opts)
                    files.append(str(sst_dir / f"{prefix}{len(files):05d}.sst"))
                    writer.open(files[-1])
                keys = split(kbuf, width)
                vals = split(vbuf, 40) if vbuf else None
                if vals is None:
                    for k in keys:
                        writer[k] = b""
                else:
                    for k, v in zip(keys, vals):
                        writer[k] = v
                in_file += len(keys)
                if in_file >= per_file:
                    writer.finish()
                    writer, in_file = None, 0
            if writer is not None:
                writer.finish()
            return files

        def main_chunks():
            for s in range(0, n, CHUNK):
                idx = np.arange(s, min(n, s + CHUNK), dtype=np.int64)
                yield main_keys(idx, n), values(idx), 16

        def index_chunks():
            for b in buckets:
                idx = np.arange(b, n, nb, dtype=np.int64)
                for s in range(0, len(idx), CHUNK):
                    yield index_keys(b, idx[s: s + CHUNK], n), b"", 24

        main_files = write_ssts("main", main_chunks(), opts)
        t_sst = time.perf_counter()
        ing = IngestExternalFileOptions()
        ing.set_move_files(True)
        db = Rdict(str(path), opts, column_families={"by_time": index_opts})
        db.ingest_external_file(main_files, ing)
        t_main = time.perf_counter()
        out["main_disk_bytes"] = disk_bytes(path)
        index_files = write_ssts("index", index_chunks(), index_opts)
        by_time = db.get_column_family("by_time")
        by_time.ingest_external_file(index_files, ing)
        by_time.close()
        db.close()
        del db, by_time
        shutil.rmtree(sst_dir)
        out.update(sst_write_s=t_sst - t0, ingest_s=t_main - t_sst, main_load_s=t_main - t0,
                   main_files=len(main_files))
    else:
        env = lmdb_open(path, lmdb_map_size(n), writemap=True)  # writemap for the load only: no page copies
        main, by_time = env.open_db(b"join"), env.open_db(b"by_time")
        for s in range(0, n, CHUNK):
            idx = np.arange(s, min(n, s + CHUNK), dtype=np.int64)
            with env.begin(write=True) as txn:
                txn.cursor(main).putmulti(zip(split(main_keys(idx, n), 16), split(values(idx), 40)), append=True)
        t_main = time.perf_counter()
        env.sync(True)
        out["main_disk_bytes"] = disk_bytes(path)
        for b in buckets:
            idx = np.arange(b, n, nb, dtype=np.int64)
            for s in range(0, len(idx), CHUNK):
                with env.begin(write=True) as txn:
                    ks = split(index_keys(b, idx[s: s + CHUNK], n), 24)
                    txn.cursor(by_time).putmulti(((k, b"") for k in ks), append=True)
        env.sync(True)
        env.close()
        out["main_load_s"] = t_main - t0
    out["load_s"] = time.perf_counter() - t0
    out["disk_bytes"] = disk_bytes(path)
    out["peak_rss"] = status().get("VmHWM")
    return out


def timed_batches(store, work: Workload, count: int, time_cap: float | None = None) -> dict[str, Any]:
    gets, writes, totals, hits = [], [], [], 0
    io0 = proc_io()
    t_end = None if time_cap is None else time.perf_counter() + time_cap
    for _ in range(count):
        lookups, puts, deletes, offsets = work.batch()
        t0 = time.perf_counter()
        hits += store.get(lookups)
        t1 = time.perf_counter()
        store.write(puts, deletes, offsets)
        t2 = time.perf_counter()
        gets.append(t1 - t0)
        writes.append(t2 - t1)
        totals.append(t2 - t0)
        if t_end is not None and t2 > t_end:
            break
    io1 = proc_io()
    k = len(totals)
    ev = k * BATCH
    srt = sorted(totals)
    return {
        "batches": k, "events": ev, "hit_rate": hits / ev,
        "get_us_per_event": 1e6 * sum(gets) / ev, "write_us_per_event": 1e6 * sum(writes) / ev,
        "total_us_per_event": 1e6 * sum(totals) / ev,
        "batch_ms_median": 1e3 * statistics.median(totals), "batch_ms_p99": 1e3 * srt[min(k - 1, int(0.99 * k))],
        "batch_ms_max": 1e3 * srt[-1], "get_ms_max": 1e3 * max(gets), "write_ms_max": 1e3 * max(writes),
        "write_bytes_per_event": (io1.get("write_bytes", 0) - io0.get("write_bytes", 0)) / ev,
        "wchar_per_event": (io1.get("wchar", 0) - io0.get("wchar", 0)) / ev,
        "read_bytes_per_event": (io1.get("read_bytes", 0) - io0.get("read_bytes", 0)) / ev,
    }


def durability(store, work: Workload, ks: list[int], reps: int) -> list[dict[str, Any]]:
    out = []
    store.sync()
    for k in ks:
        writes, syncs, bytes_, wchar = [], [], [], []
        for _ in range(reps):
            plan = work.changes(k) if k else []
            io0 = proc_io()
            t0 = time.perf_counter()
            for puts, deletes, offsets in plan:
                store.write(puts, deletes, offsets)
            t1 = time.perf_counter()
            store.sync()
            t2 = time.perf_counter()
            io1 = proc_io()
            writes.append(t1 - t0)
            syncs.append(t2 - t1)
            bytes_.append(io1.get("write_bytes", 0) - io0.get("write_bytes", 0))
            wchar.append(io1.get("wchar", 0) - io0.get("wchar", 0))
        out.append({"changes": k, "write_ms": 1e3 * statistics.median(writes), "sync_ms": 1e3 * statistics.median(syncs),
                    "sync_ms_all": [1e3 * s for s in syncs], "commit_ms": 1e3 * statistics.median(w + s for w, s in zip(writes, syncs)),
                    "sync_us_per_change": 1e6 * statistics.median(syncs) / k if k else None,
                    "bytes_written_per_change": statistics.median(bytes_) / k if k else statistics.median(bytes_),
                    "wchar_per_change": statistics.median(wchar) / k if k else statistics.median(wchar)})
    return out


def child_run(engine: str, path: Path, n: int, args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": engine, "n": n, "rss_at_start": status()}
    if args.get("prewarm"):  # read the store's files once: the page cache holds them (as far as the kernel lets it)
        for p in path.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    while f.read(1 << 24):
                        pass
    out["page_cache_before_open"] = resident_page_cache(path)
    t0 = time.perf_counter()
    store = open_engine(engine, path, n, writemap=args.get("writemap", False), cache_bytes=args.get("cache_bytes", CACHE_BYTES))
    t1 = time.perf_counter()
    store.get_one(main_keys(np.array([1]), n))
    t2 = time.perf_counter()
    out.update(open_s=t1 - t0, first_get_s=t2 - t1)
    work = Workload(n)
    gc.collect()
    gc.freeze()
    timed_batches(store, work, args["warmup"])
    out["steady"] = timed_batches(store, work, args["batches"])
    out["rss_after_steady"] = status()
    out["stats_after_steady"] = store.stats()
    out["page_cache_after_steady"] = resident_page_cache(path)
    out["durability"] = durability(store, work, args["changes"], args["reps"])
    if args["expiry"]:
        before = timed_batches(store, work, args["around"])
        t0 = time.perf_counter()
        expired = store.expire(0)
        t1 = time.perf_counter()
        after = timed_batches(store, work, args["around"])
        t2 = time.perf_counter()
        store.drop_index_bucket(1)
        t3 = time.perf_counter()
        first = store.seek_after(1)
        t4 = time.perf_counter()
        store.compact_index(1)
        t5 = time.perf_counter()
        after_drop = timed_batches(store, work, args["around"])
        out["expiry"] = {
            "bucket_entries": expired, "expire_ms": 1e3 * (t1 - t0), "expire_us_per_entry": 1e6 * (t1 - t0) / max(1, expired),
            "index_drop_ms": 1e3 * (t3 - t2), "index_drop_us_per_entry": 1e6 * (t3 - t2) / max(1, expired),
            "seek_past_dropped_ms": 1e3 * (t4 - t3), "seek_found_next_bucket": bool(first and first[:8] == struct.pack(">Q", 2)),
            "compact_range_ms": 1e3 * (t5 - t4),
            "before": before, "after_expire": after, "after_index_drop": after_drop}
    out["stats_end"] = store.stats()
    out["rss_end"] = status()
    if args["cold"]:
        store.close()
        drop_from_page_cache(path)
        out["page_cache_cold"] = resident_page_cache(path)
        store = open_engine(engine, path, n)
        out["cold"] = timed_batches(store, work, args["cold_batches"], time_cap=args["cold_cap_s"])
        out["rss_after_cold"] = status()
    store.close()
    out["disk_bytes_end"] = disk_bytes(path)
    return out


def child_crash(engine: str, path: Path, n: int) -> None:
    """Serve batches without syncing until the parent SIGKILLs this process."""
    store = open_engine(engine, path, n)
    work = Workload(n, seed=99, j=n // 2, b=1_000_000)
    for i in range(10 ** 9):
        lookups, puts, deletes, offsets = work.batch()
        store.get(lookups)
        store.write(puts, deletes, offsets)
        if i == 20:
            print("LOOPING", flush=True)


def child_recover(engine: str, path: Path, n: int) -> dict[str, Any]:
    wal = sum(p.stat().st_size for p in path.glob("*.log"))
    t0 = time.perf_counter()
    store = open_engine(engine, path, n)
    t1 = time.perf_counter()
    if engine == "rocksdict":
        raw = store.db.get(OFFSETS)
    else:
        with store.env.begin(db=store.main) as txn:
            raw = txn.get(OFFSETS)
    t2 = time.perf_counter()
    b, _ = struct.unpack("<QQ", raw)
    last = Workload.new_keys(99, b, HALF)  # that batch's new predictions: all there
    nxt = Workload.new_keys(99, b + 1, HALF)  # the next batch's: none
    if engine == "rocksdict":
        have, have_next = [sum(v is not None for v in store.db.get(ks)) for ks in (last, nxt)]
    else:
        with store.env.begin(db=store.main) as txn:
            have, have_next = [len(txn.cursor().getmulti(sorted(ks))) for ks in (last, nxt)]
    work = Workload(n, seed=5, j=n // 4, b=2_000_000)
    first_batch = timed_batches(store, work, 1)
    store.close()
    return {"engine": engine, "n": n, "wal_bytes_at_open": wal if engine == "rocksdict" else None,
            "open_s": t1 - t0, "first_get_s": t2 - t1, "open_to_first_get_s": t2 - t0,
            "batches_committed_before_kill": b - 1_000_000 + 1, "last_batch_writes_found": have,
            "next_batch_writes_found": have_next, "atomic_and_consistent": have == HALF and have_next == 0,
            "first_batch_ms": first_batch["batch_ms_max"]}


def child_memory(n: int, batches: int) -> dict[str, Any]:
    """The in-memory store today, on the same mix: 2048 new predictions + 2048 feedbacks hitting pending ones."""
    sys.path.insert(0, str(REPO))
    from streammon.memory_store import MemoryJoinStore

    store = MemoryJoinStore(feedback_ttl=7 * 86400.0, prediction_ttl=7 * 86400.0, max_pending=4 * n)
    ids = [f"{i * MULT % (1 << 128):032x}" for i in range(n)]
    t0 = time.perf_counter()
    for s in range(0, n, BATCH):
        chunk = ids[s: s + BATCH]
        m = len(chunk)
        ts = [BASE_TS + (s + i) * 0.01 for i in range(m)]
        store.join([True] * m, chunk, ts, [0] * m, [1] * m, [0.5] * m, ts)
    load_s = time.perf_counter() - t0
    now = BASE_TS + n * 0.01
    gc.collect()
    gc.freeze()
    rss = status()
    times, j = [], 0
    prepared = []
    for b in range(batches):
        new = [f"n{b:015x}{i:016x}" for i in range(HALF)]
        hit = [ids[(PERM * (j + i) + 12_345) % n] for i in range(HALF)]
        j += HALF
        evs = new + hit
        prepared.append(([True] * HALF + [False] * HALF, evs, [now] * BATCH, [0] * BATCH, [1] * BATCH, [0.7] * BATCH, [now] * BATCH))
    joined = 0
    for args in prepared:
        t = time.perf_counter()
        got = store.join(*args)
        times.append(time.perf_counter() - t)
        joined += len(got.at)
    # What a disk store adds before the engine sees a key: hash the id, pack the value, unpack the hits.
    codec = []
    blake = hashlib.blake2b
    pack, unpack = VALUE_STRUCT.pack, VALUE_STRUCT.unpack
    for _, evs, *_ in prepared[:50]:
        t = time.perf_counter()
        keys = [blake(x.encode(), digest_size=16).digest() for x in evs]
        packed = [pack(now, now, 3, 1.0, 0.7, 0) for _ in evs]
        for v in packed[:HALF]:
            unpack(v)
        codec.append(time.perf_counter() - t)
        del keys
    ev = len(times) * BATCH
    return {"n": n, "preload_s": load_s, "batches": len(times), "joined_per_batch": joined / len(times),
            "us_per_event": 1e6 * sum(times) / ev, "batch_ms_max": 1e3 * max(times),
            "codec_us_per_event": 1e6 * statistics.median(codec) / BATCH, "rss_after_preload": rss, "rss_end": status()}


# --------------------------------------------------------------------------- the parent

def machine() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import cpu_info, memory_gib  # the house helpers (no git from there)

    cpu = cpu_info()
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: no index refresh
    git = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, env=env).stdout  # noqa: E731
    dev = subprocess.run(["df", "--output=source,fstype", "/tmp"], capture_output=True, text=True).stdout.split("\n")[1].split()
    disk = {"tmp_device": dev[0] if dev else None, "fstype": dev[1] if len(dev) > 1 else None}
    name = Path(disk["tmp_device"] or "").name
    for key, rel in (("rotational", "queue/rotational"), ("scheduler", "queue/scheduler"), ("vendor", "device/vendor")):
        try:
            disk[key] = (Path("/sys/block") / name / rel).read_text().strip()
        except OSError:
            disk[key] = None
    disk["note"] = ("virtio block device: /sys reports rotational=1 for virtio disks whatever the backing; "
                    "the backing storage type is not visible from the guest") if name.startswith("vd") else None
    free = shutil.disk_usage("/tmp")
    import lmdb

    # A kdamond paging out cold memory (DAMON-based reclaim) keeps the page cache small: store files
    # not touched for a while are read from disk again, whatever RAM is free.
    damon = Path("/sys/kernel/mm/damon/admin/kdamonds/0")
    reclaim: dict[str, Any] | None = None
    try:
        scheme = damon / "contexts/0/schemes/0"
        reclaim = {"state": (damon / "state").read_text().strip(), "action": (scheme / "action").read_text().strip(),
                   "min_age_aggr_intervals": int((scheme / "access_pattern/age/min").read_text()),
                   "aggr_interval_us": int((damon / "contexts/0/monitoring_attrs/intervals/aggr_us").read_text()),
                   "quota_bytes_per_reset": int((scheme / "quotas/bytes").read_text()),
                   "quota_reset_interval_ms": int((scheme / "quotas/reset_interval_ms").read_text())}
    except (OSError, ValueError):
        pass

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"), "cpu_mhz": cpu.get("cpu MHz"),
        "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "memory_gib": memory_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "kernel": platform.release(),
        "platform": platform.platform(), "python": platform.python_version(), "disk": disk,
        "tmp_free_gib_at_start": round(free.free / 2**30, 1), "damon_reclaim": reclaim,
        "packages": {"rocksdict": importlib.metadata.version("rocksdict"), "lmdb (py-lmdb)": importlib.metadata.version("lmdb"),
                     "liblmdb": ".".join(map(str, lmdb.version())), "numpy": np.__version__},
        "streammon_commit": git("rev-parse", "--short", "HEAD").strip(),
    }


def run_child(*argv: str, timeout: float = 3600) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"child {argv} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def crash_and_recover(engine: str, path: Path, n: int, run_s: float) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, __file__, "_crash", engine, str(path), str(n)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "LOOPING" not in line:
        proc.kill()
        raise RuntimeError(f"crash child for {engine} did not start: {line!r}")
    time.sleep(run_s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return run_child("_recover", engine, str(path), str(n))


def fmt(x: Any, digits: int = 2) -> str:
    from report import number_text
    return number_text(x, digits)


def mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.0f}"


def size_label(n: int) -> str:
    e = len(str(n)) - 1
    return f"1e{e}" if n == 10 ** e else f"{n / 10 ** e:g}e{e}"


def render(res: dict[str, Any]) -> str:
    """The Markdown tables (for the docs section)."""
    runs, loads, lines = res["runs"], res["loads"], []
    mem = res.get("memory")
    lines.append("| size | engine | load | get us/ev | write us/ev | get+write us/ev | + codec us/ev | vs in-memory | batch median / p99 / max ms | "
                 "write() / dirtied B/ev | RSS MiB (anon + file) | page cache MiB | disk B/entry |")
    lines.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    codec = mem["codec_us_per_event"] if mem else 0.0
    for n in res["plan"]["sizes"]:
        for e in (*ENGINES, "lmdb_writemap"):
            r, ld = runs.get(f"{e}:{n}"), loads.get(f"{e.removesuffix('_writemap')}:{n}")
            if not r:
                continue
            s, rss = r["steady"], r["rss_after_steady"]
            tot = s["total_us_per_event"] + codec
            vs = f"{tot / mem['us_per_event']:.2f}x" if mem and n == mem["n"] else ""
            load = "same files" if e == "lmdb_writemap" else f"{fmt(ld['main_load_s'], 1)} s"
            lines.append(f"| {size_label(n)} | {e} | {load} | {fmt(s['get_us_per_event'])} | {fmt(s['write_us_per_event'])} | "
                         f"{fmt(s['total_us_per_event'])} | {fmt(tot)} | {vs} | {fmt(s['batch_ms_median'], 1)} / {fmt(s['batch_ms_p99'], 1)} / "
                         f"{fmt(s['batch_ms_max'], 1)} | {fmt(s['wchar_per_event'], 0)} / {fmt(s['write_bytes_per_event'], 0)} | {mib(rss.get('RssAnon'))} + {mib(rss.get('RssFile'))} | "
                         f"{mib(r.get('page_cache_after_steady'))} | {fmt(ld['main_disk_bytes'] / n, 1)} |")
    if mem:
        lines.append(f"| {size_label(mem['n'])} | in-memory `MemoryJoinStore.join` | {fmt(mem['preload_s'], 1)} s | | | {fmt(mem['us_per_event'])} (whole join) | | 1.00x | "
                     f"max {fmt(mem['batch_ms_max'], 1)} | | {mib(mem['rss_end'].get('RssAnon'))} + {mib(mem['rss_end'].get('RssFile'))} | | |")
    lines.append("")
    lines.append("| size | lmdb / rocksdict: get | write | get+write | write() B/ev | RSS | disk | rocksdict vs 1e6 (get+write) | lmdb vs 1e6 |")
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    first = res["plan"]["sizes"][0]
    for n in res["plan"]["sizes"]:
        a, b = runs.get(f"rocksdict:{n}"), runs.get(f"lmdb:{n}")
        if not (a and b):
            continue
        sa, sb = a["steady"], b["steady"]
        r = lambda k, sa=sa, sb=sb: sb[k] / sa[k] if sa[k] else float("nan")  # noqa: E731
        base = lambda e: runs[f"{e}:{first}"]["steady"]["total_us_per_event"]  # noqa: E731
        lines.append(f"| {size_label(n)} | {r('get_us_per_event'):.2f}x | {r('write_us_per_event'):.2f}x | {r('total_us_per_event'):.2f}x | "
                     f"{r('wchar_per_event'):.1f}x | {b['rss_after_steady']['VmRSS'] / a['rss_after_steady']['VmRSS']:.2f}x | "
                     f"{loads[f'lmdb:{n}']['main_disk_bytes'] / loads[f'rocksdict:{n}']['main_disk_bytes']:.2f}x | "
                     f"{sa['total_us_per_event'] / base('rocksdict'):.2f}x | {sb['total_us_per_event'] / base('lmdb'):.2f}x |")
    lines.append("")
    lines.append("Durability: unsynced writes of k changed keys, then the fsync (median of reps).")
    lines.append("")
    lines.append("| size | changes | rocksdict write ms | rocksdict fsync ms | rocksdict B dirtied / change | lmdb write ms | lmdb fsync ms | "
                 "lmdb B dirtied / change | fsync lmdb / rocksdict | lmdb writemap: write + msync ms |")
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in res["plan"]["sizes"]:
        a, b, c = runs.get(f"rocksdict:{n}"), runs.get(f"lmdb:{n}"), runs.get(f"lmdb_writemap:{n}")
        if not (a and b):
            continue
        wm = c["durability"] if c else [None] * len(a["durability"])
        for da, db_, dc in zip(a["durability"], b["durability"], wm):
            lines.append(f"| {size_label(n)} | {fmt(da['changes'])} | {fmt(da['write_ms'])} | {fmt(da['sync_ms'])} | {fmt(da['bytes_written_per_change'], 0)} | "
                         f"{fmt(db_['write_ms'])} | {fmt(db_['sync_ms'])} | {fmt(db_['bytes_written_per_change'], 0)} | {db_['sync_ms'] / da['sync_ms']:.1f}x | "
                         f"{(fmt(dc['write_ms']) + ' + ' + fmt(dc['sync_ms'])) if dc else 'n/a'} |")
    lines.append("")
    lines.append("Expiry: one bucket of the time-ordered index (its ids deleted from the main table in the same atomic write), "
                 "then the index drop alone; batches right after against right before (get+write us/ev).")
    lines.append("")
    lines.append("| size | engine | bucket entries | expire ms | us / expired entry | index drop alone ms | compact_range ms | seek past dropped ms | before | after expire | after index drop |")
    lines.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in res["plan"]["sizes"]:
        for e in ENGINES:
            r = runs.get(f"{e}:{n}")
            if not r or "expiry" not in r:
                continue
            x = r["expiry"]
            lines.append(f"| {size_label(n)} | {e} | {fmt(x['bucket_entries'])} | {fmt(x['expire_ms'], 1)} | {fmt(x['expire_us_per_entry'])} | "
                         f"{fmt(x['index_drop_ms'], 2)} | {fmt(x['compact_range_ms'], 1)} | {fmt(x['seek_past_dropped_ms'], 3)} | "
                         f"{fmt(x['before']['total_us_per_event'])} | {fmt(x['after_expire']['total_us_per_event'])} | {fmt(x['after_index_drop']['total_us_per_event'])} |")
    rec = res.get("recovery", {})
    if rec:
        lines.append("")
        lines.append("| open after SIGKILL | size | WAL at open | open | first get | batches before kill | last batch's writes found | next batch's found | first batch after open |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for e in ENGINES:
            r = rec.get(e)
            if r:
                lines.append(f"| {e} | {size_label(r['n'])} | {mib(r['wal_bytes_at_open'])} MiB | {fmt(1e3 * r['open_s'], 1)} ms | {fmt(1e3 * r['first_get_s'], 2)} ms | "
                             f"{fmt(r['batches_committed_before_kill'])} | {r['last_batch_writes_found']} / {HALF} | {r['next_batch_writes_found']} | {fmt(r['first_batch_ms'], 1)} ms |")
    cold = [(n, e, runs[f"{e}:{n}"]) for n in res["plan"]["sizes"] for e in ENGINES if "cold" in runs.get(f"{e}:{n}", {})]
    if cold:
        lines.append("")
        lines.append("| cold page cache (store files dropped from it, store reopened) | size | batches | get us/ev | write us/ev | read B/ev | batch max ms |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n, e, r in cold:
            c = r["cold"]
            lines.append(f"| {e} | {size_label(n)} | {c['batches']} | {fmt(c['get_us_per_event'])} | {fmt(c['write_us_per_event'])} | "
                         f"{fmt(c['read_bytes_per_event'], 0)} | {fmt(c['batch_ms_max'], 1)} |")
    return "\n".join(lines)


def parent(quick: bool, max_size: float, budget_min: float) -> None:
    started = time.perf_counter()
    info = machine()
    print(f"machine: {info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB, kernel {info['kernel']}, "
          f"/tmp {info['disk']['fstype']} on {info['disk']['tmp_device']} ({info['tmp_free_gib_at_start']} GiB free), "
          f"rocksdict {info['packages']['rocksdict']}, py-lmdb {info['packages']['lmdb (py-lmdb)']} (liblmdb {info['packages']['liblmdb']}); "
          f"load {info['load_average_at_start']}", flush=True)
    sizes = [100_000, 1_000_000] if quick else [1_000_000, 10_000_000, int(max_size)]
    recovery_n = sizes[1] if quick else 10_000_000
    changes = [1, 1_000, 10_000] if quick else [1, 1_000, 10_000, 100_000]
    plan = {"sizes": sizes, "batch": BATCH, "block_cache_bytes": CACHE_BYTES, "changes": changes, "budget_min": budget_min,
            "bucket_size": 10_000 if quick else 100_000, "recovery_n": recovery_n}
    res: dict[str, Any] = {"command": " ".join(["python", "bench/store_engines.py", *sys.argv[1:]]), "quick": quick,
                           "machine": info, "plan": plan, "loads": {}, "runs": {}, "recovery": {}, "notes": []}
    root = Path(tempfile.mkdtemp(prefix="streammon_store_engines_", dir="/tmp"))
    try:
        print("in-memory reference ...", flush=True)
        res["memory"] = json.loads(json.dumps(run_child("_memory", "1000000", "60" if quick else "200")))
        m = res["memory"]
        print(f"  MemoryJoinStore.join at {size_label(m['n'])} pending: {m['us_per_event']:.2f} us/event; "
              f"hash + pack + unpack for a disk store: {m['codec_us_per_event']:.2f} us/event", flush=True)
        for si, n in enumerate(list(sizes)):
            if si == len(sizes) - 1 and not quick and si > 0:
                n = choose_big(res, sizes, n, started, budget_min, root)
                sizes[si] = n
            batches = max(10, min(300, int(0.5 * n / HALF)))
            args = {"warmup": 10 if quick else 20, "batches": batches, "changes": changes if n >= 1_000_000 else [1, 1_000],
                    "reps": 3, "expiry": True, "around": 20 if quick else 40, "cold": n == sizes[-1],
                    "cold_batches": 20, "cold_cap_s": 30.0}
            bucket_size = plan["bucket_size"]
            partial = n > 10_000_000
            for e in ENGINES:
                path = root / f"{e}_{n}"
                t = time.perf_counter()
                ld = run_child("_load", e, str(path), str(n), str(bucket_size), "1" if partial else "0")
                res["loads"][f"{e}:{n}"] = ld
                print(f"  {size_label(n)} {e}: loaded in {ld['load_s']:.1f} s (main {ld['main_load_s']:.1f} s; index "
                      f"{fmt(ld['index_entries'])} entries), disk {ld['main_disk_bytes'] / n:.1f} B/entry main, "
                      f"{ld['disk_bytes'] / 2**20:,.0f} MiB total [{time.perf_counter() - t:.0f} s]", flush=True)
            variants = [(e, e, args) for e in ENGINES]
            # LMDB with writemap: dirty pages written in place (no copy), on the store the lmdb run left;
            # not crash-safe between syncs (a machine crash may corrupt the file), steady state and fsync only
            variants.append(("lmdb_writemap", "lmdb", {**args, "writemap": True, "expiry": False, "cold": False, "warmup": 5}))
            for label, e, a in variants:
                path = root / f"{e}_{n}"
                t = time.perf_counter()
                r = run_child("_run", e, str(path), str(n), json.dumps(a))
                res["runs"][f"{label}:{n}"] = r
                e = label
                s = r["steady"]
                print(f"  {size_label(n)} {e}: get {s['get_us_per_event']:.2f} + write {s['write_us_per_event']:.2f} = "
                      f"{s['total_us_per_event']:.2f} us/event (hit rate {s['hit_rate']:.2f}), batch max {s['batch_ms_max']:.1f} ms, "
                      f"RSS {mib(r['rss_after_steady']['VmRSS'])} MiB (file {mib(r['rss_after_steady'].get('RssFile'))}), "
                      f"open {1e3 * r['open_s']:.0f} ms [{time.perf_counter() - t:.0f} s]", flush=True)
            if n == recovery_n:
                for e in ENGINES:
                    rec = crash_and_recover(e, root / f"{e}_{n}", n, 2.0)
                    res["recovery"][e] = rec
                    print(f"  {size_label(n)} {e}: open after SIGKILL {1e3 * rec['open_s']:.0f} ms + first get "
                          f"{1e3 * rec['first_get_s']:.2f} ms; consistent: {rec['atomic_and_consistent']}", flush=True)
            for e in ENGINES:
                shutil.rmtree(root / f"{e}_{n}", ignore_errors=True)
        res["minutes"] = (time.perf_counter() - started) / 60
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["markdown"] = render(res)
    print()
    print(res["markdown"])
    # The quick run's figures stay out of the tree (a smoke check); the full run's are committed.
    out = Path(tempfile.gettempdir()) / "store_engines_quick.json" if quick else REPO / "bench" / "results" / "store_engines.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\n{res['minutes']:.1f} min; raw figures: {out}")


def cache_sweep(n: int) -> None:
    """The read path against the block cache size, with the page cache warm for both engines (the full
    run's rocksdict runs start with its files out of the page cache: SstFileWriter drops what it writes)."""
    started = time.perf_counter()
    info = machine()
    out_path = REPO / "bench" / "results" / "store_engines.json"
    res = json.loads(out_path.read_text())
    root = Path(tempfile.mkdtemp(prefix="streammon_store_engines_", dir="/tmp"))
    sweep: dict[str, Any] = {"command": " ".join(["python", "bench/store_engines.py", *sys.argv[1:]]), "machine": info, "n": n, "runs": {}}
    base = {"warmup": 20, "batches": 300, "changes": [], "reps": 1, "expiry": False, "cold": False, "prewarm": True}
    try:
        for e in ENGINES:
            ld = run_child("_load", e, str(root / f"{e}_{n}"), str(n), "100000", "0")
            sweep.setdefault("loads", {})[e] = ld
            print(f"  {size_label(n)} {e}: loaded in {ld['load_s']:.1f} s", flush=True)
        plan = [("rocksdict 256 MiB", "rocksdict", 256 << 20), ("lmdb", "lmdb", 0), ("rocksdict 1 GiB", "rocksdict", 1 << 30),
                ("rocksdict 256 MiB again", "rocksdict", 256 << 20)]
        for label, e, cache in plan:
            r = run_child("_run", e, str(root / f"{e}_{n}"), str(n), json.dumps({**base, "cache_bytes": cache or CACHE_BYTES}))
            sweep["runs"][label] = r
            s = r["steady"]
            print(f"  {label}: get {s['get_us_per_event']:.2f} + write {s['write_us_per_event']:.2f} = {s['total_us_per_event']:.2f} us/event, "
                  f"read {s['read_bytes_per_event']:.0f} B/ev from disk, batch p99 {s['batch_ms_p99']:.1f} max {s['batch_ms_max']:.1f} ms, "
                  f"RSS {mib(r['rss_after_steady']['VmRSS'])} MiB (file {mib(r['rss_after_steady'].get('RssFile'))}), page cache at open "
                  f"{mib(r['page_cache_before_open'])} MiB", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sweep["minutes"] = (time.perf_counter() - started) / 60
    res["cache_sweep"] = sweep
    out_path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"{sweep['minutes']:.1f} min; added to {out_path.relative_to(REPO)} as cache_sweep")


def choose_big(res: dict[str, Any], sizes: list[int], want: int, started: float, budget_min: float, root: Path) -> int:
    """1e8 if the 1e7 figures say it fits the time budget and 60 % of the free disk, else 3e7."""
    prev = sizes[-2]
    load = sum(res["loads"][f"{e}:{prev}"]["load_s"] for e in ENGINES)
    disk = sum(res["loads"][f"{e}:{prev}"]["disk_bytes"] for e in ENGINES)
    scale = want / prev
    projected = load * scale * 1.15 + 200  # loads grow with n; the run part about constant, cold pass capped
    spent = time.perf_counter() - started
    free = shutil.disk_usage(root).free
    if spent + projected > 60 * budget_min or disk * scale * 1.3 > 0.6 * free:
        fallback = min(want, 30_000_000)
        note = (f"{size_label(want)} skipped: projected {projected / 60:.1f} min after {spent / 60:.1f} min spent (budget {budget_min} min), "
                f"projected disk {disk * scale * 1.3 / 2**30:.1f} GiB of {free / 2**30:.0f} GiB free; ran {size_label(fallback)}")
        res["notes"].append(note)
        print("  " + note, flush=True)
        return fallback
    res["notes"].append(f"{size_label(want)}: projected {projected / 60:.1f} min after {spent / 60:.1f} min spent, "
                        f"disk {disk * scale * 1.3 / 2**30:.1f} GiB of {free / 2**30:.0f} GiB free")
    return want


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        cmd, *a = sys.argv[1:]
        if cmd == "_memory":
            print(json.dumps(child_memory(int(a[0]), int(a[1]))))
        elif cmd == "_load":
            print(json.dumps(child_load(a[0], Path(a[1]), int(a[2]), int(a[3]), a[4] == "1")))
        elif cmd == "_run":
            print(json.dumps(child_run(a[0], Path(a[1]), int(a[2]), json.loads(a[3]))))
        elif cmd == "_crash":
            child_crash(a[0], Path(a[1]), int(a[2]))
        elif cmd == "_recover":
            print(json.dumps(child_recover(a[0], Path(a[1]), int(a[2]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1e5 and 1e6 entries")
    ap.add_argument("--max-size", type=float, default=1e8, help="largest store (default 1e8; 3e7 if it does not fit the budget)")
    ap.add_argument("--cache-sweep", type=float, default=None, metavar="N",
                    help="only: at N entries, rocksdict with a 256 MiB and a 1 GiB block cache beside LMDB, page cache warmed "
                         "first; added to the results file as cache_sweep")
    ap.add_argument("--budget-min", type=float, default=17.0, help="time budget in minutes for the full run")
    opt = ap.parse_args()
    if opt.cache_sweep:
        cache_sweep(int(opt.cache_sweep))
        return
    parent(opt.quick, opt.max_size, opt.budget_min)


if __name__ == "__main__":
    main()
