"""The consume loop every worker runs, and the checkpoint protocol it keeps.

A worker feeds a set of :class:`PartitionState`: a single worker has one, holding every input
partition; a scaled-out worker has one per partition number the group gave it. The loop is the same
for both: poll -> (align by event time) -> apply to the state the records belong to -> checkpoint
when due. :class:`CheckpointCoordinator` keeps the exactly-once order: flush the dead letters ->
save every changed state with its offsets -> only then commit those offsets to the source.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .align import EventTimeAligner, can_align
from .checkpoint import Checkpointer
from .connectors.base import AlignableSource, Message, SeekableSource, Source, next_offsets
from .engine import Engine, Health
from .errors import CheckpointError, RegistrationError
from .join import CommittingStore
from .pipeline import Pipeline
from .settings import RunOptions
from .snapshot import dump_engine, require_picklable
from .state_dir import BackgroundWrite

__all__ = ["PartitionState", "StateSet", "SingleState", "CheckpointCoordinator", "Runner", "aligner_for",
           "tuned_gc"]

log = logging.getLogger("streammon")
Offsets = dict[tuple[str, int], int]


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    # A worker keeps a large, long-lived state and allocates many short-lived objects per batch: with
    # the default thresholds the cyclic GC runs every 700 allocations and keeps rescanning the state.
    # Freezing what exists (the app, the restored state) and collecting less often took a run over
    # an in-memory stream from 60k to 84k events per CPU second (docs/benchmarks.md).
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


@dataclass(eq=False)
class PartitionState:
    """Input partitions processed as one: their engine, the offsets it reflects, and its checkpoint."""

    key: int | None  # the partition number scaled out; None for a single worker's one state
    engine: Engine
    checkpointer: Checkpointer | None
    offsets: Offsets = field(default_factory=dict)
    unsaved: bool = False
    unpublished: bool = True

    @property
    def lineage(self) -> str | None:
        return None if self.checkpointer is None else self.checkpointer.lineage


class StateSet(Protocol):
    """The states a :class:`Runner` feeds, and what it does with them besides checkpoints."""

    states: dict[Any, PartitionState]
    # Where whole batches are timed; None when each engine times its own (a single worker).
    batch_health: Health | None

    def split(self, batch: Sequence[Message]) -> list[tuple[PartitionState, list[Message]]]:
        """The batch by the state its records go to, each in the order they came; SourceError for a
        partition not held here."""

    def publish(self, states: Sequence[PartitionState] | None = None) -> None:
        """Make the states' results visible beyond this process (scaled out: the partials files)."""


class SingleState:
    """A single worker: one state holding every input partition, restored from ``snapshot.pkl``."""

    def __init__(self, engine: Engine, checkpointer: Checkpointer | None) -> None:
        self.state = PartitionState(None, engine, checkpointer)
        self.states: dict[Any, PartitionState] = {None: self.state}
        self.batch_health: Health | None = None

    def split(self, batch: Sequence[Message]) -> list[tuple[PartitionState, list[Message]]]:
        return [(self.state, list(batch))] if batch else []  # no per-record work: one state holds them all

    def publish(self, states: Sequence[PartitionState] | None = None) -> None:
        pass  # a single worker's own /metrics reads its engine

    def close(self) -> None:
        """Release what the state holds open (a disk-backed store's files); what it counted stays readable."""
        store = self.state.engine.store
        if isinstance(store, CommittingStore):
            store.close()

    def restore(self, pipeline: Pipeline, source: Source) -> None:
        """Load the last checkpoint (if any) and seek the source to the offsets it reflects."""
        checkpointer = self.state.checkpointer
        if checkpointer is None:
            return
        checkpointer.layout.require_single()
        require_picklable(self.state.engine)
        with pipeline.lock:
            restored = checkpointer.restore(self.state.engine)
            pipeline.configure(self.state.engine)
        if restored is not None:
            self.state.offsets.update(restored)
            log.info("resumed from the checkpoint in %s (%d partitions)", checkpointer.directory, len(restored))
            gc.freeze()  # the restored state, too, is long-lived
        if isinstance(source, SeekableSource):
            source.seek(dict(self.state.offsets))
        elif self.state.offsets:
            raise CheckpointError(f"{type(source).__name__} cannot seek, so it cannot resume from {checkpointer.directory}")


class CheckpointCoordinator:
    """Flush dead letters -> save the changed states with their offsets -> commit the offsets; one write at a time.

    Without a state directory (states with no checkpointer) a checkpoint only flushes and commits.
    ``background``: a forked child writes the snapshots while the worker goes on, and the offsets are
    committed by :meth:`collect` once they are on disk. ``clock`` (monotonic seconds) times the
    interval, ``wall_clock`` stamps :attr:`last_saved`.
    """

    def __init__(self, pipeline: Pipeline, source: Source, states: StateSet, *, interval: float, background: bool,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self.pipeline, self.source, self.states = pipeline, source, states
        self.interval, self.clock, self.wall_clock = interval, clock, wall_clock
        self.background = background and hasattr(os, "fork")
        self.last_saved: float | None = None  # wall clock of the state last saved
        self._started: float | None = None  # of the last checkpoint: the first is due at once
        self._writing: tuple[BackgroundWrite, Offsets] | None = None

    @property
    def busy(self) -> bool:
        return self._writing is not None

    def due(self) -> bool:
        # Without a state directory there is nothing to save: offsets are committed after every batch.
        durable = any(s.checkpointer is not None for s in self.states.states.values())
        return not self.busy and (not durable or self._started is None or self.clock() - self._started >= self.interval)

    def checkpoint(self, chosen: Sequence[PartitionState] | None = None, *, background: bool = False) -> None:
        """Save ``chosen`` (default: every state) where changed, publish them, then commit their offsets."""
        self.collect(wait=True)  # an older snapshot never lands after a newer one
        pick = list(self.states.states.values()) if chosen is None else list(chosen)
        pick = [s for s in pick if s.unsaved]
        self._started = self.clock()
        if not pick:
            return
        self.pipeline.flush_dead_letters()
        offsets: Offsets = {}
        for state in pick:
            offsets.update(state.offsets)
        saved = [(s, s.checkpointer) for s in pick if s.checkpointer is not None]
        # A store that commits itself writes O(changes) at once; RocksDB's threads do not survive a fork.
        forkable = not any(isinstance(s.engine.store, CommittingStore) for s, _ in saved)
        if saved and background and self.background and forkable:
            with self.pipeline.lock:  # held across the fork, so no scrape is half-way through the state
                jobs: list[tuple[Path, Callable[[], bytes]]] = [
                    (c.path, functools.partial(dump_engine, s.engine, dict(s.offsets), c.lineage)) for s, c in saved]
                write = BackgroundWrite(jobs)
            for state in pick:
                state.unsaved = False
            self._writing = (write, offsets)
            self.states.publish(pick)
            return
        for state, checkpointer in saved:
            # Scrapes wait only while the state is read; the write (a file, or the store's commit) goes on
            # without them: this thread is the only one that changes the state.
            checkpointer.save(state.engine, state.offsets, lock=self.pipeline.lock)
        for state in pick:
            state.unsaved = False
        if saved:
            self.last_saved = self.wall_clock()
            self.states.publish(pick)
        self.source.commit(offsets)

    def collect(self, *, wait: bool = False) -> None:
        """Commit the offsets of a background checkpoint once its snapshots are on disk."""
        if self._writing is None:
            return
        write, offsets = self._writing
        if not write.done(wait=wait):
            return
        self._writing = None
        self.last_saved = write.started  # the state saved is the state at the fork
        self.source.commit(offsets)


def _join_on_disk(choice: str, checkpointer: Checkpointer | None, engine: Engine) -> bool:
    """Whether a single worker keeps its join on disk. ``"auto"``: yes with a state directory, unless it holds a
    snapshot of the in-memory store (a directory from before the disk store was the default keeps its state)
    or the monitor has processed events in memory already."""
    if choice != "auto":
        return choice == "disk"
    if checkpointer is None or engine.stream_time > float("-inf"):
        return False
    if checkpointer.path.exists() and not checkpointer.layout.join_store().exists():
        log.info("%s holds a snapshot of the in-memory join store: the join stays in memory (--join-store disk "
                 "in a new state directory keeps it on disk)", checkpointer.directory)
        return False
    return True


def aligner_for(source: Source, max_idle: float) -> EventTimeAligner | None:
    """An aligner for ``source`` if it can be read aligned by event time (a Kafka source), else None."""
    if not can_align(source):
        return None
    assert isinstance(source, AlignableSource)
    return EventTimeAligner(source.topics, max_idle=max_idle)


class Runner:
    """The consume loop: poll, align, apply to the owning state, checkpoint and publish when due."""

    def __init__(self, pipeline: Pipeline, source: Source, states: StateSet, coordinator: CheckpointCoordinator,
                 options: RunOptions, *, stop: Callable[[], bool], aligner: EventTimeAligner | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline, self.source, self.states, self.coordinator = pipeline, source, states, coordinator
        self.options, self.stopped, self.clock = options, stop, clock
        self.aligner = aligner

    @classmethod
    def single(cls, pipeline: Pipeline, engine: Engine, source: Source, options: RunOptions, *,
               stop: Callable[[], bool]) -> Runner:
        """A worker reading every partition into ``engine``, resumed from ``options.state_dir``'s snapshot if any."""
        checkpointer = Checkpointer(options.state_dir) if options.state_dir else None
        before = engine.store
        if _join_on_disk(options.join_store, checkpointer, engine):
            if checkpointer is None:
                raise RegistrationError("join_store='disk' keeps the join in the state directory: give state_dir= "
                                        "(--state-dir DIR), or use join_store='memory'")
            if engine.stream_time > float("-inf"):
                raise RegistrationError("join_store='disk' needs a monitor that has not processed events yet")
            checkpointer.layout.require_single()
            engine.store = pipeline.disk_store(checkpointer.layout.join_store())
            log.info("the join is kept on disk, in %s", checkpointer.layout.join_store())
        states = SingleState(engine, checkpointer)
        try:
            states.restore(pipeline, source)
        except BaseException:
            states.close()
            engine.store = before  # a run refused at start leaves the monitor as it was
            raise
        coordinator = CheckpointCoordinator(pipeline, source, states, interval=options.checkpoint_interval,
                                            background=options.background_checkpoints)
        checkpointer = states.state.checkpointer
        coordinator.last_saved = checkpointer.last_saved if checkpointer is not None else None
        aligner = aligner_for(source, options.max_idle)
        if aligner is not None:
            assert isinstance(source, AlignableSource)
            aligner.track(source.input_partitions, None, engine.input_marks)
        return cls(pipeline, source, states, coordinator, options, stop=stop, aligner=aligner)

    def run(self) -> None:
        o, source, coordinator = self.options, self.source, self.coordinator
        last_publish = self.clock()
        until = o.until
        size = o.max_records or self.pipeline.settings.batch_size
        while not self.stopped() and not (until and until()):
            # Each state's engine gets about a full batch: a batch split over many partitions would pay
            # the per-batch work of every window once per partition on a handful of rows.
            wait = o.poll_timeout if self.aligner is None else self.aligner.wait_hint(o.poll_timeout)
            batch = source.poll(size * max(1, len(self.states.states)), wait)
            ended = not batch and source.exhausted
            if self.aligner is not None:  # aligned: an idle partition's wait may have ended
                self.process_aligned(batch, everything=ended)
            elif batch:
                self.process(batch)
            coordinator.collect()
            if coordinator.due():
                coordinator.checkpoint(background=True)
                last_publish = self.clock()
            elif self.clock() - last_publish >= o.publish_interval:
                self.states.publish()
                last_publish = self.clock()
            if ended:
                break
        coordinator.collect(wait=True)
        coordinator.checkpoint()  # a clean stop ends with a snapshot of everything read

    def process(self, batch: Sequence[Message]) -> None:
        started = time.perf_counter()
        for state, messages in self.states.split(batch):
            self.pipeline.process(state.engine, messages)
            state.offsets.update(next_offsets(messages))
            state.unsaved = state.unpublished = True
        if self.states.batch_health is not None:
            self.states.batch_health.observe_batch(time.perf_counter() - started)

    def process_aligned(self, batch: Sequence[Message], *, everything: bool = False) -> None:
        started = time.perf_counter()
        aligner = self.aligner
        assert aligner is not None
        if batch:
            aligner.add(self.pipeline.decode(batch))
        source = self.source
        assert isinstance(source, AlignableSource)
        released = aligner.release(source.lag(), everything=everything)
        aligner.flow(self.source)
        for key, (decoded, marks) in released.items():
            state = self.states.states[key]  # tracked only while owned
            self.pipeline.apply_aligned(state.engine, decoded, marks)
            state.offsets.update(next_offsets([d.message for d in decoded]))
            state.unsaved = state.unpublished = True
        if released and self.states.batch_health is not None:
            self.states.batch_health.observe_batch(time.perf_counter() - started)
