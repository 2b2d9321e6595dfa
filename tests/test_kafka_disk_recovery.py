"""Kafka end to end on the disk-backed join store: a worker holding over 1e6 pending predictions on disk,
SIGKILLed 20 times while it works through a backlog, still publishes the from-scratch oracle."""

from __future__ import annotations

import functools
import json
import platform
import random
import signal
import time
from dataclasses import dataclass

import pytest

from tests import kafka_oracle
from tests.kafka_oracle import aligned, assert_equals_oracle, partition_of
from tests.oracle import run_oracle
from tests.test_kafka_recovery import events_seen, read_everything, start_worker
from tests.worker_helpers import Worker, create_topics, free_port, scrape, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
PARTITIONS = 4
N_PREDICTIONS = 1_100_000
MIN_PENDING = 1_000_000
DEFAULT_TTLS = dict(feedback_ttl=7 * 86400, prediction_ttl=3600)  # tests/kafka_app.py:default_ttls
VARIANTS = [["--prefetch"], ["--kafka-client", "confluent"], []]  # the restarts' extra arguments, in turn


def make_backlog(n_predictions: int, seed: int = 13, spacing: float = 0.1, labelled: float = 0.05) -> list[tuple[str, str, bytes]]:
    """(topic, key, value) in production order, ordered by when each record is sent (a clock ``spacing`` s
    per prediction). Only ``labelled`` of the predictions get feedback; of those, 30 % carry a time before
    their prediction's and are sent before it (early feedback: a sixth of them over an hour early, so they
    time out), the rest some minutes after. Besides: out-of-order and late times, duplicates of both sides
    and malformed records, as tests/test_kafka_recovery.py:make_events has them. Small payloads."""
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    sends: list[tuple[float, int, str, str, bytes]] = []  # (send time, tie-break, topic, key, value)

    def send(at, topic, key, value):
        sends.append((at, len(sends), topic, key, value))

    for i in range(n_predictions):
        clock = t0 + i * spacing
        ts = round(clock + rng.uniform(-30, 30), 3)  # out of order
        if rng.random() < 0.01:
            ts -= 3000  # late for the 10-minute window
        pid = f"p{i:07d}"
        pred = rng.randint(0, 1)
        value = b'{"id":"%s","ts":%r,"prediction":%d,"score":%.4f,"segment":{"version":"v%d"}}' % (
            pid.encode(), ts, pred, rng.random(), i % 3)
        send(clock, "predictions", pid, value)
        if rng.random() < 0.005:  # a duplicate, other answer: first wins
            send(clock + rng.uniform(0, 5), "predictions", pid, value.replace(b'"prediction":%d' % pred, b'"prediction":%d' % (1 - pred)))
        if rng.random() < 0.003:
            send(clock, "predictions", pid, b'{"id": "' + pid.encode() + b'", "ts": "yesterday"')
        if rng.random() < labelled:
            u = rng.random()
            if u < 0.05:
                fts = ts - rng.uniform(4000, 6000)  # early by more than prediction_ttl: expires
            elif u < 0.30:
                fts = ts - rng.uniform(60, 900)  # early
            else:
                fts = ts + rng.uniform(1, 600)
            fts = round(fts, 3)
            y = rng.randint(0, 1)
            at = max(fts, clock - 6000) + rng.uniform(0, 30)
            send(at, "feedback", pid, b'{"id":"%s","ts":%r,"label":%d}' % (pid.encode(), fts, y))
            if rng.random() < 0.01:
                send(at + rng.uniform(0, 60), "feedback", pid, b'{"id":"%s","ts":%r,"label":%d}' % (pid.encode(), fts + 5, 1 - y))
        if rng.random() < 0.0005:  # feedback for an id never predicted: waits, then expires
            fid = f"q{i:07d}"
            send(clock, "feedback", fid, b'{"id":"%s","ts":%r,"label":1}' % (fid.encode(), ts))
    sends.sort()
    return [(topic, key, value) for _, _, topic, key, value in sends]



def produce(bootstrap_servers: str, topics: dict[str, str], events) -> None:
    """Send ``events`` in order, each id to ``partition_of`` its key. confluent-kafka: ~10x kafka-python's rate
    here (1.2M messages in ~5 s against ~40 s), which keeps the test inside its time budget."""
    ck = pytest.importorskip("confluent_kafka")
    failed: list = []
    producer = ck.Producer({"bootstrap.servers": bootstrap_servers, "compression.type": "gzip", "linger.ms": 50,
                            "batch.size": 1 << 20, "queue.buffering.max.messages": 2_000_000,
                            "queue.buffering.max.kbytes": 1 << 21, "error_cb": failed.append,
                            "on_delivery": lambda err, _msg: err is not None and failed.append(err)})
    for topic, key, value in events:
        producer.produce(topics[topic], value, key.encode(), partition=partition_of(key, PARTITIONS))
    assert producer.flush(120) == 0, "messages left unsent"
    assert not failed, failed[:5]


# fsync, fdatasync: the store's commit is one synced RocksDB write, made by the worker's main thread.
SYNC_SYSCALLS = {"x86_64": {"74", "75"}, "aarch64": {"82", "83"}}.get(platform.machine(), set())


def syncing(pid: int) -> bool:
    """Whether the main thread of process ``pid`` is inside fsync/fdatasync right now (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split(" ", 1)[0] in SYNC_SYSCALLS
    except OSError:
        return False


@dataclass
class Kill:
    aim: str  # "startup": soon after the start; "commit": inside the store's synced commit; "anywhere"
    variant: tuple[str, ...]  # the killed worker's extra arguments
    after: float  # seconds it had run
    first: float | None  # events its /metrics showed first: about where it resumed (None: not asked)
    seen: float | None  # events it had counted (restored and new), None before its /metrics answered
    in_commit: bool  # the kill landed while it was in fsync/fdatasync


AIMS = ("anywhere", "commit", "startup", "commit")  # 4 against the 3 variants: every pairing comes up


def progress(port: int) -> float | None:
    try:
        return events_seen(scrape(port))
    except OSError:
        return None


def kill_through_backlog(start, port: int, total: int, kills: int, rng: random.Random, variants) -> tuple[Worker, list[Kill]]:
    """tests/test_kafka_recovery.py:kill_repeatedly, with moments aimed so that kills land throughout a backlog of
    ``total`` events whatever its speed: kill ``k`` waits for the worker to have counted a random point of the
    ``k``-th of ``kills + 1`` slices of the backlog ("anywhere"), or for that and then its next synced commit
    ("commit"), or kills within 2.5 s of the start (imports, opening the store, restore, group join). Returns the
    last worker, left running, and what each kill hit."""
    worker, variant, started, done = start(), (), time.monotonic(), []
    for k in range(kills):
        aim = AIMS[k % len(AIMS)]
        first: list[float] = []
        if aim == "startup":
            time.sleep(rng.uniform(0.1, 2.5))
        else:
            target = total * (k + rng.uniform(0.2, 0.9)) / (kills + 1)

            def reached(target=target, first=first):
                first.append(events_seen(scrape(port)))
                return first[-1] >= target
            wait_for(reached, 120, f"the worker to count {target:.0f} events", workers=[worker])
            time.sleep(rng.uniform(0, 0.3))
        seen = progress(port)
        hit = False
        if aim == "commit" and SYNC_SYSCALLS:
            deadline = time.monotonic() + 3.0  # ten checkpoints at --checkpoint-interval 0.3
            while not (hit := syncing(worker.pid)) and time.monotonic() < deadline:
                pass
        if worker.poll() is not None:
            raise AssertionError(f"worker died by itself:\n{worker.report()}")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        done.append(Kill(aim, variant, round(time.monotonic() - started, 2), first[0] if first else None, seen, hit))
        variant = tuple(variants[k % len(variants)])
        worker, started = start(*variant), time.monotonic()
    return worker, done


def differences(got: dict, oracle, log) -> str:
    """The join's counters on /metrics against the oracle's, and the worker log's lines about order and runs."""
    def value(name, **labels):
        return got.get((name, tuple(sorted({"monitor": "kafka_test", **labels}.items()))))
    rows = [("joined", value("streammon_joined_total"), oracle.joined)]
    for side in ("prediction", "feedback"):
        rows += [(f"pending {side}", value("streammon_join_pending", side=side),
                  oracle.pending_predictions if side == "prediction" else oracle.pending_feedback),
                 (f"expired {side}", value("streammon_join_expired_total", side=side), oracle.expired[side]),
                 (f"duplicates {side}", value("streammon_duplicates_total", side=side), oracle.duplicates[side])]
    table = "\n".join(f"  {name:20} worker {w}  oracle {o}{'  <-' if w != o else ''}" for name, w, o in rows)
    lines = [line for line in log.read_text().splitlines(keepends=True) if "rejected event" not in line]
    return f"/metrics differ from the oracle:\n{table}\nworker log ({log}), less rejected events:\n{''.join(lines)}"


def accepted_of(events) -> list[dict]:
    return [json.loads(value) for topic, key, value in events if kafka_oracle.valid(topic, key, value)]


def test_sigkill_twenty_times_with_a_million_pending_on_disk(broker, tmp_path, monkeypatch):
    """A backlog of 1.1M predictions, 5 % labelled (a quarter of those early, some timing out): the disk store
    ends with over 1e6 predictions pending. 20 SIGKILLs through it, a third of them inside the store's synced
    commit, restarts alternating --prefetch, confluent and plain; then /metrics must equal the oracle."""
    t_start = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 1)
        return now

    events = make_backlog(N_PREDICTIONS)
    t = lap("generate", t_start)
    topics = {"predictions": "disk-backlog-p", "feedback": "disk-backlog-f"}
    create_topics(broker, topics.values(), PARTITIONS)
    produce(broker.bootstrap_servers, topics, events)
    t = lap("produce", t)

    # valid() decodes each record as the worker does; aligned() and assert_equals_oracle() each call it on
    # every record. Memoized it is the same function (pure: a record's bytes and topic decide), at half the cost.
    monkeypatch.setattr(kafka_oracle, "valid", functools.lru_cache(maxsize=None)(kafka_oracle.valid))
    expected_order = aligned(events, PARTITIONS)

    # The comparison can fail. A double count after a kill is the worker re-reading events its state already
    # holds (offsets and state not written together): on the first 40k records in processing order, a replay of
    # 10k of them changes what assert_equals_oracle compares with the worker's /metrics (duplicates, the
    # per-version counts); read_everything() compares streammon_events_total with len(events) exactly, which
    # both a loss and a re-count break. (At the end, a scrape with one prediction counted twice is refused.)
    prefix = expected_order[:40_000]
    once = run_oracle(accepted_of(prefix), segments=("version",), **DEFAULT_TTLS)
    twice = run_oracle(accepted_of(prefix[:30_000] + prefix[20_000:]), segments=("version",), **DEFAULT_TTLS)
    assert len(twice.select("prediction", None)) == len(once.select("prediction", None))  # dropped as duplicates,
    assert twice.duplicates["prediction"] > once.duplicates["prediction"]  # and counted: streammon_duplicates_total
    assert twice.duplicates["feedback"] > once.duplicates["feedback"]
    t = lap("align and prefix check", t)

    port = free_port()
    args = ["--topics", f"{topics['predictions']},{topics['feedback']}", "--group", "disk-backlog", "--join-store", "disk"]

    runs = []

    def start(*extra):  # each run's lines in the shared log start with a line saying which run it is
        runs.append(extra)
        with open(tmp_path / "worker.log", "a") as log:
            log.write(f"--- test: run {len(runs)}, extra arguments {list(extra)}\n")
        return start_worker(broker, tmp_path, port, *args, *extra, app="tests/kafka_app.py:default_ttls")
    worker, kills = kill_through_backlog(start, port, len(events), 20, random.Random(17), VARIANTS)
    t = lap("kills", t)
    try:
        got = read_everything(port, len(events), 180, worker)
    finally:
        worker.stop(timeout=20)
    t = lap("final read", t)
    print(f"\n{len(events)} messages; kills:")
    for kill in kills:
        print(f"  {kill}")

    assert len(kills) == 20
    seen = [k.seen for k in kills if k.aim != "startup"]
    assert None not in seen and seen[0] < len(events) / 10 and max(seen) < len(events), "kills must span the backlog"
    if SYNC_SYSCALLS:
        assert sum(k.in_commit for k in kills) >= 5, "too few kills landed inside a commit"

    oracles = []

    @functools.wraps(run_oracle)
    def computed_once(accepted, **kwargs):  # the same oracle, kept: the check of a double count below reuses it
        if oracles and oracles[0][0] == (accepted, kwargs):
            return oracles[0][1]
        oracles[:] = [((accepted, kwargs), run_oracle(accepted, **kwargs))]
        return oracles[0][1]
    monkeypatch.setattr(kafka_oracle, "run_oracle", computed_once)
    try:
        assert_equals_oracle(got, expected_order, **DEFAULT_TTLS)
    except AssertionError as exc:
        raise AssertionError(differences(got, oracles[0][1], tmp_path / "worker.log")) from exc
    pending_key = ("streammon_join_pending", (("monitor", "kafka_test"), ("side", "prediction")))
    oracle = oracles[0][1]
    assert got[pending_key] == oracle.pending_predictions >= MIN_PENDING
    t = lap("oracle", t)

    key = ("streammon_predictions", tuple(sorted({"monitor": "kafka_test", "model": "default", "window": "cumulative",
                                                  "version": "v1"}.items())))
    with pytest.raises(AssertionError):
        assert_equals_oracle({**got, key: got[key] + 1}, expected_order, **DEFAULT_TTLS)
    lap("double-count check", t)
    timings["total"] = round(time.monotonic() - t_start, 1)
    print(f"pending predictions {got[pending_key]:.0f}; seconds: {timings}")
