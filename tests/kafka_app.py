"""The app the Kafka integration tests run as a worker process."""

import streammon as sm
from streammon import operators as ops


def build(**ttls) -> sm.Monitor:
    monitor = sm.Monitor("kafka_test", windows=[sm.Cumulative(), sm.Sliding(600, 60)], segments=["version"],
                         max_future_seconds=1e12, batch_size=2048, **ttls)
    monitor.track(ops.Accuracy())
    monitor.track(ops.MAE(), name="mae")
    monitor.track(ops.Mean(of="score"), name="mean_score")
    monitor.track(ops.Count(of="prediction"), name="predictions")
    monitor.metric(lambda y_true, y_pred: float(y_true == 1 and y_pred == 0), name="missed_positive")
    return monitor


monitor = build(feedback_ttl="100d", prediction_ttl="100d")
default_ttls = build()  # the product's TTLs: 7 days for feedback, 1 hour for early feedback
