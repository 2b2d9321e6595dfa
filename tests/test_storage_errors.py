"""A state directory that cannot be written ends the worker with a message naming the path, the OS reason and the fix."""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import streammon as sm
from streammon.checkpoint import Checkpointer
from streammon.cli import main
from streammon.errors import CheckpointError
from streammon.scaleout import write_partials
from streammon.state_dir import BackgroundWrite, storage_error, write_atomically

ROOT = Path(__file__).resolve().parent.parent
APP = "tests/kafka_app.py:monitor"


def events_file(tmp_path: Path, n: int = 2000) -> Path:
    path = tmp_path / "events.jsonl"
    with path.open("w") as f:
        for i in range(n):  # predictions only: they stay pending, so the snapshot grows with n
            f.write(json.dumps({"id": f"p{i}", "ts": 1_700_000_000 + i, "prediction": i % 2, "score": 0.5,
                                "segment": {"version": "v1"}}) + "\n")
    return path


def test_a_state_dir_below_a_regular_file_stops_run_at_start_with_the_fix(tmp_path, capsys):
    # Below a regular file: no directory can be made there, whoever runs it (chmod does not stop root).
    (tmp_path / "file").write_text("")
    state_dir = tmp_path / "file" / "sub"
    code = main(["run", APP, "--source", str(events_file(tmp_path, 10)), "--exit-when-done", "--metrics-port", "0",
                 "--state-dir", str(state_dir)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert (f"streammon run: failed: cannot use the state directory {state_dir}: Not a directory (ENOTDIR); "
            f"part of that path is a file, not a directory: give another state directory (--state-dir") in err
    assert "Traceback" not in err


def _limit_file_size() -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as it would on a full disk: for root too.
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))


@pytest.mark.slow
@pytest.mark.parametrize("interval", ["0.01", "60"])  # background snapshots by a forked child; the final one in place
def test_a_snapshot_that_cannot_be_written_ends_run_with_the_reason_and_no_traceback(tmp_path, interval):
    state_dir = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", "streammon", "run", APP, "--source", str(events_file(tmp_path)), "--exit-when-done",
         "--metrics-port", "0", "--state-dir", str(state_dir), "--checkpoint-interval", interval, "--join-store", "memory"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size)
    assert result.returncode == 1, result.stderr
    assert (f"streammon run: failed: cannot write the snapshot {state_dir / 'snapshot.pkl'}: File too large (EFBIG); "
            f"raise this process's file-size limit (ulimit -f)") in result.stderr
    assert "Traceback" not in result.stderr
    assert list(state_dir.iterdir()) == []  # the half-written temporary file was removed


@pytest.mark.slow
def test_a_join_store_that_cannot_be_written_ends_run_with_the_reason_and_the_fix(tmp_path):
    state_dir = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", "streammon", "run", APP, "--source", str(events_file(tmp_path)), "--exit-when-done",
         "--metrics-port", "0", "--state-dir", str(state_dir), "--join-store", "disk"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size)
    assert result.returncode == 1, result.stderr
    assert f"streammon run: failed: cannot open the join store at {state_dir / 'snapshot.join'}: " in result.stderr
    assert "File too large; raise this process's file-size limit (ulimit -f)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_background_write_reports_the_childs_reason_once(tmp_path):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "snapshot.pkl"
    write = BackgroundWrite([(target, lambda: b"state")])
    with pytest.raises(CheckpointError) as caught:
        write.done(wait=True)
    assert str(caught.value).startswith(f"cannot write the snapshot {target}: Not a directory (ENOTDIR) on ")
    assert str(caught.value).count("cannot write") == 1


def test_a_snapshot_that_cannot_be_read_names_it(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.path.mkdir()  # a directory where the snapshot should be
    with pytest.raises(CheckpointError, match=r"cannot read the snapshot .*snapshot\.pkl: Is a directory \(EISDIR\); "
                                              r"a directory stands where the file should be: move it away"):
        checkpointer.restore(sm.Monitor("m").pipeline.new_engine(()))


def test_partials_that_cannot_be_written_name_them(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match=r"cannot write the partial aggregates .*partials-3\.msgpack: Not a directory"):
        write_partials(tmp_path / "file", 3, b"x")


@pytest.mark.parametrize("code, fix", [
    (errno.ENOSPC, "free space on that filesystem"),
    (errno.EDQUOT, "raise this user's disk quota"),
    (errno.EROFS, "the filesystem is mounted read-only: mount it read-write, or give another state directory"),
    (errno.EACCES, "make it writable by the user this runs as (uid"),
    (errno.EPERM, "make it writable by the user this runs as (uid"),
    (errno.EIO, "the device reported an I/O error"),
    (errno.ELOOP, "check the state directory, or give another state directory (--state-dir, state_dir=)"),
])
def test_each_cause_gets_its_own_fix(tmp_path, code, fix):
    exc = OSError(code, "reason from the OS", str(tmp_path / "snapshot.pkl.7.tmp"))
    message = str(storage_error("write the snapshot", tmp_path / "snapshot.pkl", exc))
    assert message.startswith(f"cannot write the snapshot {tmp_path / 'snapshot.pkl'}: reason from the OS "
                              f"({errno.errorcode[code]}) on {tmp_path / 'snapshot.pkl.7.tmp'}; ")
    assert fix in message


def test_a_write_that_fails_leaves_the_previous_snapshot_in_place(tmp_path, monkeypatch):
    path = tmp_path / "snapshot.pkl"
    write_atomically(path, b"old", durable=True)

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))
    monkeypatch.setattr("streammon.checkpoint.os.replace", full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        write_atomically(path, b"new", durable=True)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.pkl"]
