"""The PostgreSQL approach: predictions and feedback tables, joined in SQL.

The server is Debian's PostgreSQL, started here on loopback with a temporary data directory (as the
``postgres`` user when we are root) and stopped at exit. Two ways to read the metrics are timed:
the join on demand, and a materialized view of the join that is refreshed after every batch of
feedback, the way a tracker keeps a metric fresh with a database.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import statistics
import subprocess
import tempfile
import time

from .data import Events, oracle, window_bounds
from .prom import OWN_DIRS, free_port
from .timing import repeat

__all__ = ["Postgres", "SETTINGS", "run_postgres"]

# Tuned as a team would for an analytics join (the defaults, 128MB / 4MB, make the hash join spill).
SETTINGS = {"shared_buffers": "1GB", "work_mem": "64MB", "max_wal_size": "4GB"}

_SCHEMA = """
DROP MATERIALIZED VIEW IF EXISTS joined;
DROP TABLE IF EXISTS predictions, feedback;
CREATE TABLE predictions (output_id text PRIMARY KEY, ts double precision NOT NULL, y_pred smallint NOT NULL);
CREATE TABLE feedback (output_id text PRIMARY KEY, ts double precision NOT NULL, y_true smallint NOT NULL);
CREATE INDEX predictions_ts ON predictions (ts);
CREATE MATERIALIZED VIEW joined AS
    SELECT p.output_id, p.ts, p.y_pred, f.y_true FROM predictions p JOIN feedback f USING (output_id);
CREATE INDEX joined_ts ON joined (ts);
"""
_COUNTS = ("SELECT count(*), count(*) FILTER (WHERE {p}y_pred = {f}y_true), "
           "count(*) FILTER (WHERE {p}y_pred = 1 AND {f}y_true = 1), "
           "count(*) FILTER (WHERE {p}y_pred = 1), count(*) FILTER (WHERE {f}y_true = 1) ")
QUERIES = {
    "join": _COUNTS.format(p="p.", f="f.") + "FROM predictions p JOIN feedback f USING (output_id)",
    "join_1h": _COUNTS.format(p="p.", f="f.") + "FROM predictions p JOIN feedback f USING (output_id) "
                                                "WHERE p.ts >= %s AND p.ts < %s",
    "view": _COUNTS.format(p="", f="") + "FROM joined",
    "view_1h": _COUNTS.format(p="", f="") + "FROM joined WHERE ts >= %s AND ts < %s",
}


def _bin_dir() -> str:
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(os.path.realpath(found))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return os.path.dirname(versions[-1])


class Postgres:
    """``with Postgres() as pg: conn = pg.connect()``: a throwaway server on a free loopback port."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="compare-pg-")
        OWN_DIRS.append(self.dir)
        self.as_postgres = os.geteuid() == 0  # the server refuses to run as root
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [os.path.join(self.bin, args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.dir)

    def __enter__(self) -> Postgres:
        data = os.path.join(self.dir, "data")
        self._run("initdb", "-D", data, "-A", "trust", "-U", "bench", "-E", "UTF8", "--no-sync")
        options = " ".join([f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1",
                            *(f"-c {k}={v}" for k, v in SETTINGS.items())])
        self._run("pg_ctl", "-D", data, "-o", options, "-l", os.path.join(self.dir, "server.log"), "-w", "start")
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="bench", dbname="postgres")


def _rows(events: Events, start: int, stop: int) -> tuple[list, list]:
    order, fb = events.order[start:stop], events.is_feedback[start:stop]
    p, f = order[~fb], order[fb]
    preds = list(zip(events.ids[p].tolist(), events.pred_ts[p].tolist(), events.y_pred[p].tolist()))
    feedback = list(zip(events.ids[f].tolist(), events.fb_ts[f].tolist(), events.y_true[f].tolist()))
    return preds, feedback


def _metrics(counts: tuple) -> dict[str, float]:
    n, right, tp, predicted, positive = counts
    return {"accuracy": right / n if n else float("nan"), "precision": tp / predicted if predicted else 0.0,
            "recall": tp / positive if positive else 0.0, "pairs": n}


def run_postgres(pg: Postgres, events: Events, *, batch: int, reps: int) -> dict:
    """Load ``events`` in arrival order, ``batch`` arrivals per transaction, refreshing the view after each;
    then time every query. Returns timings, answers and sizes."""
    lo, hi = window_bounds(events.stream_time)
    with pg.connect() as conn:
        conn.execute(_SCHEMA)
        conn.commit()
        inserts, refreshes = [], []
        for k in range(0, len(events.order), batch):
            preds, feedback = _rows(events, k, k + batch)
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                with cur.copy("COPY predictions (output_id, ts, y_pred) FROM STDIN") as copy:
                    for row in preds:
                        copy.write_row(row)
                with cur.copy("COPY feedback (output_id, ts, y_true) FROM STDIN") as copy:
                    for row in feedback:
                        copy.write_row(row)
            conn.commit()
            t1 = time.perf_counter()
            conn.execute("REFRESH MATERIALIZED VIEW joined")
            conn.commit()
            refreshes.append(time.perf_counter() - t1)
            inserts.append(t1 - t0)
        conn.autocommit = True
        conn.execute("ANALYZE predictions, feedback, joined")  # what autovacuum would have done by now
        out = {"insert_s": sum(inserts), "refresh_total_s": sum(refreshes), "refresh_last_s": refreshes[-1],
               "batches": len(refreshes), "queries": {}, "answers": {}}
        expected = {"join": oracle(events), "join_1h": oracle(events, lo, hi)}
        expected["view"], expected["view_1h"] = expected["join"], expected["join_1h"]
        for name, sql in QUERIES.items():
            params = (lo, hi) if name.endswith("_1h") else None
            times, counts = repeat(lambda sql=sql, params=params: conn.execute(sql, params).fetchone(), reps)
            out["queries"][name] = statistics.median(times)
            out["answers"][name] = (_metrics(counts), expected[name])
        out["bytes"] = conn.execute(
            "SELECT pg_total_relation_size('predictions') + pg_total_relation_size('feedback')").fetchone()[0]
        out["view_bytes"] = conn.execute("SELECT pg_total_relation_size('joined')").fetchone()[0]
    return out
