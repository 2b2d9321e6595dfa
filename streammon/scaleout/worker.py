"""Scale-out worker: one state per input partition it owns, handed over with its checkpoint.

Each partition has its own join store, window partials, counters, stream time and offsets,
checkpointed together to ``<state_dir>/partition-<i>.pkl``. When the group takes a partition away,
the worker checkpoints it before letting go; the worker that gets it restores that checkpoint and
seeks to its offsets. Every ``publish_interval`` the worker writes each partition's partial
aggregates (``partials-<i>.msgpack``, data), which ``Monitor.export`` merges into the global metrics.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..align import EventTimeAligner
from ..checkpoint import Checkpointer
from ..connectors.base import Message
from ..engine import Health
from ..errors import CheckpointError, RegistrationError, SourceError
from ..pipeline import Pipeline
from ..runner import CheckpointCoordinator, PartitionState, Runner, aligner_for
from ..settings import RunOptions
from ..snapshot import require_picklable
from ..state_dir import StateDirectory
from .partials import dump_partials, published_lineage, require_mergeable, write_partials

if TYPE_CHECKING:
    from ..registry import Tracked

__all__ = ["PartitionWorker", "scaled_out_runner"]

log = logging.getLogger("streammon")


class PartitionWorker:
    """The partitions this worker owns, as the consumer group assigns and revokes them (a RebalanceListener)."""

    def __init__(self, pipeline: Pipeline, metrics: Sequence[Tracked], source: Any, state_dir: str | os.PathLike[str], *,
                 aligner: EventTimeAligner | None = None) -> None:
        self.pipeline, self.metrics, self.source = pipeline, list(metrics), source
        # Each partition number is one group: both topics of it, aligned by event time (streammon.align).
        self.aligner = aligner
        self.layout = StateDirectory(state_dir)
        self.layout.require_partitioned()
        self.states: dict[Any, PartitionState] = {}
        self._parked: dict[int, tuple[PartitionState, Any]] = {}
        self.batch_health: Health | None = Health()  # this process's batches, for its own /metrics
        self.coordinator: CheckpointCoordinator | None = None  # set by the runner: revocations checkpoint through it

    @property
    def partitions(self) -> dict[Any, PartitionState]:
        return self.states

    # -- the StateSet protocol ------------------------------------------------------------------
    def split(self, batch: Sequence[Message]) -> list[tuple[PartitionState, list[Message]]]:
        by_partition: dict[int, list[Message]] = {}
        for msg in batch:
            by_partition.setdefault(msg.partition, []).append(msg)
        return [(self._owned(number), messages) for number, messages in by_partition.items()]

    def _owned(self, partition: int) -> PartitionState:
        state = self.states.get(partition)
        if state is None:
            # The consumer hands out only partitions the group assigned, after the listener has
            # opened them; skipping would lose these events. A restart resumes from checkpoints.
            raise SourceError(f"messages of partition {partition}, which this worker does not own: the group's "
                              f"assignment and this worker's state disagree; restart the worker")
        return state

    def publish(self, states: Sequence[PartitionState] | None = None) -> None:
        for state in states if states is not None else list(self.states.values()):
            if not state.unpublished:
                continue
            number = state.key
            assert number is not None  # a scaled-out worker's states are keyed by partition number
            with self.pipeline.lock:
                data = dump_partials(state.engine, partition=number, offsets=state.offsets, lineage=state.lineage or "")
            write_partials(self.layout.path, number, data)
            state.unpublished = False

    # -- the RebalanceListener protocol ---------------------------------------------------------
    def assigned(self, numbers: list[int]) -> dict[tuple[str, int], int]:
        offsets: dict[tuple[str, int], int] = {}
        parked, self._parked = self._parked, {}
        for number in numbers:
            state = self.states.get(number) or self._unpark(parked.get(number)) or self._open(number)
            offsets.update(state.offsets)
            if self.aligner is not None:  # the source seeks to the processed offsets: what was buffered comes again
                self.aligner.track([(topic, number) for topic in self.source.topics], number, state.engine.input_marks)
        log.info("assigned partitions %s (now %s)", numbers, sorted(self.states))
        return offsets

    def revoked(self, numbers: list[int]) -> None:
        try:
            chosen = [self.states[n] for n in numbers if n in self.states]
            if self.coordinator is not None:
                self.coordinator.checkpoint(chosen)
        finally:  # let go even if the save failed: the new owner resumes from the last good checkpoint
            with self.pipeline.lock:
                for number in numbers:
                    self._unalign(number)
                    state = self.states.pop(number, None)
                    if state is not None and not state.unsaved and state.checkpointer is not None:
                        # Kept until the assignment that follows: a partition that stays here (the
                        # assignor is sticky) goes on from memory instead of reloading its checkpoint.
                        self._parked[number] = (state, _stamp(state.checkpointer.path))
        log.info("revoked partitions %s (now %s)", numbers, sorted(self.states))

    def lost(self, numbers: list[int]) -> None:
        # Evicted from the group: the new owner resumes from the last checkpoint, which this worker
        # must not overwrite now. What it processed since then is read again by the new owner.
        with self.pipeline.lock:
            for number in numbers:
                self._unalign(number)
                self.states.pop(number, None)
        log.warning("lost partitions %s to the group (evicted); their state since the last checkpoint is dropped", numbers)

    def _unpark(self, parked: tuple[PartitionState, Any] | None) -> PartitionState | None:
        if parked is None:
            return None
        state, stamp = parked
        if state.checkpointer is None or _stamp(state.checkpointer.path) != stamp:  # another worker wrote it since
            return None
        self.states[state.key] = state
        return state

    def _unalign(self, number: int) -> None:
        if self.aligner is not None:
            self.aligner.drop_group(number)

    def _open(self, number: int) -> PartitionState:
        engine = self.pipeline.new_engine(self.metrics)
        checkpointer = Checkpointer(self.layout.path, name=StateDirectory.partition_name(number))
        with self.pipeline.lock:
            offsets = checkpointer.restore(engine)
            self.pipeline.configure(engine)
        if checkpointer.lineage is None:
            # No checkpoint yet: a worker that died before its first one may have published partials
            # ahead of this fresh start. Taking their lineage keeps them shown until this one catches
            # up, rather than stepping the metric back to zero.
            checkpointer.lineage = published_lineage(self.layout, number) or uuid.uuid4().hex
        state = PartitionState(number, engine, checkpointer, dict(offsets or {}))
        self.states[number] = state
        return state


def scaled_out_runner(pipeline: Pipeline, metrics: Sequence[Tracked], source: Any, options: RunOptions, *,
                      stop: Callable[[], bool]) -> tuple[Runner, PartitionWorker]:
    """The runner of one worker in a scaled-out group, and its states: the partitions the group gives it."""
    if not options.state_dir:
        raise CheckpointError("a scaled-out worker needs a state directory shared by the group (--state-dir): "
                              "partitions move between workers with their checkpoints")
    if options.join_store == "disk":
        raise RegistrationError("a scaled-out worker keeps each partition's join in memory for now: run it with "
                                "--join-store memory, or run a single worker with --join-store disk")
    require_mergeable(list(metrics))
    require_picklable(pipeline.new_engine(metrics))
    worker = PartitionWorker(pipeline, metrics, source, options.state_dir, aligner=aligner_for(source, options.max_idle))
    coordinator = CheckpointCoordinator(pipeline, source, worker, interval=options.checkpoint_interval,
                                        background=options.background_checkpoints)
    worker.coordinator = coordinator
    source.listen(worker)
    return Runner(pipeline, source, worker, coordinator, options, stop=stop, aligner=worker.aligner), worker


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size
