"""Sources of events and sinks of rejected ones (Kafka: ``streammon.connectors.kafka`` and ``.kafka_confluent``)."""

from .base import DeadLetterSink, Message, RebalanceListener, Source
from .deadletter import FileDeadLetter
from .files import FileSource, write_events
from .memory import MemoryDeadLetter, MemorySource
from .prefetch import PrefetchingSource

__all__ = ["Message", "Source", "DeadLetterSink", "RebalanceListener", "MemorySource", "MemoryDeadLetter",
           "FileSource", "FileDeadLetter", "write_events", "PrefetchingSource"]
