"""Settings, validated once: a monitor's (:class:`MonitorSettings`) and one run's (:class:`RunOptions`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .windows import Cumulative, Sliding, Window, parse_duration

__all__ = ["MonitorSettings", "RunOptions"]


class MonitorSettings(BaseModel):
    """Every setting of a :class:`Monitor`, validated once (durations as seconds or '7d')."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    windows: tuple[Window, ...] = (Cumulative(), Sliding("1h"))
    segments: tuple[str, ...] = ()
    feedback_ttl: float = 7 * 86400.0
    prediction_ttl: float = 3600.0
    # None: the join store's own bound, 1e7 entries in memory (~2 GiB of RAM), 1e9 on disk (~100 GB of disk).
    max_pending: int | None = Field(None, gt=0)
    max_segment_values: int = Field(100, gt=0)
    remember_joined: bool = True
    batch_size: int = Field(4096, gt=0)
    max_event_bytes: int = Field(1 << 20, gt=0)
    max_future_seconds: float = Field(86400.0, ge=0)

    @field_validator("feedback_ttl", "prediction_ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any, info) -> float:
        return parse_duration(value, what=info.field_name)


class RunOptions(BaseModel):
    """How :meth:`Monitor.run` consumes, validated once (see its docstring for each setting)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    state_dir: str | os.PathLike[str] | None = None
    checkpoint_interval: float = Field(5.0, ge=0)
    max_records: int | None = Field(None, gt=0)  # None: the monitor's batch_size
    poll_timeout: float = Field(0.5, ge=0)
    until: Callable[[], bool] | None = None
    publish_interval: float = Field(1.0, ge=0)
    background_checkpoints: bool = True
    max_idle: float = Field(0.5, ge=0)
    join_store: Literal["auto", "memory", "disk"] = "auto"
