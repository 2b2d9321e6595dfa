"""The Kafka parts of the command line: the source and dead-letter sink a ``run`` builds, and ``-X``.

Client settings come from ``STREAMMON_KAFKA_<KEY>`` environment variables and from ``-X KEY=VALUE``
(which wins). A value ``@PATH`` is read from that file, so a secret need not be on the command
line, where every local user sees it in the process list (``@@...`` is a literal ``@...``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..monitor import Monitor

__all__ = ["kafka_source", "kafka_dead_letter", "kafka_option", "kafka_settings", "read_text_file", "ENV_PREFIX"]

log = logging.getLogger("streammon")
ENV_PREFIX = "STREAMMON_KAFKA_"


def kafka_source(args: argparse.Namespace):
    topics = (args.topics or "predictions,feedback").split(",")
    if len(topics) != 2 or not all(topics):
        raise UsageError(f"--topics takes two names, predictions then feedback (e.g. predictions,feedback); got {args.topics!r}")
    Source: Callable[..., Any]
    if args.kafka_client == "confluent":
        from ..connectors.kafka_confluent import ConfluentKafkaSource as Source
    else:
        from ..connectors.kafka import KafkaSource as Source
    options = kafka_settings(args)
    if args.scale_out:
        if not args.group or not args.state_dir:
            raise UsageError("--scale-out needs --group NAME (the workers' consumer group) and --state-dir DIR "
                              "(a directory every worker of the group shares)")
        options["scale_out"] = True
    factory = functools.partial(Source, args.bootstrap_servers, predictions_topic=topics[0], feedback_topic=topics[1],
                                group_id=args.group or "streammon", **options)
    if args.prefetch:
        from ..connectors.prefetch import PrefetchingSource
        return PrefetchingSource(factory)
    return factory()


def kafka_option(text: str) -> tuple[str, Any]:
    """``-X KEY=VALUE`` as (key, value); ``KEY=@PATH`` reads the value from a file (argparse's ``type``)."""
    key, sep, raw = text.partition("=")
    if not (sep and key):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. security_protocol=SSL (or KEY=@FILE to read "
                                         f"the value from a file)")
    try:
        return key, _value(raw, f"-X {key}")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def kafka_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Kafka client settings of a command: ``STREAMMON_KAFKA_*`` variables, overridden by ``-X``."""
    settings = environment_settings(os.environ if environ is None else environ)
    settings.update(dict(args.kafka_option))
    return settings


def environment_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """``STREAMMON_KAFKA_SASL_PLAIN_PASSWORD`` -> ``sasl_plain_password``; ``__`` -> ``.`` (``SECURITY__PROTOCOL``)."""
    # Environment names cannot hold dots, and confluent-kafka's keys have them while kafka-python's
    # have underscores; a double underscore is the one spelling that maps both without ambiguity.
    settings = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):].lower().replace("__", ".")
        if not key.strip("._"):
            raise UsageError(f"the environment variable {name} names no setting: give it as {ENV_PREFIX}<KEY>, "
                             f"e.g. {ENV_PREFIX}SASL_PLAIN_PASSWORD or {ENV_PREFIX}SECURITY__PROTOCOL (security.protocol)")
        settings[key] = _value(environ[name], f"${name}")
    if settings:
        log.info("Kafka settings from the environment: %s", ", ".join(settings))  # names only, never values
    return settings


def _value(raw: str, where: str) -> Any:
    if raw.startswith("@@"):
        return raw[1:]
    if raw.startswith("@"):
        return _read_value(raw[1:], where)
    value: Any = {"true": True, "false": False}.get(raw.lower(), raw)
    if isinstance(value, str):
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                pass
    return value


def read_text_file(path: str, label: str, fix: str) -> str:
    """A file given on the command line (a secret, typically), as text; ``label`` names it in the error."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{label}: the file does not exist; {fix}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{label}: the file is not UTF-8 text; {fix}") from None
    except OSError as exc:
        raise UsageError(f"{label}: cannot read the file: {exc.strerror or exc}") from None


def _read_value(path: str, where: str) -> str:
    """The text of a file holding one setting (a secret, typically), without its trailing newline."""
    # Always text, never converted: a password of digits must stay a string.
    fix = f"write the value alone to it, e.g. printf '%s' 'VALUE' > FILE && chmod 600 FILE, and give {where}=@FILE"
    if not path:
        raise UsageError(f"{where}=@ names no file: {fix}")
    text = read_text_file(path, f"{where}=@{path}", fix)
    text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")  # what echo and editors add
    if not text:
        raise UsageError(f"{where}=@{path}: the file is empty; {fix}")
    return text


_CONSUMER_ONLY = ("group.", "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms", "partition.assignment.",
                  "auto.offset.reset", "enable.auto.", "auto.commit.", "fetch.", "max.partition.fetch.bytes",
                  "isolation.level", "check.crcs", "queued.", "enable.partition.eof")


@contextlib.contextmanager
def kafka_dead_letter(monitor: Monitor, args: argparse.Namespace) -> Iterator[None]:
    options = kafka_settings(args)
    DeadLetter: type[Any]
    if args.kafka_client == "confluent":
        from ..connectors.kafka_confluent import ConfluentKafkaDeadLetter as DeadLetter
        # librdkafka warns about every consumer property a producer is given; leave the group's out.
        options = {k: v for k, v in options.items() if not k.startswith(_CONSUMER_ONLY)}
    else:
        from kafka import KafkaProducer

        from ..connectors.kafka import KafkaDeadLetter as DeadLetter
        # The same connection and security settings as the consumer; consumer-only ones stay out.
        options = {k: v for k, v in options.items() if k in KafkaProducer.DEFAULT_CONFIG}
    sink = DeadLetter(args.bootstrap_servers, topic=args.dead_letter_topic, **options)
    monitor.dead_letter = sink
    try:
        yield
    finally:
        sink.close()
