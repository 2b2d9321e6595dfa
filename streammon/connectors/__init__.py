"""Sources of events and sinks of rejected ones.

Kafka: :class:`KafkaSource` and :class:`KafkaDeadLetter` (kafka-python), or
:class:`ConfluentKafkaSource` and :class:`ConfluentKafkaDeadLetter` (the opt-in fast client,
``pip install "streammon[confluent]"``). They are imported on first use, so an app that reads files
never loads a Kafka client.
"""

from typing import Any

from .base import DeadLetterSink, Message, RebalanceListener, Source
from .deadletter import FileDeadLetter
from .files import FileSource, write_events
from .memory import MemoryDeadLetter, MemorySource, PartitionedMemorySource
from .prefetch import PrefetchingSource

__all__ = ["Message", "Source", "DeadLetterSink", "RebalanceListener", "MemorySource", "PartitionedMemorySource",
           "MemoryDeadLetter", "FileSource", "FileDeadLetter", "write_events", "PrefetchingSource",
           "KafkaSource", "KafkaDeadLetter", "ConfluentKafkaSource", "ConfluentKafkaDeadLetter"]

_LAZY = {"KafkaSource": ".kafka", "KafkaDeadLetter": ".kafka",
         "ConfluentKafkaSource": ".kafka_confluent", "ConfluentKafkaDeadLetter": ".kafka_confluent"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
