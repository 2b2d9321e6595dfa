"""Scale-out worker: one engine per input partition it owns, handed over with its checkpoint.

A partition number ``i`` stands for partition ``i`` of both topics. Each has its own join store,
window partials, counters, stream time and offsets, checkpointed together to
``<state_dir>/partition-<i>.pkl``. When the group takes a partition away, the worker checkpoints it
before letting go; the worker that gets it restores that checkpoint and seeks to its offsets. Every
``publish_interval`` the worker writes each partition's partial aggregates
(``partials-<i>.pkl``), which ``Monitor.export`` merges into the global metrics.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .checkpoint import BackgroundWrite, Checkpointer, CheckpointError, dump_engine, require_picklable, state_directory
from .align import EventTimeAligner, can_align
from .connectors.base import Message, next_offsets
from .engine import Engine, Health
from .errors import SourceError
from .partials import dump_partials, published_lineage, require_mergeable, write_partials

if TYPE_CHECKING:
    from .monitor import Monitor

__all__ = ["PartitionWorker", "run_partitioned"]

log = logging.getLogger("streammon")


@dataclass
class Partition:
    number: int
    engine: Engine
    checkpointer: Checkpointer
    lineage: str
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    unsaved: bool = False
    unpublished: bool = True


class PartitionWorker:
    """The partitions this worker owns, as the consumer group assigns and revokes them."""

    def __init__(self, monitor: "Monitor", source: Any, state_dir: str, *, checkpoint_interval: float,
                 max_idle: float = 0.5) -> None:
        self.monitor = monitor
        self.source = source
        # Each partition number is one group: both topics of it, aligned by event time (streammon.align).
        self.aligner = EventTimeAligner(source.topics, max_idle=max_idle) if can_align(source) else None
        self.directory = state_directory(state_dir)
        if (self.directory / "snapshot.pkl").exists():
            raise CheckpointError(f"{state_dir} holds a single worker's snapshot; a scaled-out group keeps state per "
                                  f"partition: give it another --state-dir, or run without scale-out")
        self.checkpoint_interval = checkpoint_interval
        self.partitions: dict[int, Partition] = {}
        self._parked: dict[int, tuple[Partition, Any]] = {}
        self.health = Health()  # this process's batches, for its own /metrics
        self.last_saved: float | None = None
        self._writing: tuple[BackgroundWrite, dict[tuple[str, int], int]] | None = None

    # -- the RebalanceListener protocol ---------------------------------------------------------
    def assigned(self, numbers: list[int]) -> dict[tuple[str, int], int]:
        offsets: dict[tuple[str, int], int] = {}
        parked, self._parked = self._parked, {}
        for number in numbers:
            partition = self.partitions.get(number) or self._unpark(parked.get(number)) or self._open(number)
            offsets.update(partition.offsets)
            if self.aligner is not None:  # the source seeks to the processed offsets: what was buffered comes again
                self.aligner.track([(topic, number) for topic in self.source.topics], number, partition.engine.input_marks)
        log.info("assigned partitions %s (now %s)", numbers, sorted(self.partitions))
        return offsets

    def revoked(self, numbers: list[int]) -> None:
        try:
            self.checkpoint([n for n in numbers if n in self.partitions])
        finally:  # let go even if the save failed: the new owner resumes from the last good checkpoint
            with self.monitor._lock:
                for number in numbers:
                    self._unalign(number)
                    partition = self.partitions.pop(number, None)
                    if partition is not None and not partition.unsaved:
                        # Kept until the assignment that follows: a partition that stays here (the
                        # assignor is sticky) goes on from memory instead of reloading its checkpoint.
                        self._parked[number] = (partition, _stamp(partition.checkpointer.path))
        log.info("revoked partitions %s (now %s)", numbers, sorted(self.partitions))

    def _unpark(self, parked: tuple[Partition, Any] | None) -> Partition | None:
        if parked is None:
            return None
        partition, stamp = parked
        if _stamp(partition.checkpointer.path) != stamp:  # another worker wrote it since: load theirs
            return None
        self.partitions[partition.number] = partition
        return partition

    def lost(self, numbers: list[int]) -> None:
        # Evicted from the group: the new owner resumes from the last checkpoint, which this worker
        # must not overwrite now. What it processed since then is read again by the new owner.
        with self.monitor._lock:
            for number in numbers:
                self._unalign(number)
                self.partitions.pop(number, None)
        log.warning("lost partitions %s to the group (evicted); their state since the last checkpoint is dropped", numbers)

    def _unalign(self, number: int) -> None:
        if self.aligner is not None:
            self.aligner.drop_group(number)

    def _open(self, number: int) -> Partition:
        engine = self.monitor._new_engine(self.monitor.metrics)
        checkpointer = Checkpointer(self.directory, interval=self.checkpoint_interval, name=f"partition-{number}")
        with self.monitor._lock:
            offsets = checkpointer.restore(engine)
            self.monitor._apply_settings_to_restored_state(engine)
        if checkpointer.lineage is None:
            # No checkpoint yet: a worker that died before its first one may have published partials
            # ahead of this fresh start. Taking their lineage keeps them shown until this one catches
            # up, rather than stepping the metric back to zero.
            checkpointer.lineage = published_lineage(self.directory, number, engine) or uuid.uuid4().hex
        partition = Partition(number, engine, checkpointer, checkpointer.lineage, dict(offsets or {}))
        self.partitions[number] = partition
        return partition

    # -- work -----------------------------------------------------------------------------------
    def process(self, batch: Sequence[Message]) -> None:
        if self.aligner is not None:
            return self._process_aligned(batch)
        started = time.perf_counter()
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for msg in batch:
            by_partition[msg.partition].append(msg)
        for number, messages in by_partition.items():
            partition = self.partitions.get(number)
            if partition is None:
                # The consumer hands out only partitions the group assigned, after the listener has
                # opened them; skipping would lose these events. A restart resumes from checkpoints.
                raise SourceError(f"messages of partition {number}, which this worker does not own: the group's "
                                  f"assignment and this worker's state disagree; restart the worker")
            self.monitor._process_into(partition.engine, messages)
            partition.offsets.update(next_offsets(messages))
            partition.unsaved = partition.unpublished = True
        self.health.observe_batch(time.perf_counter() - started)

    def _process_aligned(self, batch: Sequence[Message]) -> None:
        started = time.perf_counter()
        aligner = self.aligner
        if batch:
            aligner.add(self.monitor._decode(batch))
        released = aligner.release(self.source.lag())
        aligner.flow(self.source)
        for number, (decoded, marks) in released.items():
            partition = self.partitions[number]  # tracked only while owned
            self.monitor._apply_aligned(partition.engine, decoded, marks)
            partition.offsets.update(next_offsets([d.message for d in decoded]))
            partition.unsaved = partition.unpublished = True
        if released:
            self.health.observe_batch(time.perf_counter() - started)

    def checkpoint(self, numbers: Sequence[int] | None = None, *, background: bool = False) -> None:
        """Save the partitions' state with their offsets, publish their partials, then commit the offsets.

        ``background``: a forked child writes the snapshots while the worker goes on, and the
        offsets are committed by :meth:`collect` once they are on disk.
        """
        self.collect(wait=True)  # one write at a time: an older snapshot never lands after a newer one
        chosen = [self.partitions[n] for n in (sorted(self.partitions) if numbers is None else numbers)]
        chosen = [p for p in chosen if p.unsaved]
        if not chosen:
            return
        # Rejected events must be in the dead-letter sink before the offsets move past them.
        flush = getattr(self.monitor.dead_letter, "flush", None)
        if callable(flush):
            flush()
        offsets: dict[tuple[str, int], int] = {}
        if background:
            with self.monitor._lock:
                write = BackgroundWrite([(p.checkpointer.path, functools.partial(dump_engine, p.engine, dict(p.offsets), p.lineage))
                                         for p in chosen])
            for partition in chosen:
                partition.unsaved = False
                offsets.update(partition.offsets)
            self._writing = (write, offsets)
            self.publish(chosen)
            return
        for partition in chosen:
            with self.monitor._lock:
                partition.checkpointer.save(partition.engine, partition.offsets)
            partition.unsaved = False
            offsets.update(partition.offsets)
        self.publish(chosen)
        self.last_saved = time.time()
        self.source.commit(offsets)

    def collect(self, *, wait: bool = False) -> None:
        """Commit the offsets of a background checkpoint once its snapshots are on disk."""
        if self._writing is None:
            return
        write, offsets = self._writing
        if not write.done(wait=wait):
            return
        self._writing = None
        self.last_saved = write.started
        self.source.commit(offsets)

    def publish(self, partitions: Sequence[Partition] | None = None) -> None:
        for partition in partitions if partitions is not None else list(self.partitions.values()):
            if not partition.unpublished:
                continue
            with self.monitor._lock:
                data = dump_partials(partition.engine, partition=partition.number, offsets=partition.offsets,
                                     lineage=partition.lineage)
            write_partials(self.directory, partition.number, data)
            partition.unpublished = False


def run_partitioned(monitor: "Monitor", source: Any, *, state_dir: str | None, checkpoint_interval: float,
                    publish_interval: float, max_records: int, poll_timeout: float,
                    until: Callable[[], bool] | None, background_checkpoints: bool = True, max_idle: float = 0.5) -> None:
    """The consume loop of one worker in a scaled-out group (see :meth:`Monitor.run`)."""
    if not state_dir:
        raise CheckpointError("a scaled-out worker needs a state directory shared by the group (--state-dir): "
                              "partitions move between workers with their checkpoints")
    require_mergeable(monitor.metrics)
    require_picklable(monitor._engine)
    worker = PartitionWorker(monitor, source, state_dir, checkpoint_interval=checkpoint_interval, max_idle=max_idle)
    monitor._worker, monitor._source = worker, source
    source.listen(worker)
    background = background_checkpoints and hasattr(os, "fork")
    last_checkpoint = last_publish = time.monotonic()
    try:
        while not monitor._stop.is_set() and not (until and until()):
            # Each partition's engine gets about a full batch: a batch split over many partitions
            # would pay the per-batch work of every window once per partition on a handful of rows.
            wait = poll_timeout if worker.aligner is None else worker.aligner.wait_hint(poll_timeout)
            batch = source.poll(max_records * max(1, len(worker.partitions)), wait)
            if batch or worker.aligner is not None:  # aligned: an idle partition's wait may have ended
                worker.process(batch)
            worker.collect()
            now = time.monotonic()
            if now - last_checkpoint >= checkpoint_interval and worker._writing is None:
                worker.checkpoint(background=background)
                last_checkpoint = last_publish = now
            elif now - last_publish >= publish_interval:
                worker.publish()
                last_publish = now
        worker.checkpoint()  # a clean stop: everything read, saved before this worker leaves the group
    finally:
        monitor._stop.clear()
        monitor._source = None
        source.close()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size
