"""File replay: JSONL and Parquet files as a :class:`~streammon.connectors.Source`, and the writer of such files.

A file is one partition: a message's topic is the file's name, its partition the file's index in
``paths`` and its offset the line (JSONL) or row (Parquet) index, counted from 0. The reader never
judges an event: a JSONL line goes out as its raw bytes, so a malformed line reaches the monitor,
which rejects it with a reason like any bad Kafka message.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from itertools import chain, islice
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Protocol

import pydantic_core

from ..errors import RegistrationError, SourceError
from .base import Kind, Message

__all__ = ["FileSource", "write_events"]

Format = Literal["jsonl", "parquet"]
_JSONL = {".jsonl", ".ndjson", ".json"}
_PARQUET = {".parquet", ".pq"}
_DROP_NULL_VALUES = ("score", "segment")  # maps where a null cannot be meant: struct columns pad absent keys with null
StrPath = str | PathLike


def _format(path: Path) -> tuple[Format, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    last = suffixes[-2 if gz else -1] if len(suffixes) > gz else ""
    if last in _JSONL:
        return "jsonl", gz
    if last in _PARQUET and not gz:
        return "parquet", False
    raise RegistrationError(
        f"{path}: cannot tell the format from the suffix; name it .jsonl (one JSON event per line, "
        f"optionally .jsonl.gz) or .parquet"
    )


def _paths(paths: StrPath | Sequence[StrPath]) -> list[Path]:
    listed = [paths] if isinstance(paths, (str, PathLike)) else list(paths)
    if not listed:
        raise RegistrationError("FileSource needs at least one path, e.g. FileSource('events.jsonl')")
    return [Path(p) for p in listed]


class FileSource:
    """Replays JSONL and Parquet files of events (a mixed stream unless ``kind`` is given).

    ``order="file"`` streams each file in turn, in file order, a batch at a time (memory stays flat
    for any file size). ``order="time"`` loads every event and serves them sorted by ``ts`` (stable,
    so file order breaks ties); an event whose ``ts`` cannot be read goes first, to be rejected by
    the monitor. A JSONL line longer than ``max_line_bytes`` is cut there (and so rejected as
    oversize or malformed); blank lines are skipped. Parquet rows become dicts: a null column is
    left out of the event, map and struct columns become dicts, a timezone-aware timestamp becomes
    epoch seconds (a naive one stays naive, which the monitor refuses as ambiguous).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> write_events(path, [{"id": "a", "ts": 2, "label": 1}, {"id": "a", "ts": 1, "prediction": 1}])
    2
    >>> [(m.topic, m.partition, m.offset) for m in FileSource(path, order="time").poll(10, 0)]
    [('events.jsonl', 0, 1), ('events.jsonl', 0, 0)]
    """

    def __init__(self, paths: StrPath | Sequence[StrPath], *, order: Literal["file", "time"] = "file",
                 kind: Kind | None = None, batch_rows: int = 65_536, max_line_bytes: int = 64 << 20) -> None:
        if order not in ("file", "time"):
            raise RegistrationError(f"order={order!r} is not a choice; use order='file' or order='time'")
        if kind not in (None, "prediction", "feedback"):
            raise RegistrationError(f"kind={kind!r} is not a choice; use kind='prediction', 'feedback' or None (mixed)")
        if batch_rows <= 0 or max_line_bytes <= 0:
            raise RegistrationError("batch_rows and max_line_bytes must be positive")
        self.paths = _paths(paths)
        self.formats = [_format(p) for p in self.paths]
        for path in self.paths:
            if not path.is_file():
                raise SourceError(f"{path}: no such file")
        self.order = order
        self.kind = kind
        self._batch_rows = batch_rows
        self._max_line_bytes = max_line_bytes
        self._stream: Iterator[Message] | None = None
        self._exhausted = False
        #: ``{(topic, partition): next offset}`` as last committed (informational: files are replayed whole)
        self.committed: dict[tuple[str, int], int] = {}

    # -- Source protocol ----------------------------------------------------------------------
    def poll(self, max_records: int, timeout: float) -> list[Message]:
        """The next ``max_records`` messages at most; never waits (a file has no future)."""
        if self._exhausted:
            return []
        if self._stream is None:
            self._stream = self._time_ordered() if self.order == "time" else self._file_ordered()
        try:
            batch = list(islice(self._stream, max_records))
        except SourceError:
            self._exhausted = True
            raise
        if len(batch) < max_records:
            self._exhausted = True
            self._close_stream()
        return batch

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.committed.update(offsets)

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def close(self) -> None:
        self._close_stream()

    # -- reading ------------------------------------------------------------------------------
    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and hasattr(stream, "close"):
            stream.close()  # closes the open file of a suspended generator

    def _file_ordered(self) -> Iterator[Message]:
        return chain.from_iterable(self._read(i) for i in range(len(self.paths)))

    def _time_ordered(self) -> Iterator[Message]:
        keyed = [(_sort_time(m.value), m) for m in self._file_ordered()]
        keyed.sort(key=lambda pair: pair[0])  # stable: equal times keep file order
        return iter([m for _, m in keyed])

    def _read(self, index: int) -> Iterator[Message]:
        path = self.paths[index]
        fmt, gz = self.formats[index]
        try:
            if fmt == "jsonl":
                yield from self._read_jsonl(path, index, gz)
            else:
                yield from self._read_parquet(path, index)
        except (OSError, EOFError) as exc:
            raise SourceError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc

    def _read_jsonl(self, path: Path, partition: int, gz: bool) -> Iterator[Message]:
        topic, kind, limit = path.name, self.kind, self._max_line_bytes
        with (gzip.open(path, "rb") if gz else open(path, "rb", buffering=1 << 16)) as f:
            for offset, line in enumerate(_lines(f, limit)):
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield Message(line, kind=kind, topic=topic, partition=partition, offset=offset)

    def _read_parquet(self, path: Path, partition: int) -> Iterator[Message]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
            maps = {f.name for f in parquet.schema_arrow if pa.types.is_map(f.type)}
            offset = 0
            for batch in parquet.iter_batches(batch_size=self._batch_rows):
                for row in batch.to_pylist():
                    yield Message(_row_event(row, maps), kind=self.kind, topic=path.name, partition=partition, offset=offset)
                    offset += 1
        except pa.ArrowException as exc:
            raise SourceError(f"{path}: not a readable Parquet file ({exc})") from exc


class _LineReader(Protocol):
    # A plain binary file or a gzip one: typeshed gives them no common readable base.
    def readline(self, size: int, /) -> bytes: ...


def _lines(f: _LineReader, limit: int) -> Iterator[bytes]:
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            # Cut an overlong line rather than load it: the monitor rejects what is left.
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
        yield line


def _row_event(row: dict[str, Any], maps: set[str]) -> dict[str, Any]:
    event = {}
    for name, value in row.items():
        if value is None:
            continue  # a column this row does not use, e.g. ``prediction`` on a feedback row
        if name in maps:
            value = dict(value)  # pyarrow gives a map as a list of (key, value) pairs
        if name in _DROP_NULL_VALUES and isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        elif isinstance(value, (datetime, date)):
            value = _time_value(value)
        event[name] = value
    return event


def _time_value(value: date) -> float | str:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.timestamp()
    return value.isoformat()  # naive: left as text so the monitor can say why it refuses it


def _sort_time(value: Any) -> float:
    # The event's ts if it can be read at all; otherwise -inf, so the event goes first (and is rejected).
    if isinstance(value, (bytes, str)):
        try:
            value = pydantic_core.from_json(value)
        except ValueError:
            return -math.inf
    if not isinstance(value, dict):
        return -math.inf
    ts = value.get("ts")
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        ts = float(ts)
        return ts if math.isfinite(ts) else -math.inf
    if isinstance(ts, str):
        try:
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            return -math.inf
        return parsed.timestamp() if parsed.tzinfo is not None else -math.inf
    return -math.inf


# -- writing ------------------------------------------------------------------------------------
def write_events(path: StrPath, events: Iterable[Any]) -> int:
    """Write events to ``path`` as JSONL (``.jsonl``, ``.jsonl.gz``) or Parquet (``.parquet``); return how many.

    Events are dicts or :class:`~streammon.Prediction` / :class:`~streammon.Feedback`; in JSONL a
    ``str`` or ``bytes`` item is written verbatim as one line (handy for malformed test input).
    Parquet needs one type per column (a ``score`` column holds numbers or maps, not both).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.parquet"
    >>> write_events(path, [{"id": "a", "ts": 1, "prediction": 1, "score": 0.9}, {"id": "a", "ts": 2, "label": 1}])
    2
    >>> [m.value for m in FileSource(path).poll(10, 0)]
    [{'id': 'a', 'ts': 1, 'prediction': 1, 'score': 0.9}, {'id': 'a', 'ts': 2, 'label': 1}]
    """
    path = Path(path)
    fmt, gz = _format(path)
    if fmt == "jsonl":
        return _write_jsonl(path, events, gz)
    return _write_parquet(path, events)


def _as_dict(event: Any) -> dict[str, Any]:
    if isinstance(event, Mapping):
        return dict(event)
    dump = getattr(event, "model_dump", None)
    if callable(dump):
        return dump(exclude_none=True)
    raise TypeError(f"cannot write {type(event).__name__} as an event; give a dict, a Prediction or a Feedback")


def _write_jsonl(path: Path, events: Iterable[Any], gz: bool) -> int:
    n = 0
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        for event in events:
            if isinstance(event, str):
                event = event.encode("utf-8", "surrogateescape")
            if isinstance(event, (bytes, bytearray)):
                if b"\n" in event:
                    raise ValueError(f"line {n} contains a newline; a JSONL line is one event")
                line = bytes(event)
            else:
                line = json.dumps(_as_dict(event), separators=(",", ":"), ensure_ascii=False).encode()
            f.write(line + b"\n")
            n += 1
    return n


def _write_parquet(path: Path, events: Iterable[Any]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_as_dict(e) for e in events]
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))  # every column any row has, in order of first appearance
    columns = {}
    for name in names:
        try:
            column = pa.array([row.get(name) for row in rows])
        except (pa.ArrowException, TypeError) as exc:
            raise ValueError(f"cannot write column {name!r} to Parquet: {exc}. Parquet needs one type per column") from exc
        if pa.types.is_struct(column.type) and column.type.num_fields == 0:
            continue  # only empty maps: Parquet cannot store a struct without fields, and empty equals absent
        columns[name] = column
    pq.write_table(pa.table(columns), path)
    return len(rows)
