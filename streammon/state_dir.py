"""The state directory: its layout, atomic and durable writes, the background writer, and storage errors.

Everything that touches the files of a state directory goes through here, so a full disk, a
read-only mount or a wrong path always ends with the path, the operating system's reason and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import CheckpointError

__all__ = ["StateDirectory", "BackgroundWrite", "write_atomically", "storage_error", "state_directory", "remove_orphans"]

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


def engine_storage_error(action: str, path: str | os.PathLike, exc: Exception) -> CheckpointError:
    """An error from the storage engine (RocksDB), which gives only text: the OS's reason is found in it."""
    text = str(exc)
    for code in _FIXES:
        if os.strerror(code) in text:
            return CheckpointError(f"cannot {action} {os.fspath(path)}: {text}; {_FIXES[code]}")
    return CheckpointError(f"cannot {action} {os.fspath(path)}: {text}; check the state directory, or move it "
                           f"away to start afresh")


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


class StateDirectory:
    """The files of a state directory, named in one place.

    A single worker keeps ``snapshot.pkl``. A scaled-out group keeps, per partition number ``i``,
    ``partition-<i>.pkl`` (its checkpoint) and ``partials-<i>.msgpack`` (its partial aggregates, as
    data: :mod:`streammon.state_codec`; read by the exporter). The two layouts never share a directory. With the disk-backed join store
    (``--join-store disk``) a single worker keeps ``snapshot.join/`` instead of ``snapshot.pkl``: a
    RocksDB directory whose commits hold the join, the rest of the state and the offsets. Every file is replaced by rename
    (:func:`write_atomically`); its temporary is ``<file>.<pid>.tmp``.
    """

    SINGLE = "snapshot"

    def __init__(self, directory: str | os.PathLike, *, create: bool = True) -> None:
        self.path = state_directory(directory) if create else Path(directory)

    def snapshot(self, name: str = SINGLE) -> Path:
        return self.path / f"{name}.pkl"

    def join_store(self, name: str = SINGLE) -> Path:
        """The directory of a disk-backed join store (RocksDB), next to where its snapshot would be."""
        return self.path / f"{name}.join"

    @staticmethod
    def partition_name(number: int) -> str:
        return f"partition-{number}"

    PARTIALS_SUFFIX = ".msgpack"

    def partials(self, number: int) -> Path:
        return self.path / f"partials-{number}{self.PARTIALS_SUFFIX}"

    def partials_files(self) -> list[Path]:
        return sorted(self.path.glob(f"partials-*{self.PARTIALS_SUFFIX}"))

    def pickled_partials_files(self) -> list[Path]:
        """Partials of streammon before they were data (pickles): never read."""
        return sorted(self.path.glob("partials-*.pkl"))

    @staticmethod
    def partials_partition(path: Path) -> str:
        """The partition a partials file is named after (as written: it may not be a number)."""
        return path.name[len("partials-"):-len(path.suffix)]

    def require_single(self) -> None:
        if any(self.path.glob("partition-*.pkl")):
            raise CheckpointError(f"{self.path} holds a scaled-out group's state (one snapshot per partition); run with "
                                  f"scale-out (--scale-out), or give this worker another --state-dir")

    def require_partitioned(self) -> None:
        if self.snapshot().exists() or self.join_store().exists():
            raise CheckpointError(f"{self.path} holds a single worker's snapshot; a scaled-out group keeps state per "
                                  f"partition: give it another --state-dir, or run without scale-out")


def remove_orphans(path: Path) -> None:
    """Delete temporary files of ``path`` left by writers that died mid-write (named after their process id)."""
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 1:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                tmp.unlink(missing_ok=True)
            except OSError as exc:
                raise storage_error("remove the orphaned temporary file", tmp, exc) from exc


class BackgroundWrite:
    """Files written by a forked child, each by rename: the parent goes on with its state as it was at the fork."""

    _read_end: int | None  # None once the child's report is read

    def __init__(self, jobs: Sequence[tuple[Path, Callable[[], bytes]]]) -> None:
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
