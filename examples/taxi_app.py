"""An example streammon app: a taxi-tip classifier, monitored per model version.

Replay events through it, or serve its metrics:

    streammon replay events.jsonl --app examples/taxi_app.py:monitor
    streammon run examples/taxi_app.py:monitor --source events.jsonl --metrics-port 9108

Its events are those of ``streammon demo`` (see ``streammon.demo.simulate``): predictions with a
tip probability as ``score``, trip features and ``segment={"version": ...}``; feedback ``label`` is 1
when the ride was tipped.
"""

from river import metrics

import streammon as sm
from streammon import operators as ops
from streammon.demo import reference_scores

monitor = sm.Monitor(
    "taxi",
    windows=[sm.Cumulative(), sm.Sliding("1h")],  # every metric, unless it says otherwise
    segments=("version",),  # one series per model version
    feedback_ttl="3h",  # a ride not labelled within 3 hours of event time never will be
)

# pair metrics: read (y_true, y_pred) or (y_true, score) once the feedback has come
monitor.track(ops.Accuracy())
monitor.track(metrics.F1(), name="f1")  # any river metric works unchanged
monitor.track(ops.LogLoss())
# prediction metrics: known at once, so they move before any feedback comes
monitor.track(ops.Count(of="prediction"), name="predictions")
monitor.track(ops.Quantiles([0.1, 0.5, 0.9], of="score"), name="score_quantiles", windows=[sm.Sliding("15m")])
monitor.track(ops.Mean(of="features.trip_distance"), name="mean_trip_distance_miles")
monitor.track(ops.ClassDistribution(of="features.payment_type"), name="payment_type_share")
monitor.track(ops.PSI(reference_scores(), of="score"), name="score_psi")  # drift against the training scores
# feedback metrics
monitor.track(ops.Mean(of="label"), name="tip_rate")
monitor.track(ops.FeedbackDelay(), name="feedback_delay_seconds")


@monitor.metric(stat=ops.ConfusionMatrix())  # runs at publish time over a mergeable statistic
def balanced_accuracy(cm):
    return (cm.recall(1) + cm.recall(0)) / 2


@monitor.metric()  # runs per pair; the metric is its running mean
def missed_tip(y_true, y_pred):
    return float(y_true == 1 and y_pred == 0)
