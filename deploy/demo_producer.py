"""The compose stack's demo producer: the taxi-tip simulation of ``streammon demo`` written to Kafka.

Predictions go to the predictions topic and feedback to the feedback topic, each keyed by its
prediction id (design section 2), paced at ``--rate`` events per second of wall time. The
simulation's malformed events are sent where their fields point, as a buggy producer would send
them, so the monitor's rejected-event path shows on the dashboards too.

    python deploy/demo_producer.py --bootstrap-servers kafka:9092 --topics predictions,feedback --rate 200

The producer touches ``--heartbeat`` every few seconds while it sends; the compose health check
reads its age.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

HEARTBEAT_SECONDS = 5.0


def topic_of(event: Any, predictions: str, feedback: str) -> str:
    """Feedback has a ``label`` (or says ``kind: feedback``); everything else goes to predictions."""
    kind = event.get("kind") if isinstance(event, dict) else None
    if kind == "feedback" or (kind is None and isinstance(event, dict) and "label" in event):
        return feedback
    return predictions


def key_of(event: Any) -> bytes | None:
    ident = event.get("id") if isinstance(event, dict) else None
    return ident.encode() if isinstance(ident, str) and ident else None


def produce(send: Callable[[str, bytes | None, bytes], Any], events: Iterable[Any], *, rate: float,
            predictions: str = "predictions", feedback: str = "feedback", stop: threading.Event | None = None,
            heartbeat: Path | None = None, clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], Any] = time.sleep) -> int:
    """Send every event as ``send(topic, key, json_bytes)``, ``rate`` per second; returns how many were sent."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    started = last_beat = clock()
    sent = 0
    for event in events:
        if stop is not None and stop.is_set():
            break
        ahead = started + sent / rate - clock()
        if ahead > 0:
            sleep(ahead)
        send(topic_of(event, predictions, feedback), key_of(event), json.dumps(event, separators=(",", ":")).encode())
        sent += 1
        if heartbeat is not None and clock() - last_beat >= HEARTBEAT_SECONDS:
            heartbeat.touch()
            last_beat = clock()
    return sent


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write the taxi-tip simulation to Kafka.")
    p.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers (host:port,...)")
    p.add_argument("--topics", default="predictions,feedback", help="predictions topic,feedback topic")
    p.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulation (default 0)")
    p.add_argument("--n-events", type=int, help="stop after this many events (default: never)")
    p.add_argument("--heartbeat", type=Path, help="file touched while sending, for a health check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    predictions, _, feedback = args.topics.partition(",")
    if not predictions or not feedback or "," in feedback:
        print("--topics must name two topics: predictions,feedback", file=sys.stderr)
        return 2
    from kafka import KafkaProducer  # imported late, so the module is importable for tests without a broker

    from streammon.demo import simulate

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    producer = KafkaProducer(bootstrap_servers=args.bootstrap_servers.split(","), acks="all", linger_ms=20,
                             client_id="streammon-demo-producer")
    if args.heartbeat is not None:
        args.heartbeat.touch()
    try:
        sent = produce(lambda topic, key, value: producer.send(topic, key=key, value=value),
                       simulate(args.seed, n_events=args.n_events), rate=args.rate, predictions=predictions,
                       feedback=feedback, stop=stop, heartbeat=args.heartbeat)
    finally:
        producer.flush()
        producer.close()
    print(f"sent {sent} events", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
