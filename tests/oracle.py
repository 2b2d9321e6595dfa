"""A from-scratch reference for the engine: a plain sequential join and window selection.

Written straight from design sections 3 and 5, with none of the engine's code: dictionaries, one
event at a time, and windows chosen by filtering the full list of rows at the end.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Row:
    stream: str  # "prediction" | "feedback" | "pair"
    model: str
    segment: tuple
    arrival: float  # stream time when the row came to be
    pred_ts: float | None = None
    fb_ts: float | None = None
    y_true: object = None
    y_pred: object = None
    score: object = None
    features: dict | None = None
    id: str = ""

    def time(self, basis: str) -> float:
        if self.stream == "prediction":
            return self.pred_ts
        if self.stream == "feedback":
            return self.fb_ts
        return self.pred_ts if basis == "prediction" else self.fb_ts


@dataclass
class OracleResult:
    rows: list[Row] = field(default_factory=list)
    stream_time: float = -math.inf
    joined: int = 0
    duplicates: dict = field(default_factory=lambda: {"prediction": 0, "feedback": 0})
    expired: dict = field(default_factory=lambda: {"prediction": 0, "feedback": 0})
    pending_predictions: int = 0
    pending_feedback: int = 0

    def select(self, stream: str, window, basis: str = "prediction") -> list[Row]:
        """Rows of ``stream`` inside ``window`` at the final stream time (design section 3)."""
        rows = [r for r in self.rows if r.stream == stream]
        if window is None:  # cumulative
            return rows
        w_end = (math.floor(self.stream_time / window.step) + 1) * window.step
        start_pane = round(w_end / window.step) - window.panes
        return [r for r in rows if math.floor(r.time(basis) / window.step) >= start_pane]

    def late(self, stream: str, window, basis: str = "prediction") -> int:
        return sum(1 for r in self.rows if r.stream == stream and r.time(basis) < r.arrival - window.size - window.grace)


def run_oracle(events: list[dict], *, feedback_ttl: float, prediction_ttl: float, segments: tuple = ()) -> OracleResult:
    out = OracleResult()
    pending: dict[str, dict] = {}  # id -> prediction event
    joined: dict[str, float] = {}  # id -> prediction ts (remembered to spot duplicate feedback)
    early: OrderedDict[str, dict] = OrderedDict()
    T = -math.inf

    def seg_of(e):
        return tuple((e.get("segment") or {}).get(k, "") for k in segments)

    for e in events:
        T = max(T, e["ts"])
        i = e["id"]
        if "prediction" in e:
            known_ts = pending[i]["ts"] if i in pending else joined.get(i)
            if known_ts is not None:
                if known_ts >= T - feedback_ttl:
                    out.duplicates["prediction"] += 1
                    continue
                if i in pending:
                    out.expired["prediction"] += 1
                pending.pop(i, None)
                joined.pop(i, None)
            out.rows.append(Row("prediction", e.get("model", "default"), seg_of(e), T, pred_ts=e["ts"],
                                y_pred=e["prediction"], score=e.get("score"), features=e.get("features"), id=i))
            fb = early.pop(i, None)
            if fb is not None and fb["ts"] >= T - prediction_ttl:
                joined[i] = e["ts"]
                out.joined += 1
                out.rows.append(Row("pair", e.get("model", "default"), seg_of(e), T, pred_ts=e["ts"], fb_ts=fb["ts"],
                                    y_true=fb["label"], y_pred=e["prediction"], score=e.get("score"), id=i))
                continue
            if fb is not None:
                out.expired["feedback"] += 1
            pending[i] = e
        else:
            known_ts = pending[i]["ts"] if i in pending else joined.get(i)
            if known_ts is not None and known_ts < T - feedback_ttl:
                if i in pending:
                    out.expired["prediction"] += 1
                pending.pop(i, None)
                joined.pop(i, None)
                known_ts = None
            if known_ts is not None and i in joined:
                out.duplicates["feedback"] += 1
                continue
            if known_ts is None and i in early:
                if early[i]["ts"] >= T - prediction_ttl:
                    out.duplicates["feedback"] += 1
                    continue
                del early[i]  # timed out: the new one waits afresh
                out.expired["feedback"] += 1
            out.rows.append(Row("feedback", e.get("model") or "default", tuple("" for _ in segments), T,
                                fb_ts=e["ts"], y_true=e["label"], id=i))
            if known_ts is not None:
                p = pending.pop(i)
                joined[i] = p["ts"]
                out.joined += 1
                out.rows.append(Row("pair", p.get("model", "default"), seg_of(p), T, pred_ts=p["ts"], fb_ts=e["ts"],
                                    y_true=e["label"], y_pred=p["prediction"], score=p.get("score"), id=i))
            else:
                early[i] = e
    out.stream_time = T
    out.expired["prediction"] += sum(1 for p in pending.values() if p["ts"] < T - feedback_ttl)
    out.expired["feedback"] += sum(1 for f in early.values() if f["ts"] < T - prediction_ttl)
    out.pending_predictions = sum(1 for p in pending.values() if p["ts"] >= T - feedback_ttl)
    out.pending_feedback = sum(1 for f in early.values() if f["ts"] >= T - prediction_ttl)
    return out
