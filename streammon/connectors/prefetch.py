"""Read a source in a child process while the monitor processes: consuming and processing overlap.

A worker that polls, then processes, in one thread spends the sum of the two per event. kafka-python
parses records in Python, under the GIL, so a thread cannot overlap them; a process can. The child
owns the source (the Kafka consumer) and sends each batch as columns through a pipe, at most
``depth`` batches ahead; the parent keeps the Source protocol, so the monitor cannot tell.

Order is what keeps checkpoints exact: the pipe delivers batches and rebalance events in the order
the child saw them, and the child waits for the parent's answer to each rebalance event (the
offsets to resume from, or "checkpointed"), exactly as a listener called inside ``poll`` would.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from ..align import can_align
from ..errors import SourceError
from .base import Message, RebalanceListener

__all__ = ["PrefetchingSource"]

log = logging.getLogger("streammon")
_HEALTH_EVERY = 0.5  # seconds between health reports while idle


class PrefetchingSource:
    """Runs ``factory()`` (a source) in a child process and hands its batches out here.

    ``factory`` must be picklable: a class, or ``functools.partial(KafkaSource, servers, ...)``.
    Up to ``depth`` batches are read ahead. ``seek``, ``commit``, ``listen``, ``connected`` and
    ``lag()`` are forwarded to the child's source.

    >>> from functools import partial
    >>> from streammon.connectors import MemorySource
    >>> source = PrefetchingSource(partial(MemorySource, [{"id": "a", "ts": 1, "prediction": 1}]))
    >>> [m.value["id"] for m in source.poll(10, 5.0)], source.poll(10, 0.5), source.exhausted
    (['a'], [], True)
    >>> source.close()
    """

    def __init__(self, factory: Callable[[], Any], *, depth: int = 2, max_records: int = 4096, start_timeout: float = 60.0) -> None:
        context = multiprocessing.get_context("spawn")  # no fork: the parent may run threads (the metrics server)
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_child, args=(factory, child_conn, depth, max_records),
                                        name="streammon-source", daemon=True)
        self._process.start()
        child_conn.close()
        self._listener: RebalanceListener | None = None
        self._exhausted = False
        self._connected = True
        self._lag: dict[tuple[str, int], int] = {}
        self._started = False
        reply = self._receive(start_timeout)
        if reply is None or reply[0] != "ready":
            self._process.kill()
            reason = reply[1] if reply is not None and reply[0] == "error" else f"no answer in {start_timeout:.0f} s"
            raise SourceError(f"the source process did not start: {reason}")
        self.scale_out = reply[1]
        self._can_seek = reply[2]
        # Where the child's source can be read aligned (streammon.align): its topics and partitions.
        self.topics, self.input_partitions = reply[3], reply[4]

    # -- the Source protocol ----------------------------------------------------------------------
    def poll(self, max_records: int, timeout: float) -> list[Message]:
        if not self._started:
            self._send("start")
            self._started = True
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(max(0.0, deadline - time.monotonic()))
            if message is None:
                return []
            kind = message[0]
            if kind == "batch":
                self._send("credit")
                _, groups, self._connected, self._lag = message
                return _messages(groups)
            if kind == "health":
                _, self._connected, self._lag = message
            elif kind == "exhausted":
                self._exhausted = True
                return []
            elif kind == "assigned":
                self._send("offsets", dict(self._listener.assigned(message[1])) if self._listener else {})
            elif kind == "revoked":
                if self._listener is not None:
                    self._listener.revoked(message[1])
                self._send("ack")
            elif kind == "lost":
                lose = getattr(self._listener, "lost", None) or getattr(self._listener, "revoked", None)
                if lose is not None:
                    lose(message[1])
                self._send("ack")
            elif kind == "error":
                raise SourceError(f"the source process failed: {message[1]}")

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if not self._can_seek:
            if offsets:
                raise SourceError("the source in the child process cannot seek, so it cannot resume from a checkpoint")
            return
        self._send("seek", dict(offsets))

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self._send("commit", dict(offsets))

    def listen(self, listener: RebalanceListener) -> None:
        self._listener = listener
        self._send("listen")

    def pause(self, partitions: list[tuple[str, int]]) -> None:
        self._send("pause", list(partitions))

    def resume(self, partitions: list[tuple[str, int]]) -> None:
        self._send("resume", list(partitions))

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    @property
    def connected(self) -> bool:
        return self._connected

    def lag(self) -> dict[tuple[str, int], int]:
        return dict(self._lag)

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._send("close")
                self._process.join(30)
            except (BrokenPipeError, OSError):
                pass
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    # -- the pipe ---------------------------------------------------------------------------------
    def _send(self, *message: Any) -> None:
        self._conn.send(message)

    def _receive(self, timeout: float) -> tuple | None:
        try:
            if not self._conn.poll(timeout):
                if not self._process.is_alive():
                    raise SourceError(f"the source process died (exit code {self._process.exitcode})")
                return None
            return self._conn.recv()
        except EOFError:
            raise SourceError(f"the source process died (exit code {self._process.exitcode})") from None


def _messages(groups: list[tuple]) -> list[Message]:
    batch: list[Message] = []
    for topic, partition, kind, values, keys, offsets in groups:
        batch.extend(map(Message, values, [kind] * len(values), keys, [topic] * len(values), [partition] * len(values), offsets))
    return batch


def _columns(batch: list[Message]) -> list[tuple]:
    # Columns per input partition pickle ~8x faster than a list of messages.
    groups: dict[tuple, tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
    for m in batch:
        values, keys, offsets = groups[(m.topic, m.partition, m.kind)]
        values.append(m.value)
        keys.append(m.key)
        offsets.append(m.offset)
    return [(t, p, k, *cols) for (t, p, k), cols in groups.items()]


class _ListenerProxy:
    """In the child: each rebalance event goes to the parent, and the child waits for its answer."""

    def __init__(self, child: _Child) -> None:
        self._child = child

    def assigned(self, partitions: list[int]) -> dict[tuple[str, int], int]:
        return self._child.ask(("assigned", partitions), "offsets")

    def revoked(self, partitions: list[int]) -> None:
        self._child.ask(("revoked", partitions), "ack")

    def lost(self, partitions: list[int]) -> None:
        self._child.ask(("lost", partitions), "ack")


class _Child:
    def __init__(self, source: Any, conn: Any, depth: int, max_records: int) -> None:
        self.source, self.conn = source, conn
        self.credits, self.max_records = depth, max_records
        self.running, self.started = True, False

    def health(self) -> tuple[bool, dict]:
        connected = getattr(self.source, "connected", True)
        lag = self.source.lag() if callable(getattr(self.source, "lag", None)) else {}
        return connected, lag

    def handle(self, message: tuple) -> Any:
        kind = message[0]
        if kind == "credit":
            self.credits += 1
        elif kind == "commit":
            try:  # informational (the checkpoint holds the offsets); a failure must not break a rebalance's exchange
                self.source.commit(message[1])
            except Exception:
                log.warning("committing offsets to the consumer group failed; state is safe in the checkpoint", exc_info=True)
        elif kind == "seek":
            self.source.seek(message[1])
        elif kind in ("pause", "resume"):
            getattr(self.source, kind)(message[1])
        elif kind == "listen":
            self.source.listen(_ListenerProxy(self))
        elif kind == "start":
            self.started = True
        elif kind == "close":
            self.running = False
        return message

    def ask(self, question: tuple, answer: str) -> Any:
        if not self.running:  # closing: the consumer revokes as it leaves, and the parent has moved on
            return {} if answer == "offsets" else None
        self.conn.send(question)
        while True:  # the parent may commit (a revocation checkpoints) before it answers
            message = self.handle(self.conn.recv())
            if message[0] == answer:
                return message[1] if len(message) > 1 else None
            if not self.running:
                raise SystemExit(0)

    def run(self) -> None:
        last_health = 0.0
        while self.running:
            while self.conn.poll(0 if (self.credits and self.started) else 0.05):
                self.handle(self.conn.recv())
                if not self.running:
                    return
            if not (self.credits and self.started):
                continue
            batch = self.source.poll(self.max_records, 0.1)
            if batch:
                self.credits -= 1
                self.conn.send(("batch", _columns(batch), *self.health()))
            elif getattr(self.source, "exhausted", False):
                self.conn.send(("exhausted",))
                self.started = False  # nothing more to read; wait for close
            elif time.monotonic() - last_health > _HEALTH_EVERY:
                last_health = time.monotonic()
                self.conn.send(("health", *self.health()))


class _ParentPipe:
    """The child's end of the pipe. A parent killed outright resets it: that reads as the parent having
    gone (EOF on a read, a broken pipe on a write), not as a failure of the source to log."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def send(self, message: Any) -> None:
        try:
            self._conn.send(message)
        except ConnectionResetError:
            raise BrokenPipeError from None

    def recv(self) -> Any:
        try:
            return self._conn.recv()
        except ConnectionResetError:
            raise EOFError from None

    def poll(self, timeout: float = 0.0) -> bool:
        try:
            return self._conn.poll(timeout)
        except ConnectionResetError:
            raise EOFError from None


def _child(factory: Callable[[], Any], conn: Any, depth: int, max_records: int) -> None:
    conn = _ParentPipe(conn)
    # Parsing records allocates many short-lived objects and keeps none: the cyclic GC need not
    # rescan the client's long-lived state after every 700 of them (as Monitor.run does for the worker).
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        source = factory()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    child = _Child(source, conn, depth, max_records)
    try:
        aligned = can_align(source)
        conn.send(("ready", bool(getattr(source, "scale_out", False)), callable(getattr(source, "seek", None)),
                   dict(source.topics) if aligned else None, list(getattr(source, "input_partitions", [])) if aligned else []))
        child.run()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the parent went away
        pass
    except Exception as exc:
        log.exception("the source process failed")
        with contextlib.suppress(OSError):  # the parent may be gone too
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        child.running = False  # the consumer's revocation as it closes asks no one
        source.close()
