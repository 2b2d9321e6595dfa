"""Checkpoints: the monitor's state and the input offsets it reflects, saved together, atomically.

Order (design section 7): process a batch -> snapshot {join store, window partials, counters,
offsets} to a temporary file -> fsync -> rename over the previous snapshot -> only then commit the
offsets to the source. A worker killed at any moment restarts from the last snapshot and re-reads
from the offsets stored in it, so every event counts exactly once; offsets committed to Kafka
serve lag monitoring only. The bytes are :mod:`streammon.snapshot`'s, the files :mod:`streammon.state_dir`'s.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError
from .join import CommittingStore
from .snapshot import dump_engine, load_engine
from .state_dir import StateDirectory, remove_orphans, storage_error, write_atomically

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Checkpointer", "SNAPSHOT_KEY"]

SNAPSHOT_KEY = b"streammon.snapshot"  # where a committing store keeps the rest of the state

Offsets = Mapping[tuple[str, int], int]


class Checkpointer:
    """Snapshots in a local directory: ``<name>.pkl``, replaced atomically by rename. ``clock``: wall seconds."""

    def __init__(self, directory: str | os.PathLike, *, name: str = StateDirectory.SINGLE,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.layout = StateDirectory(directory)
        self.directory = self.layout.path
        self.path = self.layout.snapshot(name)
        self.last_saved: float | None = None  # wall clock of the last snapshot written or read
        # Identifies one history of the state; a crash and restore keep it, starting afresh changes it.
        self.lineage: str | None = None

    def save(self, engine: Engine, offsets: Offsets, *, lock: AbstractContextManager[Any] | None = None) -> None:
        """Write the state and ``offsets``; ``lock`` is held while the state is read, not while it is written."""
        with lock or contextlib.nullcontext():
            data = dump_engine(engine, offsets, self.lineage)
        if isinstance(engine.store, CommittingStore):  # one atomic write: the store's changes, this, the offsets
            engine.store.commit({SNAPSHOT_KEY: data})
        else:
            write_atomically(self.path, data, durable=True)
        self.last_saved = self.clock()

    def restore(self, engine: Engine) -> dict[tuple[str, int], int] | None:
        """Load the last snapshot into ``engine``; None when there is none yet."""
        remove_orphans(self.path)
        if isinstance(engine.store, CommittingStore):
            if self.path.exists():
                raise CheckpointError(f"{self.path} is a snapshot of the in-memory join store, but this run keeps the "
                                      f"join on disk; run with --join-store memory (join_store='memory'), or give "
                                      f"another state directory")
            data = engine.store.meta(SNAPSHOT_KEY)
            if data is None:
                return None
            state = load_engine(engine, data)
            self.lineage = state.get("lineage")
            self.last_saved = self.clock()
            return state["offsets"]
        if self.layout.join_store(self.path.stem).exists():
            raise CheckpointError(f"{self.layout.join_store(self.path.stem)} holds a disk-backed join store, but this "
                                  f"run keeps the join in memory; run with --join-store disk (join_store='disk'), or "
                                  f"give another state directory")
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error("read the snapshot", self.path, exc) from exc
        state = load_engine(engine, data)  # CheckpointError if it is another app's or format's
        self.lineage = state.get("lineage")
        try:
            self.last_saved = self.path.stat().st_mtime
        except OSError:  # gone since it was read: the state is loaded, only the age gauge starts from now
            self.last_saved = self.clock()
        return state["offsets"]
