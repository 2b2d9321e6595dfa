"""A realistic, reproducible prediction + feedback stream for the benchmarks, as wire messages.

Predictions arrive at ``rate`` per second of event time (exponential gaps) with a score, a predicted
class, two features and a ``version`` segment; ``feedback_share`` of them get feedback after an
exponential delay, so the merged stream is in arrival (event-time) order with feedback interleaved
later than its prediction, as on the two Kafka topics. Generation happens in chunks so a long
stream (1e7 events) never has to sit in memory at once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from streammon.connectors.base import Message

__all__ = ["StreamSpec", "messages", "take"]

_PREDICTION = (b'{"id":"%s","ts":%.3f,"model":"fraud","prediction":%d,"score":%.4f,'
               b'"features":{"amount":%.2f,"country":"%s"},"segment":{"version":"%s"}}')
_FEEDBACK = b'{"id":"%s","ts":%.3f,"label":%d}'
_COUNTRIES = (b"FR", b"DE", b"US", b"BR", b"IN")


@dataclass(frozen=True)
class StreamSpec:
    """What the stream looks like; the defaults are the benchmark's realistic stream."""

    rate: float = 100.0  # predictions per second of event time (8.6 million a day)
    feedback_share: float = 0.9
    mean_delay: float = 120.0  # seconds from prediction to feedback, exponential
    versions: tuple[str, ...] = ("v1", "v2")  # first one takes 80 % (a canary takes the rest)
    even: bool = False  # versions share the predictions evenly instead (a series each, all alike)
    seed: int = 20240611
    start: float = 1_700_000_000.0
    chunk: int = 50_000  # predictions generated at a time


def _version_weights(n: int, even: bool) -> np.ndarray:
    if n == 1 or even:
        return np.full(n, 1.0 / n)
    rest = np.full(n - 1, 0.2 / (n - 1))
    return np.concatenate([[0.8], rest])


def messages(spec: StreamSpec = StreamSpec()) -> Iterator[Message]:
    """An endless stream of messages in arrival order (predictions and feedback interleaved)."""
    rng = np.random.default_rng(spec.seed)
    versions = [v.encode() for v in spec.versions]
    weights = _version_weights(len(versions), spec.even)
    t = spec.start
    carry: list[tuple[float, Message]] = []  # feedback not yet due at the end of the last chunk
    while True:
        n = spec.chunk
        ts = t + np.cumsum(rng.exponential(1.0 / spec.rate, n))
        t = float(ts[-1])
        score = np.round(rng.beta(2.0, 5.0, n), 4)
        y_true = (rng.random(n) < score).astype(np.int64)  # calibrated scores
        y_pred = (score >= 0.5).astype(np.int64)
        gets_feedback = rng.random(n) < spec.feedback_share
        fb_ts = ts + rng.exponential(spec.mean_delay, n)
        version = rng.choice(len(versions), n, p=weights)
        country = rng.integers(0, len(_COUNTRIES), n)
        amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
        blob = rng.bytes(16 * n).hex().encode()  # 32-character hex ids, like uuid4().hex
        rows = carry
        for i, (p_ts, p, s, a, c, v, y, has, f_ts) in enumerate(zip(
                ts.tolist(), y_pred.tolist(), score.tolist(), amount.tolist(), country.tolist(),
                version.tolist(), y_true.tolist(), gets_feedback.tolist(), fb_ts.tolist())):
            id_ = blob[32 * i: 32 * i + 32]
            rows.append((p_ts, Message(_PREDICTION % (id_, p_ts, p, s, a, _COUNTRIES[c], versions[v]),
                                       kind="prediction", key=id_)))
            if has:
                rows.append((f_ts, Message(_FEEDBACK % (id_, f_ts, y), kind="feedback", key=id_)))
        rows.sort(key=lambda r: r[0])
        # Feedback due after this chunk's last prediction waits for the next chunk, to stay in order.
        cut = bisect.bisect_right(rows, t, key=lambda r: r[0])
        for _, msg in rows[:cut]:
            yield msg
        carry = rows[cut:]


def take(stream: Iterator[Message], n: int) -> list[Message]:
    """The next ``n`` messages of ``stream`` as a list."""
    out = []
    for msg in stream:
        out.append(msg)
        if len(out) == n:
            break
    return out
