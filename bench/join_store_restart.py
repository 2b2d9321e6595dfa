"""How long a killed worker's disk-backed join store takes to open again, by size.

``python bench/join_store_restart.py [--sizes 1e6,1e7]``. For each size a child fills a
``DiskJoinStore`` with that many pending predictions (committing as a worker does), changes more
without committing, and dies by SIGKILL without closing the store; a fresh interpreter then opens it
(RocksDB replays its write-ahead log) and reads the pending count, which is what /metrics shows
first. Written to bench/results/join_store_restart.json. The rest of a restart (the engine's
snapshot, seeking Kafka) is not in this figure.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from report import machine  # noqa: E402

SETTINGS = dict(feedback_ttl=1e12, prediction_ttl=1e12, max_pending=10**10)
BATCH = 4096


def fill(path: str, size: int) -> None:
    """In a child: fill, commit every 25 batches, then change one more interval's worth and wait to be killed."""
    from streammon.disk_store import DiskJoinStore

    store = DiskJoinStore(path, **SETTINGS)
    for b, lo in enumerate(range(0, size + 25 * BATCH, BATCH)):
        n = BATCH
        ids = [f"{i:032x}" for i in range(lo, lo + n)]
        store.join([True] * n, ids, [float(lo)] * n, [0] * n, [1] * n, [0.5] * n, [float(lo)] * n)
        if lo < size and b % 25 == 24:
            store.commit({b"filled": str(lo + n).encode()})
    print("ready", flush=True)
    time.sleep(3600)


def reopen(path: str) -> dict:
    started = time.perf_counter()
    from streammon.disk_store import DiskJoinStore
    imported = time.perf_counter()
    store = DiskJoinStore(path, **SETTINGS)
    pending = store.pending_predictions
    opened = time.perf_counter()
    return {"open_s": round(opened - imported, 3), "import_s": round(imported - started, 3), "pending": pending,
            "committed": int(store.meta(b"filled") or 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--fill", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--reopen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        fill(args.fill[0], int(args.fill[1]))
        return
    if args.reopen:
        print(json.dumps(reopen(args.reopen)))
        return
    rows = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        workdir = tempfile.mkdtemp(prefix="join-restart-", dir="/tmp")
        path = str(Path(workdir) / "join")
        child = subprocess.Popen([sys.executable, __file__, "--fill", path, str(size)], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        child.wait()
        done = subprocess.run([sys.executable, __file__, "--reopen", path], capture_output=True, text=True, check=True)
        row = {"size": size, **json.loads(done.stdout.strip().splitlines()[-1]),
               "disk_mib": round(sum(f.stat().st_size for f in Path(workdir).rglob("*") if f.is_file()) / 2**20, 1),
               "wal_mib": round(sum(f.stat().st_size for f in Path(path).glob("*.log")) / 2**20, 1)}
        rows.append(row)
        print(row, flush=True)
        subprocess.run(["rm", "-rf", workdir], check=False)
    out = ROOT / "bench" / "results" / "join_store_restart.json"
    out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine(ROOT), "rows": rows}, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
