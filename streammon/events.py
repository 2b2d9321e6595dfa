"""Event schemas and decoding: the wire format of design section 2.

Both the monitor and the producer SDK validate with these models, so a producer cannot send an
event that the monitor would reject for its shape.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeGuard

import pydantic_core
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, ValidationError
from pydantic_core import ErrorDetails

from .errors import EventError

__all__ = ["Prediction", "Feedback", "Event", "EventPolicy", "decode_event"]


def _event_time(value: Any) -> Any:
    # Epoch seconds, or an RFC 3339 string with an offset; naive times are ambiguous, so refused.
    if isinstance(value, bool):
        raise ValueError("ts must be epoch seconds or an RFC 3339 string, not a boolean")
    if isinstance(value, str):
        try:
            # RFC 3339 allows a lower-case 'z'; Python 3.11 only reads 'Z'.
            parsed = datetime.fromisoformat(value[:-1] + "Z" if value.endswith("z") else value)
        except ValueError:
            raise ValueError(f"ts {value[:40]!r} is not an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise ValueError(f"ts {value[:40]!r} has no UTC offset (add 'Z' or '+00:00')")
        return parsed.timestamp()
    return value


EventTime = Annotated[float, BeforeValidator(_event_time), Field(ge=0)]
EventId = Annotated[str, Field(min_length=1, max_length=512)]
# Integers beyond 64 bits are JSON but no model's output: refused here rather than overflow later.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Value = bool | Int64 | float | str
# Strict: a score sent as a string or a boolean is a producer bug worth rejecting, not coercing.
Score = StrictFloat | dict[str, StrictFloat]

_CONFIG = ConfigDict(extra="allow", allow_inf_nan=False, frozen=True, strict=False)


class Prediction(BaseModel):
    """A model's answer to one request.

    >>> p = Prediction(id="a1", ts=1700000000, prediction=1, score=0.8, segment={"version": "v3"})
    >>> p.model, p.prediction
    ('default', 1)
    """

    model_config = _CONFIG
    kind: Literal["prediction"] = "prediction"
    id: EventId
    ts: EventTime
    model: str = "default"
    prediction: Value
    score: Score | None = None
    features: dict[str, Value | None] | None = None
    segment: dict[str, str] | None = None

    @property
    def extra(self) -> dict[str, Any]:
        """Fields the schema does not know; kept, and ignored by built-in operators."""
        return self.model_extra or {}


class Feedback(BaseModel):
    """The true value for a prediction id, known later. Its wire field is ``label``.

    >>> Feedback(id="a1", ts="2023-11-14T22:13:20Z", label=1).ts
    1700000000.0
    """

    model_config = _CONFIG
    kind: Literal["feedback"] = "feedback"
    id: EventId
    ts: EventTime
    label: Value
    model: str | None = None

    @property
    def extra(self) -> dict[str, Any]:
        return self.model_extra or {}


Event = Prediction | Feedback


class EventPolicy(BaseModel):
    """Limits applied to every incoming event, on top of the schema."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_event_bytes: int = Field(default=1 << 20, gt=0)
    max_future_seconds: float = Field(default=86400.0, ge=0)


_DEFAULT_POLICY = EventPolicy()
_MODELS: dict[str, type[Prediction] | type[Feedback]] = {"prediction": Prediction, "feedback": Feedback}
_VALIDATORS = {kind: model.__pydantic_validator__ for kind, model in _MODELS.items()}


def _is_tag(part: object) -> TypeGuard[str]:
    # pydantic names union members in the error path ('float', 'dict[str,float]'); they are not fields.
    return isinstance(part, str) and (part in {"float", "int", "str", "bool", "none"} or "[" in part
                                      or part.startswith(("constrained-", "function-")))


def _reason(exc: ValidationError) -> str:
    """One short message per field. For a union (``score``: float or map) the most specific
    complaint wins; when every member simply had the wrong type, the expected types are listed."""
    by_field: dict[str, list[ErrorDetails]] = {}
    for err in exc.errors(include_url=False):
        # Paths hold the sender's map keys: shortened and escaped, so a reason fits a Kafka header.
        err["loc"] = tuple(_shown(p) for p in err["loc"])
        field = next((str(p) for p in err["loc"] if not _is_tag(p)), "event")
        by_field.setdefault(field, []).append(err)
    parts = []
    for errs in list(by_field.values())[:3]:
        depth = max(len(e["loc"]) for e in errs)
        deepest = [e for e in errs if len(e["loc"]) == depth]
        # A member that got the right type but a bad value (not finite, out of range) says the most.
        specific = next((e for e in deepest if not e["type"].endswith(("_type", "_parsing"))), None)
        best = specific or deepest[0]
        path = ".".join(str(p) for p in best["loc"] if not _is_tag(p)) or "event"
        tags = [p for e in deepest for p in e["loc"][-1:] if _is_tag(p)]
        if len(deepest) > 1 and specific is None and len(tags) == len(deepest):
            names = (t.split("[")[0].removeprefix("constrained-") for t in tags)
            parts.append(f"{path}: expected {' or '.join(names)}, got {type(best['input']).__name__}")
        else:
            parts.append(f"{path}: {best['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _shown(part: int | str) -> int | str:
    if not isinstance(part, str) or (len(part) <= 64 and part.isascii()):
        return part
    return part[:64].encode("utf-8", "backslashreplace").decode("utf-8")


def _kind_of(obj: Mapping[str, Any]) -> str:
    kind = obj.get("kind")
    if kind is not None:
        if not isinstance(kind, str) or kind not in _MODELS:
            shown = repr(kind[:40]) if isinstance(kind, str) else f"a {type(kind).__name__}"
            raise EventError(f"kind: must be 'prediction' or 'feedback', got {shown}")
        return kind
    if "label" in obj:
        return "feedback"
    if "prediction" in obj:
        return "prediction"
    raise EventError("event has neither 'prediction' nor 'label' (nor a 'kind')")


def decode_event(
    raw: bytes | str | Mapping[str, Any] | Event,
    *,
    kind: Literal["prediction", "feedback"] | None = None,
    key: bytes | str | None = None,
    policy: EventPolicy = _DEFAULT_POLICY,
    now: float | None = None,
) -> Event:
    """Validate one event and return it, or raise :class:`EventError` with the reason.

    ``kind`` is known when the topic tells it; otherwise the fields tell it (design section 2).
    ``key`` is the Kafka message key, which must be the event's id.
    """
    try:
        if type(raw) is bytes and kind is not None:  # the hot path: a Kafka message on a typed topic
            if len(raw) > policy.max_event_bytes:
                raise EventError(f"event of {len(raw)} bytes exceeds max_event_bytes={policy.max_event_bytes}")
            event = _from_json(raw, kind)
        else:
            event = _validate(raw, kind, policy)
    except ValidationError as exc:
        raise EventError(_reason(exc), raw=raw) from None
    except EventError as exc:
        exc.raw = raw
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile object (a raising __eq__, a broken Mapping) is bad input too
        raise EventError(f"event could not be read: {type(exc).__name__}", raw=raw) from None
    if key is not None:
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError:
                raise EventError("message key is not valid UTF-8", raw=raw) from None
        elif not isinstance(key, str):
            raise EventError(f"message key must be bytes or text, got {type(key).__name__}", raw=raw)
        if key != event.id:
            raise EventError(f"message key {key[:64]!r} differs from id {event.id[:64]!r}", raw=raw)
    limit = (time.time() if now is None else now) + policy.max_future_seconds
    if event.ts > limit:
        raise EventError(f"ts {event.ts:.6g} is more than {policy.max_future_seconds:.0f} s in the future", raw=raw)
    return event


def _from_json(raw: bytes | bytearray | str, kind: str) -> Event:
    try:
        return _VALIDATORS[kind].validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise EventError(f"malformed JSON: {first['msg']}") from None
        raise


def _validate(raw: Any, kind: str | None, policy: EventPolicy) -> Event:
    if isinstance(raw, (Prediction, Feedback)):
        if kind is not None and raw.kind != kind:
            raise EventError(f"a {raw.kind} event on the {kind} stream")
        return _check_text(raw)
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    if isinstance(raw, (bytes, bytearray, str)):
        if isinstance(raw, str):
            try:
                size = len(raw.encode("utf-8"))
            except UnicodeEncodeError:
                raise EventError("value is not valid UTF-8 text") from None
        else:
            size = len(raw)
        if size > policy.max_event_bytes:
            raise EventError(f"event of {size} bytes exceeds max_event_bytes={policy.max_event_bytes}")
        if kind is not None:
            return _from_json(raw, kind)
        try:
            raw = pydantic_core.from_json(raw)
        except ValueError as exc:
            raise EventError(f"malformed JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise EventError(f"event must be a JSON object, got {type(raw).__name__}")
    return _check_text(_MODELS[kind or _kind_of(raw)].model_validate(raw))


def _check_text(event: Event) -> Event:
    """Refuse text that is not UTF-8 (lone surrogates), which JSON cannot carry: a dict or a model
    built in Python can, and as a label value it would break every later scrape of /metrics."""
    for name in type(event).model_fields:
        if _not_utf8(getattr(event, name)):
            raise EventError(f"{name}: text is not valid UTF-8 (a lone surrogate)")
    return event


def _not_utf8(value: Any) -> bool:
    if isinstance(value, str):
        if value.isascii():
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_not_utf8(k) or _not_utf8(v) for k, v in value.items())
    return False
