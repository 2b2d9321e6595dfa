"""``streammon demo``: a taxi-tip model whose data drifts, monitored live (in process, or through a local Kafka).

:func:`simulate` makes the events, :func:`build_monitor` the app that watches them; ``streammon demo
--kafka`` runs the same through the embedded broker (:mod:`streammon.demo.kafka`).
"""

from .local import DRIFT_AT, START, build_monitor, reference_scores, run_demo, simulate, summarize

__all__ = ["simulate", "build_monitor", "reference_scores", "run_demo", "summarize", "START", "DRIFT_AT"]
