"""Scale-out: workers of one consumer group share the partitions; an exporter merges their partial aggregates.

A partition number ``i`` stands for partition ``i`` of both topics. Each worker keeps one state per
partition it owns (:class:`PartitionWorker`), checkpointed in a state directory the group shares,
and writes each partition's partial aggregates next to it; :class:`PartialsExporter` merges them
into the global metrics (``streammon export``). See docs/kafka.md, "Scaling out".
"""

from .partials import MergedView, PartialsExporter, dump_partials, merge_partials, require_mergeable, write_partials
from .worker import PartitionWorker, scaled_out_runner

__all__ = ["PartitionWorker", "scaled_out_runner", "PartialsExporter", "MergedView", "merge_partials", "dump_partials", "write_partials",
           "require_mergeable"]
