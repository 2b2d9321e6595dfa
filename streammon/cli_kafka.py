"""The Kafka parts of the command line: the source and dead-letter sink a ``run`` builds, and ``-X``."""

from __future__ import annotations

import argparse
import contextlib
import functools
from typing import Any, Iterator

from .cli_generate import UsageError
from .monitor import Monitor

__all__ = ["kafka_source", "kafka_dead_letter", "kafka_option"]


def kafka_source(args: argparse.Namespace):
    topics = (args.topics or "predictions,feedback").split(",")
    if len(topics) != 2 or not all(topics):
        raise UsageError(f"--topics takes two names, predictions then feedback (e.g. predictions,feedback); got {args.topics!r}")
    if args.kafka_client == "confluent":
        from .connectors.kafka_confluent import ConfluentKafkaSource as Source
    else:
        from .connectors.kafka import KafkaSource as Source
    options: dict[str, Any] = dict(args.kafka_option)
    if args.scale_out:
        if not args.group or not args.state_dir:
            raise UsageError("--scale-out needs --group NAME (the workers' consumer group) and --state-dir DIR "
                              "(a directory every worker of the group shares)")
        options["scale_out"] = True
    factory = functools.partial(Source, args.bootstrap_servers, predictions_topic=topics[0], feedback_topic=topics[1],
                                group_id=args.group or "streammon", **options)
    if args.prefetch:
        from .connectors.prefetch import PrefetchingSource
        return PrefetchingSource(factory)
    return factory()


def kafka_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not (sep and key):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. security_protocol=SSL")
    value: Any = {"true": True, "false": False}.get(raw.lower(), raw)
    if isinstance(value, str):
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                pass
    return key, value


_CONSUMER_ONLY = ("group.", "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms", "partition.assignment.",
                  "auto.offset.reset", "enable.auto.", "auto.commit.", "fetch.", "max.partition.fetch.bytes",
                  "isolation.level", "check.crcs", "queued.", "enable.partition.eof")


@contextlib.contextmanager
def kafka_dead_letter(monitor: Monitor, args: argparse.Namespace) -> Iterator[None]:
    options = dict(args.kafka_option)
    if args.kafka_client == "confluent":
        from .connectors.kafka_confluent import ConfluentKafkaDeadLetter as DeadLetter
        # librdkafka warns about every consumer property a producer is given; leave the group's out.
        options = {k: v for k, v in options.items() if not k.startswith(_CONSUMER_ONLY)}
    else:
        from kafka import KafkaProducer

        from .connectors.kafka import KafkaDeadLetter as DeadLetter
        # The same connection and security settings as the consumer; consumer-only ones stay out.
        options = {k: v for k, v in options.items() if k in KafkaProducer.DEFAULT_CONFIG}
    sink = DeadLetter(args.bootstrap_servers, topic=args.dead_letter_topic, **options)
    monitor.dead_letter = sink
    try:
        yield
    finally:
        sink.close()
