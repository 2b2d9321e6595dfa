"""Checkpoints: the monitor's state and the input offsets it reflects, saved together, atomically.

Order (design section 7): process a batch -> snapshot {join store, window partials, counters,
offsets} to a temporary file -> fsync -> rename over the previous snapshot -> only then commit the
offsets to the source. A worker killed at any moment restarts from the last snapshot and re-reads
from the offsets stored in it, so every event counts exactly once; offsets committed to Kafka
serve lag monitoring only.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import StreamMonError
from .operators.base import fresh_copy

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Checkpointer", "CheckpointError", "BackgroundWrite", "write_atomically"]

FORMAT = 1
Offsets = Mapping[tuple[str, int], int]


class CheckpointError(StreamMonError):
    """A snapshot cannot be written, read, or used with the app as it is now."""


_ANOTHER = "or give another state directory (--state-dir, state_dir=)"
_FIXES = {
    errno.ENOSPC: f"free space on that filesystem (a snapshot takes about the state's size), {_ANOTHER} on one with room",
    errno.EDQUOT: f"raise this user's disk quota on that filesystem, {_ANOTHER}",
    errno.EFBIG: "raise this process's file-size limit (ulimit -f), which the snapshot exceeds",
    errno.EROFS: f"the filesystem is mounted read-only: mount it read-write, {_ANOTHER} on a writable one",
    errno.EACCES: f"make it writable by the user this runs as (uid {os.getuid()}, e.g. chown or chmod u+rwx), {_ANOTHER}",
    errno.ENOTDIR: f"part of that path is a file, not a directory: {_ANOTHER.removeprefix('or ')}",
    errno.EEXIST: f"a file stands where the directory should be: move it away, {_ANOTHER}",
    errno.EISDIR: "a directory stands where the file should be: move it away",
    errno.ENOENT: "the directory is gone (removed or unmounted while running): restore it, or start again with it in place",
    errno.EIO: "the device reported an I/O error: check the disk or volume",
}
_FIXES[errno.EPERM] = _FIXES[errno.EACCES]


def storage_error(action: str, path: str | os.PathLike, exc: OSError) -> CheckpointError:
    """``exc`` from the state directory as a :class:`CheckpointError` naming the path, the OS's reason and the fix."""
    # The fix depends on the cause: a full disk, a read-only mount and a wrong path need different people.
    reason = exc.strerror or str(exc)
    name = errno.errorcode.get(exc.errno or 0)
    detail = f"{reason} ({name})" if name else reason
    if exc.filename is not None and os.fspath(exc.filename) != os.fspath(path):
        detail += f" on {os.fspath(exc.filename)}"
    fix = _FIXES.get(exc.errno or 0, f"check the state directory, {_ANOTHER}")
    return CheckpointError(f"cannot {action} {os.fspath(path)}: {detail}; {fix}")


def state_directory(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and prove it writable, so a bad one stops a worker before it reads anything."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A probe, not os.access(): mode bits do not stop root, and only a write shows a read-only mount.
        probe = path / f".streammon-probe.{os.getpid()}.tmp"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
    except OSError as exc:
        raise storage_error("use the state directory", path, exc) from exc
    return path


def _user_functions(engine: "Engine") -> dict[int, str]:
    # Functions from the app's code (finalizers, per-event functions) are saved by name and
    # re-attached from the app at restore: lambdas and closures cannot be pickled, nor should be.
    found = {}
    for tracked, _ in engine.metrics:
        fn = getattr(tracked.prototype, "fn", None)
        if fn is not None:
            found[id(fn)] = tracked.name
    return found


class _Pickler(pickle.Pickler):
    def __init__(self, file, functions: dict[int, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._functions = functions

    def persistent_id(self, obj: Any) -> str | None:
        return self._functions.get(id(obj)) if callable(obj) else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, functions: dict[str, Any]) -> None:
        super().__init__(file)
        self._functions = functions

    def persistent_load(self, pid: str) -> Any:
        return self._functions[pid]


def _signature(engine: "Engine") -> list[tuple]:
    return [(t.name, type(getattr(t.prototype, "stat", t.prototype)).__name__, t.feed.key, tuple(w.label for w in t.windows))
            for t, _ in engine.metrics] + [("segments", engine.keys.segments)]


def dumps(state: dict[str, Any], engine: "Engine") -> bytes:
    """Pickle ``state``, saving the app's functions found in ``engine``'s metrics by name."""
    buffer = io.BytesIO()
    _Pickler(buffer, _user_functions(engine)).dump(state)
    return buffer.getvalue()


def require_picklable(engine: "Engine") -> None:
    """Refuse, at start and naming it, a metric whose operator a checkpoint could not save."""
    for tracked, _ in engine.metrics:
        try:
            dumps({"operator": fresh_copy(tracked.prototype)}, engine)
        except Exception as exc:  # noqa: BLE001 - pickle raises many kinds
            raise CheckpointError(
                f"metric {tracked.name!r} cannot be saved in a checkpoint ({type(exc).__name__}: {exc}); keep its "
                f"state in plain attributes (numbers, lists, dicts, numpy arrays), or run without a state directory"
            ) from None


def loads(data: bytes, engine: "Engine") -> dict[str, Any]:
    """Unpickle what :func:`dumps` wrote, re-attaching the app's functions; check format and signature."""
    functions = {tracked.name: tracked.prototype.fn for tracked, _ in engine.metrics if getattr(tracked.prototype, "fn", None) is not None}
    state = _Unpickler(io.BytesIO(data), functions).load()
    if state.get("format") != FORMAT:
        raise CheckpointError(f"snapshot format {state.get('format')} is not {FORMAT}; move the state directory away to start afresh")
    if state["signature"] != _signature(engine):
        raise CheckpointError(
            "the app's metrics differ from the ones in the snapshot (a metric, window or segment was added, removed "
            "or changed); keep the app as it was, or move the state directory away to start afresh"
        )
    return state


def dump_engine(engine: "Engine", offsets: Offsets, lineage: str | None = None) -> bytes:
    state = {
        "format": FORMAT,
        "lineage": lineage,
        "signature": _signature(engine),
        "offsets": dict(offsets),
        "store": engine.store,
        "keys": engine.keys,
        "health": dict(engine.health.__dict__),
        "stream_time": engine.stream_time,
        "input_marks": dict(engine.input_marks),
        "windows": {t.name: [s.state() for s in states] for t, states in engine.metrics},
    }
    return dumps(state, engine)


def load_engine(engine: "Engine", data: bytes) -> dict[str, Any]:
    """Load a snapshot into ``engine`` (freshly built from the app); return the snapshot (``offsets``, ``lineage``)."""
    state = loads(data, engine)
    engine.store = state["store"]
    engine.keys = state["keys"]
    engine.health.__dict__.update(state["health"])
    engine.stream_time = state["stream_time"]
    engine.input_marks = dict(state.get("input_marks", {}))  # snapshots before aligned input have none
    for tracked, states in engine.metrics:
        for window_state, saved in zip(states, state["windows"][tracked.name]):
            window_state.load(saved)
    return state


class Checkpointer:
    """Snapshots in a local directory: ``<name>.pkl``, replaced atomically by rename."""

    def __init__(self, directory: str | os.PathLike, *, interval: float = 5.0, name: str = "snapshot") -> None:
        self.directory = state_directory(directory)
        self.path = self.directory / f"{name}.pkl"
        self.interval = interval
        self.last_saved: float | None = None  # wall clock of the last snapshot written or read
        # Identifies one history of the state; a crash and restore keep it, starting afresh changes it.
        self.lineage: str | None = None
        self._writing: tuple[BackgroundWrite, dict] | None = None  # a background save and its offsets

    def due(self) -> bool:
        return self.last_saved is None or time.monotonic() - self._last_monotonic >= self.interval

    def save(self, engine: "Engine", offsets: Offsets) -> None:
        write_atomically(self.path, dump_engine(engine, offsets, self.lineage), durable=True)
        self.last_saved = time.time()
        self._last_monotonic = time.monotonic()

    @property
    def busy(self) -> bool:
        """True while a background save is writing."""
        return self._writing is not None

    def save_in_background(self, engine: "Engine", offsets: Offsets) -> None:
        """Write the snapshot from a forked child while this process goes on.

        The child sees the state as it is at the fork (copy-on-write), so the caller keeps
        processing; the offsets may be committed once :meth:`finished` returns them.
        """
        self.finished(wait=True)
        lineage = self.lineage
        self._writing = (BackgroundWrite([(self.path, lambda: dump_engine(engine, offsets, lineage))]), dict(offsets))
        self._last_monotonic = time.monotonic()  # the interval counts from the start of a save

    def finished(self, *, wait: bool = False) -> dict[tuple[str, int], int] | None:
        """Offsets of a background save now on disk (safe to commit); None if none finished (yet)."""
        if self._writing is None:
            return None
        write, offsets = self._writing
        if not write.done(wait=wait):
            return None
        self._writing = None
        self.last_saved = write.started  # the state saved is the state at the fork
        return offsets

    def restore(self, engine: "Engine") -> dict[tuple[str, int], int] | None:
        """Load the last snapshot into ``engine``; None when there is none yet."""
        self._remove_orphans()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error("read the snapshot", self.path, exc) from exc
        state = load_engine(engine, data)
        self.lineage = state.get("lineage")
        try:
            self.last_saved = self.path.stat().st_mtime
        except OSError:  # gone since it was read: the state is loaded, only the age gauge starts from now
            self.last_saved = time.time()
        self._last_monotonic = time.monotonic()
        return state["offsets"]


    def _remove_orphans(self) -> None:
        # Temporary files of writers that died mid-write (named after their process id).
        for tmp in self.directory.glob(f"{self.path.name}.*.tmp"):
            pid = tmp.name[len(self.path.name) + 1:-len(".tmp")]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                try:
                    tmp.unlink(missing_ok=True)
                except OSError as exc:
                    raise storage_error("remove the orphaned temporary file", tmp, exc) from exc


class BackgroundWrite:
    """Files written by a forked child, each by rename: the parent goes on with its state as it was at the fork."""

    def __init__(self, jobs: list[tuple[Path, Callable[[], bytes]]]) -> None:
        self.directory = jobs[0][0].parent if jobs else Path(".")
        self.started = time.time()
        try:
            read_end, write_end = os.pipe()
        except OSError as exc:
            raise CheckpointError(f"cannot start the snapshot writer for {self.directory}: {exc.strerror or exc}; "
                                  f"raise the open-file limit (ulimit -n)") from exc
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(read_end)
            os.close(write_end)
            raise CheckpointError(f"cannot fork the snapshot writer for {self.directory}: {exc.strerror or exc}; give "
                                  f"the worker more memory (the child needs up to the state's size again), or run with "
                                  f"background_checkpoints=False") from exc
        if pid == 0:  # the child: write, report, and leave without running the parent's cleanup
            code = 1
            try:
                os.close(read_end)
                for path, make in jobs:
                    write_atomically(path, make(), durable=True)
                code = 0
            except CheckpointError as exc:  # already names the file, the reason and the fix
                os.write(write_end, str(exc).encode()[:4000])
            except BaseException as exc:  # noqa: BLE001 - reported to the parent through the pipe
                os.write(write_end, f"cannot write the snapshot in {self.directory}: {type(exc).__name__}: {exc}".encode()[:4000])
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid, self._read_end = pid, read_end

    def done(self, *, wait: bool = False) -> bool:
        """True once every file is written; raises :class:`CheckpointError` with the reason if one was not."""
        if self._read_end is None:
            return True
        finished, status = os.waitpid(self.pid, 0 if wait else os.WNOHANG)
        if not finished:
            return False
        try:
            reason = os.read(self._read_end, 4096).decode(errors="replace")
        finally:
            os.close(self._read_end)
            self._read_end = None
        if os.waitstatus_to_exitcode(status) != 0:
            raise CheckpointError(reason or f"cannot write the snapshot in {self.directory}: its writer ended with status {status}")
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_atomically(path: Path, data: bytes, *, durable: bool, what: str = "the snapshot") -> None:
    """Replace ``path`` with ``data`` by rename, so a reader sees the old file or the new one, never half.

    ``durable`` also fsyncs the file and its directory, so the new file survives a power cut. An
    ``OSError`` (full disk, read-only mount, missing directory) is raised as :class:`CheckpointError`.
    """
    # One temporary name per process: a worker's orphaned writer (or a second worker started by
    # mistake on the same directory) never writes into the file another is about to rename.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # half a file on a full disk only takes the room others need
            tmp.unlink(missing_ok=True)
        raise storage_error(f"write {what}", path, exc) from exc
    if durable:
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise storage_error(f"write {what}", path, exc) from exc
