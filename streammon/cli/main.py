"""The ``streammon`` command: ``run`` an app serving ``/metrics``, ``replay`` files through it, ``produce`` events to Kafka, ``demo``.

Exit codes: 0 done, 1 failed while running, 2 the command cannot work as given (arguments, app,
input files, a busy port). Results go to stdout, progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from ..apps import load_app
from ..errors import AppLoadError, RegistrationError, SourceError, StreamMonError, UsageError
from ..monitor import Monitor
from .generate import add_generate_commands
from .kafka import kafka_dead_letter, kafka_option, kafka_settings, kafka_source, read_text_file

__all__ = ["main"]

log = logging.getLogger("streammon")


# -- reading results --------------------------------------------------------------------------
def _results(monitor: Monitor) -> list[dict[str, Any]]:
    """Each tracked metric's published samples, with the count of events in its window."""
    samples = monitor.values()
    out = []
    for tracked in monitor.metrics:
        name = "streammon_" + tracked.name
        counts = {_key(s.labels, None): s.value for s in samples if s.name == name + "_count"}
        for s in samples:
            if s.name == name:
                value = None if math.isnan(s.value) else s.value
                out.append({"name": s.name, "labels": s.labels, "value": value,
                            "count": int(counts.get(_key(s.labels, tracked.output_label), 0))})
    return out


def _key(labels: dict[str, str], drop: str | None) -> tuple:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("metric", "labels", "value", "count")
    lines = [header] + [
        (r["name"].removeprefix("streammon_"),
         " ".join(f"{k}={v}" for k, v in r["labels"].items() if k != "monitor" and v),  # "" = no such label
         "nan" if r["value"] is None else f"{r['value']:.6g}",
         str(r["count"]))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join(
        f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d:>{widths[3]}}".rstrip() for a, b, c, d in lines
    )


def _health(monitor: Monitor) -> str:
    totals: dict[str, float] = {}
    for s in monitor.values():
        if s.name == "streammon_events_total":
            outcome = s.labels["outcome"]
            key = f"{s.labels['topic']} {outcome}" if outcome == "accepted" else outcome
            totals[key] = totals.get(key, 0) + s.value
        elif s.name in ("streammon_joined_total", "streammon_late_events_total"):
            key = "joined" if "joined" in s.name else "late"
            totals[key] = totals.get(key, 0) + s.value
        elif s.name == "streammon_join_pending" and s.labels["side"] == "prediction":
            totals["pending"] = s.value
    read = sum(v for k, v in totals.items() if k.endswith("accepted") or k in ("rejected", "duplicate"))
    parts = [f"{totals.get(k, 0):,.0f} {k}" for k in
             ("predictions accepted", "feedback accepted", "rejected", "duplicate", "joined", "pending", "late")]
    return f"monitor {monitor.name}: {read:,.0f} events read: " + ", ".join(parts)


# -- commands ---------------------------------------------------------------------------------
def _source(paths: Sequence[str], order: Literal["file", "time"]):
    from ..connectors import FileSource  # imported late: reading files is the only use

    try:
        return FileSource(paths, order=order)
    except (RegistrationError, SourceError) as exc:  # a missing file or an unknown suffix
        raise UsageError(str(exc)) from exc


def _dead_letter(monitor: Monitor, path: str | None) -> contextlib.AbstractContextManager:
    if not path:
        return contextlib.nullcontext()
    from ..connectors import FileDeadLetter

    try:
        sink = FileDeadLetter(path)
    except SourceError as exc:
        raise UsageError(str(exc)) from exc
    monitor.dead_letter = sink
    return sink


def _replay(args: argparse.Namespace) -> int:
    monitor = load_app(args.app)
    source = _source(args.files, args.order)
    with _dead_letter(monitor, args.dead_letter):
        monitor.run(source)
    rows = _results(monitor)
    print(_health(monitor), file=sys.stderr)
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


def _run(args: argparse.Namespace) -> int:
    if bool(args.source) == bool(args.bootstrap_servers):
        raise UsageError("give either --bootstrap-servers HOST:PORT (Kafka) or --source FILE... (event files)")
    security = _metrics_security(args)
    monitor = load_app(args.app)
    if args.scale_out:
        _require_mergeable(monitor)
    if args.bootstrap_servers:
        source = kafka_source(args)
        dead_letter = contextlib.nullcontext() if args.dead_letter else kafka_dead_letter(monitor, args)
    else:
        source = _source(args.source, args.order)
        dead_letter = contextlib.nullcontext()
    server = _serve(monitor, args, security)
    print(f"serving {server.url}", flush=True)
    try:
        with _stop_on_signals() as stop, _dead_letter(monitor, args.dead_letter), dead_letter:
            monitor.run(source, until=stop.is_set, state_dir=args.state_dir, checkpoint_interval=args.checkpoint_interval,
                        publish_interval=args.publish_interval, max_idle=args.max_idle, join_store=args.join_store)
            print(_health(monitor), file=sys.stderr, flush=True)
            if args.source and not args.exit_when_done and not stop.is_set():
                print(f"input done; serving {server.url} until interrupted (Ctrl-C)", file=sys.stderr, flush=True)
                while not stop.wait(0.2):
                    pass
    finally:
        monitor.close()
    return 0


def _require_mergeable(monitor: Monitor) -> None:
    from ..scaleout import require_mergeable
    try:
        require_mergeable(monitor.metrics)
    except RegistrationError as exc:
        raise UsageError(str(exc)) from exc


def _export(args: argparse.Namespace) -> int:
    security = _metrics_security(args)
    monitor = load_app(args.app)
    if not Path(args.state_dir).is_dir():
        raise UsageError(f"--state-dir {args.state_dir} is not a directory: give the one the scaled-out workers share")
    _require_mergeable(monitor)
    server = _serve(monitor, args, security)
    print(f"serving {server.url}", flush=True)
    try:
        with _stop_on_signals() as stop:
            monitor.export(args.state_dir, refresh=args.refresh, until=stop.is_set)
    finally:
        monitor.close()
    return 0


def _serve(monitor: Monitor, args: argparse.Namespace, security: dict[str, Any]):
    host, port = args.metrics_host, args.metrics_port
    try:
        return monitor.serve(port, host=host, **security)
    except RegistrationError as exc:  # a certificate or key that cannot be loaded
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}") from exc


def _metrics_security(args: argparse.Namespace) -> dict[str, Any]:
    """``serve()``'s TLS and basic-auth settings from the flags, checked before anything starts."""
    if args.tls_key and not args.tls_cert:
        raise UsageError("--tls-key needs --tls-cert FILE (the certificate the key belongs to)")
    security: dict[str, Any] = {"certfile": args.tls_cert, "keyfile": args.tls_key}
    if args.basic_auth_file:
        security["basic_auth"] = _read_basic_auth(args.basic_auth_file)
    return security


def _read_basic_auth(path: str) -> tuple[str, str]:
    """``(user, password)`` from a file of one line ``user:password``, so no secret is in the process list."""
    fix = f"write one line user:password to it, e.g. printf '%s' 'prom:SECRET' > {path} && chmod 600 {path}"
    text = read_text_file(path, f"--basic-auth-file {path}", fix)
    mode = os.stat(path).st_mode
    lines = text.rstrip("\r\n").splitlines()
    user, colon, password = lines[0].partition(":") if len(lines) == 1 else ("", "", "")
    if not (user and colon and password):  # never echo the content: it may be the secret, mistyped
        raise UsageError(f"--basic-auth-file {path} must hold exactly one line user:password (neither empty): {fix}")
    # A warning, not a refusal: Kubernetes and Docker mount secrets 0644/0444 by default, alone in their container.
    if mode & 0o044:
        log.warning("--basic-auth-file %s is readable by other users (mode %o): chmod 600 %s", path, mode & 0o777, path)
    return user, password


def _demo(args: argparse.Namespace) -> int:
    if args.rate <= 0 or (args.duration is not None and args.duration <= 0):
        raise UsageError("--rate and --duration must be positive")
    options = dict(seed=args.seed, rate=args.rate, duration=args.duration, port=args.port, host=args.host,
                   serve=not args.no_serve, report_every=args.report_every)
    with _stop_on_signals() as stop:
        try:
            if args.in_process:
                from ..demo.local import run_demo  # imported late: it trains the demo's river models
                run_demo(**options, stop=stop)
            else:
                from ..demo.kafka import run_kafka_demo
                run_kafka_demo(**options, stop=stop, bootstrap_servers=args.bootstrap_servers, produce_only=args.produce_only)
        except OSError as exc:
            raise UsageError(f"cannot serve /metrics on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    return 0


def _produce(args: argparse.Namespace) -> int:
    from ..connectors.producer import EventProducer, produce_all  # imported late: only this command sends to Kafka

    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be positive")
    if args.topic and (args.predictions_topic or args.feedback_topic):
        raise UsageError("--topic sends every event to one topic; leave out --predictions-topic/--feedback-topic")
    source = _source(args.files, "file")
    rejected = []

    def on_reject(message, reason: str) -> None:
        rejected.append(reason)
        if len(rejected) <= 10:
            print(f"streammon produce: rejected {message.topic}:{message.offset + 1}: {reason}", file=sys.stderr)

    try:
        producer = EventProducer(args.bootstrap_servers, predictions_topic=args.predictions_topic or "predictions",
                                 feedback_topic=args.feedback_topic or "feedback", compression=args.compression,
                                 **kafka_settings(args))
    except RegistrationError as exc:
        source.close()
        raise UsageError(str(exc)) from exc
    with _stop_on_signals() as stop, producer:
        counts = produce_all(producer, source, kind=args.kind, topic=args.topic, rate=args.rate,
                             stop=stop.is_set, on_reject=on_reject)
    counts.pop("rejected", None)
    sent = ", ".join(f"{n:,} to {topic}" for topic, n in counts.items()) or "none"
    print(f"produced {sum(counts.values()):,} events ({sent})")
    if rejected:
        print(f"streammon produce: {len(rejected):,} invalid events were not sent", file=sys.stderr)
    return 130 if stop.is_set() else 1 if rejected else 0


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM, so loops end cleanly (handlers restored afterwards)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- parsing ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streammon", description="Monitor ML models in production: "
                                     "join predictions with feedback and publish metrics to Prometheus.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser("replay", help="replay event files through an app and print its metrics")
    replay.add_argument("files", nargs="+", metavar="FILE", help="JSONL or Parquet files of events")
    replay.add_argument("--app", required=True, help="the Monitor: app.py:monitor or package.module:monitor")
    replay.add_argument("--order", choices=("file", "time"), default="file",
                        help="file: each file in turn (default); time: merged by event time")
    replay.add_argument("--json", action="store_true", help="print JSON instead of a table")
    replay.add_argument("--dead-letter", metavar="PATH", help="write rejected events and reasons to this JSONL file")
    replay.set_defaults(handler=_replay)

    run = commands.add_parser("run", help="run an app, serving /metrics")
    run.add_argument("app", metavar="APP", help="the Monitor: app.py:monitor or package.module:monitor")
    run.add_argument("--source", nargs="+", metavar="FILE", help="read these event files instead of Kafka")
    run.add_argument("--order", choices=("file", "time"), default="file", help="order of --source files")
    run.add_argument("--exit-when-done", action="store_true", help="exit when the --source files are processed")
    run.add_argument("--dead-letter", metavar="PATH", help="write rejected events and reasons to this JSONL file")
    run.add_argument("--metrics-port", type=int, default=9108, help="port of /metrics (default 9108; 0 picks one)")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (default 127.0.0.1)")
    run.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (host:port,...)")
    run.add_argument("--topics", help="Kafka topics: predictions,feedback")
    run.add_argument("--group", help="Kafka consumer group")
    run.add_argument("--state-dir", help="directory for checkpoints: state and offsets, restored at start")
    run.add_argument("--checkpoint-interval", type=float, default=5.0, help="seconds between checkpoints (default 5)")
    run.add_argument("--kafka-client", choices=("kafka-python", "confluent"), default="kafka-python",
                     help="Kafka client library (confluent needs pip install 'streammon[confluent]')")
    run.add_argument("--dead-letter-topic", default="streammon-dead-letter",
                     help="Kafka topic for rejected events (default streammon-dead-letter; --dead-letter FILE overrides)")
    run.add_argument("--kafka-option", "-X", type=kafka_option, action="append", default=[], metavar="KEY=VALUE",
                     help="a setting passed to the Kafka client, e.g. security_protocol=SASL_SSL or "
                     "session_timeout_ms=10000 (repeatable; the client's own names)")
    run.add_argument("--scale-out", action="store_true", help="share the partitions with the other workers of "
                     "--group (state per partition in --state-dir, which they share); serve metrics with streammon export")
    run.add_argument("--prefetch", action="store_true", help="read Kafka in a child process while this one "
                     "processes (uses a second core; see docs/kafka.md)")
    run.add_argument("--publish-interval", type=float, default=1.0,
                     help="with --scale-out: seconds between writes of the partitions' partial aggregates (default 1)")
    run.add_argument("--max-idle", type=float, default=0.5, metavar="SECONDS",
                     help="Kafka: how long an empty partition at the end of its log holds the others back, so both "
                     "topics are processed in event-time order (default 0.5; see docs/kafka.md, Input order)")
    run.add_argument("--join-store", choices=["auto", "memory", "disk"], default="auto",
                     help="with --state-dir: keep the join on disk in RocksDB, committed in O(changes), or in memory, "
                     "snapshotted whole. auto (default): on disk for a single worker, unless the directory holds an "
                     "in-memory snapshot; in memory for --scale-out (see docs/kafka.md)")
    _add_metrics_security(run)
    run.set_defaults(handler=_run)

    export = commands.add_parser("export", help="serve the merged metrics of a scaled-out group of workers")
    export.add_argument("app", metavar="APP", help="the Monitor the workers run: app.py:monitor or package.module:monitor")
    export.add_argument("--state-dir", required=True, help="the directory the workers share")
    export.add_argument("--refresh", type=float, default=0.5, help="seconds between reads of the partials (default 0.5)")
    export.add_argument("--metrics-port", type=int, default=9108, help="port of /metrics (default 9108; 0 picks one)")
    export.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (default 127.0.0.1)")
    _add_metrics_security(export)
    export.set_defaults(handler=_export)

    demo = commands.add_parser("demo", help="a simulated taxi-tip model with drift, served on /metrics")
    demo.add_argument("--port", type=int, default=9108, help="port of /metrics (default 9108; 0 picks one)")
    demo.add_argument("--host", default="127.0.0.1", help="address of /metrics (default 127.0.0.1)")
    demo.add_argument("--duration", type=float, help="stop after this many seconds (default: at Ctrl-C)")
    demo.add_argument("--rate", type=float, default=1000.0, help="events per second (default 1000)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--no-serve", action="store_true", help="do not serve /metrics; print the summary only")
    demo.add_argument("--report-every", type=float, default=5.0, help="seconds between summaries (default 5)")
    demo.add_argument("--in-process", action="store_true", help="no broker: feed the monitor directly")
    demo.add_argument("--bootstrap-servers", help="use this Kafka instead of starting the embedded broker")
    demo.add_argument("--produce-only", action="store_true", help="only produce the simulated events (for a stack "
                      "whose workers run separately, e.g. docker compose)")
    demo.set_defaults(handler=_demo)

    produce = commands.add_parser("produce", help="validate event files and send them to Kafka")
    produce.add_argument("files", nargs="+", metavar="FILE", help="JSONL or Parquet files of events")
    produce.add_argument("--bootstrap-servers", default="localhost:9092",
                         help="Kafka bootstrap servers (host:port,...; default localhost:9092)")
    produce.add_argument("--topic", help="send every event to this topic (default: by kind, see below)")
    produce.add_argument("--predictions-topic", help="topic of predictions (default predictions)")
    produce.add_argument("--feedback-topic", help="topic of feedback (default feedback)")
    produce.add_argument("--kind", choices=("prediction", "feedback"),
                         help="every event is of this kind (others are rejected); default: the fields tell")
    produce.add_argument("--compression", choices=("gzip", "lz4", "zstd", "none"), default="gzip",
                         help="compression of message batches (default gzip)")
    produce.add_argument("--rate", type=float, metavar="EVENTS_PER_S", help="send at most this many events per second")
    produce.add_argument("--kafka-option", "-X", type=kafka_option, action="append", default=[], metavar="KEY=VALUE",
                         help="a kafka-python producer setting, e.g. security_protocol=SASL_SSL (repeatable)")
    produce.set_defaults(handler=_produce)

    add_generate_commands(commands)
    return parser


def _add_metrics_security(command: argparse.ArgumentParser) -> None:
    command.add_argument("--tls-cert", metavar="FILE", help="serve /metrics over HTTPS with this PEM certificate "
                         "(chain); the key too unless --tls-key is given")
    command.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key (unencrypted)")
    command.add_argument("--basic-auth-file", metavar="FILE", help="require basic auth on /metrics with the "
                         "user:password on this file's one line (keep it chmod 600)")


class _StderrHandler(logging.StreamHandler):
    # Looks sys.stderr up at each record, so a redirected or captured stderr is honoured.
    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``streammon`` command line; returns the exit code."""
    args = _parser().parse_args(argv)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("streammon: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    try:
        return args.handler(args)
    except (AppLoadError, UsageError) as exc:
        print(f"streammon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StreamMonError as exc:
        print(f"streammon {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # replay has no stop point of its own: Ctrl-C ends it without a traceback
        print(f"streammon {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
