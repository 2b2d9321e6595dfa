"""A dead-letter sink that appends rejected messages to a JSONL file, reason first."""

from __future__ import annotations

import base64
import json
import threading
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import SourceError
from .base import Message

__all__ = ["FileDeadLetter"]


def _text_or_base64(data: Any) -> tuple[Any, bool]:
    """(JSON-safe value, whether it is base64). Text stays text so that a person can read the file."""
    if data is None:
        return None, False
    if isinstance(data, str):
        try:
            data = data.encode("utf-8", "surrogateescape")  # a str decoded with surrogateescape gets its bytes back
        except UnicodeEncodeError:
            data = data.encode("utf-8", "surrogatepass")  # other lone surrogates: kept, as bytes that are not UTF-8
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        # A decoded event (a dict from a Parquet row or replay): its JSON text; repr for what JSON cannot hold.
        return json.dumps(data, default=repr, ensure_ascii=False), False
    data = bytes(data)
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


class FileDeadLetter:
    """Appends one JSON line per rejected message: ``reason, topic, partition, offset, kind, key, value``.

    ``key`` and ``value`` are the message's bytes as text when they are UTF-8, else base64 with
    ``key_base64`` / ``value_base64`` set to true; a decoded event (a dict) is written as its JSON
    text. With ``autoflush`` (the default) every ``send`` is written at once; without it, lines are
    buffered until :meth:`flush`, which ``Monitor.run`` calls at every checkpoint.

    >>> import json, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "dead.jsonl"
    >>> with FileDeadLetter(path) as sink:
    ...     sink.send(Message(b"\\xff{", topic="predictions", offset=7), "malformed JSON")
    >>> record = json.loads(path.read_text())
    >>> record["reason"], record["offset"], record["value_base64"], base64.b64decode(record["value"])
    ('malformed JSON', 7, True, b'\\xff{')
    """

    def __init__(self, path: str | PathLike, *, autoflush: bool = True) -> None:
        self.path = Path(path)
        self.autoflush = autoflush
        self._pending: list[str] = []
        self._lock = threading.Lock()
        try:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open until close()
        except OSError as exc:
            raise SourceError(f"cannot open the dead-letter file {self.path}: {exc}") from exc

    def send(self, message: Message, reason: str) -> None:
        record: dict[str, Any] = {"reason": reason, "topic": message.topic, "partition": message.partition,
                                  "offset": message.offset, "kind": message.kind}
        for field in ("key", "value"):
            text, encoded = _text_or_base64(getattr(message, field))
            record[field] = text
            if encoded:
                record[f"{field}_base64"] = True
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._pending.append(line)
        if self.autoflush:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records and hand them to the OS (one write per batch)."""
        with self._lock:
            if self._file.closed:
                raise SourceError(f"the dead-letter file {self.path} is closed")
            if not self._pending:
                return
            lines, self._pending = "".join(self._pending), []
            try:
                self._file.write(lines)
                self._file.flush()
            except OSError as exc:
                self._pending.insert(0, lines)  # kept for the next flush, not lost
                raise SourceError(f"cannot write the dead-letter file {self.path}: {exc}") from exc

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> FileDeadLetter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
