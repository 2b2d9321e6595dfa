"""The two join stores side by side: ``MemoryJoinStore`` and ``DiskJoinStore`` on the same stream.

``python bench/join_store_bench.py [--quick]``. For each size, each store runs in a fresh interpreter:
it is filled with that many pending predictions, then held at its TTL (every batch adds predictions,
joins feedback of older ones and expires as many as it adds), committing every 25 batches (the disk
store: one synced write batch; the memory store: nothing, its checkpoint is a full snapshot elsewhere).
Printed and written to bench/results/join_store.json: us per event of ``join`` + ``expire``, the
slowest batch, the commit's cost per changed entry, and the RSS the store adds to the interpreter's.
One run, same machine: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 4096


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_one(kind: str, size: int, batches: int) -> dict:
    """In this interpreter: fill a store with ``size`` pending predictions, then time ``batches`` at its TTL."""
    sys.path.insert(0, str(ROOT))
    from streammon.disk_store import DiskJoinStore
    from streammon.memory_store import MemoryJoinStore

    ttl = float(size)  # one event per second of event time: the store holds `size` predictions at its TTL
    settings = dict(feedback_ttl=ttl, prediction_ttl=ttl, max_pending=10 * size)
    workdir = tempfile.mkdtemp(prefix="join-store-", dir="/tmp")
    rss_before = rss_bytes()  # the interpreter and its imports: not the store's
    store = DiskJoinStore(Path(workdir) / "join", **settings) if kind == "disk" else MemoryJoinStore(**settings)
    commit = getattr(store, "commit", None)
    made = 0  # ids are numbers written out, so the benchmark keeps none in memory itself

    def ids(lo: int, hi: int) -> list[str]:
        return [f"{i:032x}" for i in range(lo, hi)]

    def predictions(n: int, t0: float) -> tuple:
        nonlocal made
        new = ids(made, made + n)
        made += n
        return [True] * n, new, [t0 + i for i in range(n)], [0] * n, [1] * n, [0.5] * n

    started = time.perf_counter()
    t = 0.0
    # (entries, us per prediction over the last tenth of the fill incl. commits, RSS MiB[, what RocksDB says it holds, MiB])
    fill_curve = []
    tenth, mark, marked_at = max(size // 10, BATCH), 0, started
    for _ in range(0, size, BATCH):
        p, i, ts, c, v, s = predictions(BATCH, t)
        t += BATCH
        store.join(p, i, ts, c, v, s, [t] * len(i))
        if commit is not None and made % (25 * BATCH) == 0:
            commit()
        if made - mark >= tenth:
            now = time.perf_counter()
            fill_curve.append((made, round((now - marked_at) / (made - mark) * 1e6, 3),
                               round((rss_bytes() - rss_before) / 2**20, 1),
                               *([round(sum(store.memory_usage().values()) / 2**20, 1)] if kind == "disk" else [])))
            mark, marked_at = made, now
    if commit is not None:
        commit()
    fill_s = time.perf_counter() - started
    rss_filled = rss_bytes()
    half = BATCH // 2
    times, commits, changes = [], [], 0
    for b in range(batches):
        p, i, ts, c, v, s = predictions(half, t)
        # Feedback for the predictions made a quarter of the TTL ago, each once: the store is read where it is old.
        lag = size // 4
        old = ids(made - lag - half, made - lag)
        p, i = p + [False] * len(old), i + old
        ts, c, v, s = ts + [t] * len(old), c + [0] * len(old), v + [1] * len(old), s + [None] * len(old)
        t += half
        nows = [t] * len(i)
        began = time.perf_counter()
        store.join(p, i, ts, c, v, s, nows)
        store.expire(t)
        times.append(time.perf_counter() - began)
        changes += 3 * half  # a new prediction, a join, an expiry per half of the batch
        if commit is not None and b % 25 == 24:
            began = time.perf_counter()
            commit()
            commits.append((time.perf_counter() - began, changes))
            changes = 0
    events = batches * (half + half)
    out = {
        "store": kind, "size": size, "fill_s": round(fill_s, 2),
        "us_per_event": round(sum(times) / events * 1e6, 3),
        "batch_ms_median": round(sorted(times)[len(times) // 2] * 1000, 2),
        "batch_ms_max": round(max(times) * 1000, 2),
        "pending_at_end": store.pending_predictions,
        "rss_mib_filled": round((rss_filled - rss_before) / 2**20, 1),
        "rss_mib_end": round((rss_bytes() - rss_before) / 2**20, 1),
        "fill_curve": fill_curve,
    }
    if commits:
        out["commit_ms_median"] = round(sorted(c for c, _ in commits)[len(commits) // 2] * 1000, 2)
        out["commit_us_per_change"] = round(sum(c for c, _ in commits) / sum(n for _, n in commits) * 1e6, 3)
        out["disk_mib"] = round(sum(f.stat().st_size for f in Path(workdir).rglob("*") if f.is_file()) / 2**20, 1)
    if kind == "disk":
        out["rocksdb_mib"] = {k: round(v / 2**20, 1) for k, v in store.memory_usage().items()}
        store.close()
    subprocess.run(["rm", "-rf", workdir], check=False)
    return out


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    import rocksdict
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(int(mem) / 2**20, 1), "python": platform.python_version(),
            "kernel": platform.release(), "rocksdict": getattr(rocksdict, "__version__", "?")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1e5 and 3e5 entries only")
    parser.add_argument("--one", nargs=3, metavar=("STORE", "SIZE", "BATCHES"), help=argparse.SUPPRESS)
    parser.add_argument("--large", type=float, metavar="SIZE",
                        help="the disk store alone at SIZE entries (e.g. 1e8); writes bench/results/join_store_large.json")
    args = parser.parse_args()
    if args.large:
        done = subprocess.run([sys.executable, __file__, "--one", "disk", str(int(args.large)), "100"], capture_output=True,
                              text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(row)
        out = ROOT / "bench" / "results" / "join_store_large.json"
        out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine(), "rows": [row]}, indent=2) + "\n")
        print(f"written to {out.relative_to(ROOT)}")
        return
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    sizes = [100_000, 300_000] if args.quick else [100_000, 1_000_000, 3_000_000, 10_000_000]
    rows = []
    for size in sizes:
        for kind in ("memory", "disk"):
            done = subprocess.run([sys.executable, __file__, "--one", kind, str(size), "100"], capture_output=True,
                                  text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(row, flush=True)
    print("\n| size | memory us/ev | disk us/ev | disk / memory | disk batch max ms | disk commit us/change | RSS MiB memory / disk |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in sizes:
        m, d = (next(r for r in rows if r["size"] == size and r["store"] == k) for k in ("memory", "disk"))
        print(f"| {size:.0e} | {m['us_per_event']} | {d['us_per_event']} | {d['us_per_event'] / m['us_per_event']:.2f}x | "
              f"{d['batch_ms_max']} | {d.get('commit_us_per_change')} | {m['rss_mib_end']} / {d['rss_mib_end']} |")
    out = ROOT / "bench" / "results" / ("join_store_quick.json" if args.quick else "join_store.json")
    out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine(), "rows": rows}, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
