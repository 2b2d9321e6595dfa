"""User errors are raised at registration, with a message that shows the fix."""

from __future__ import annotations

import pytest
from river import metrics as river_metrics
from river import stats as river_stats

import streammon as sm
from streammon import operators as ops
from streammon.operators.base import capabilities


class NoWayBack:
    """Neither merge nor revert: cannot leave a sliding window."""

    def update(self, y_true, y_pred):
        pass

    def get(self):
        return 0.0


def monitor(**kw):
    return sm.Monitor("t", windows=[sm.Cumulative(), sm.Sliding("1h")], **kw)


def test_operator_without_merge_or_revert_is_refused_for_sliding_windows_with_the_fix():
    m = monitor()
    with pytest.raises(sm.RegistrationError, match=r"neither merge\(other\) nor revert.*windows=\[sm.Cumulative\(\)\]"):
        m.track(NoWayBack())
    m.track(NoWayBack(), windows=[sm.Cumulative()])  # the fix works
    assert [t.name for t in m.metrics] == ["no_way_back"]


def test_duplicate_name_is_refused():
    m = monitor()
    m.track(ops.Accuracy())
    with pytest.raises(sm.RegistrationError, match=r"already tracked.*name="):
        m.track(ops.Accuracy())
    m.track(ops.Accuracy(), name="accuracy_2")


def test_names_must_be_prometheus_names_and_not_ours():
    m = monitor()
    with pytest.raises(sm.RegistrationError, match="name='my_metric'"):
        m.track(ops.Accuracy(), name="My Metric")
    with pytest.raises(sm.RegistrationError, match="taken by streammon"):
        m.track(ops.Accuracy(), name="events_total")


def test_finalizer_signature_is_checked():
    m = monitor()
    with pytest.raises(sm.RegistrationError, match=r"def two_args\(cm\)"):
        @m.metric(stat=ops.ConfusionMatrix())
        def two_args(cm, extra):
            return 0.0


def test_per_event_function_signature_is_checked():
    m = monitor()
    with pytest.raises(sm.RegistrationError, match=r"def one_arg\(y_true, y_pred\)"):
        @m.metric()
        def one_arg(y_true):
            return 0.0
    with pytest.raises(sm.RegistrationError, match=r"def two_args\(x\)"):
        @m.metric(of="score")
        def two_args(a, b):
            return 0.0


def test_class_instead_of_instance_and_function_instead_of_operator():
    m = monitor()
    with pytest.raises(sm.RegistrationError, match=r"monitor.track\(Accuracy\(\)\)"):
        m.track(ops.Accuracy)
    with pytest.raises(sm.RegistrationError, match=r"@monitor\.metric"):
        m.track(lambda y_true, y_pred: 0.0)
    with pytest.raises(sm.RegistrationError, match=r"stat=ConfusionMatrix\(\)"):
        m.metric(lambda cm: 0.0, stat=ops.ConfusionMatrix)


def test_unknown_of_and_time_are_refused_with_the_choices():
    m = monitor()
    with pytest.raises(sm.RegistrationError, match=r"features\.<name>"):
        m.track(ops.Mean(of="colour"))
    with pytest.raises(sm.RegistrationError, match="time='feedback'"):
        m.track(ops.Accuracy(), time="arrival")


def test_windows_are_checked():
    with pytest.raises(sm.RegistrationError, match="whole multiple"):
        sm.Sliding("1h", "7m")
    with pytest.raises(sm.RegistrationError, match="'5m'"):
        sm.Sliding("five minutes")
    m = monitor()
    with pytest.raises(sm.RegistrationError, match="not a window"):
        m.track(ops.Accuracy(), windows=["1h"])
    with pytest.raises(sm.RegistrationError, match="no window"):
        m.track(ops.Accuracy(), windows=[])


def test_bad_settings_are_refused():
    with pytest.raises(sm.RegistrationError, match="feedback_ttl"):
        sm.Monitor("t", feedback_ttl="a week")
    with pytest.raises(sm.RegistrationError, match="max_pending"):
        sm.Monitor("t", max_pending=0)
    with pytest.raises(sm.RegistrationError, match=r"unexpected|extra"):
        sm.Monitor("t", feedbak_ttl="7d")


def test_registration_after_events_is_refused():
    m = monitor()
    m.track(ops.Accuracy())
    m.replay([{"id": "a", "ts": 1, "prediction": 1}])
    with pytest.raises(sm.RegistrationError, match="before the first event"):
        m.track(ops.MAE())


def test_capabilities_are_detected_and_drive_the_window_strategy():
    from streammon.window_state import MergingPanes, RevertingPanes, SubtractingPanes
    m = monitor()
    m.track(ops.Accuracy())                                    # merge + subtract
    m.track(river_metrics.Accuracy(), name="river_accuracy")   # revert only
    m.track(river_stats.Quantile(0.5), of="score", name="median", windows=[sm.Cumulative()])  # neither
    m.track(river_stats.Mean(), of="score", name="river_mean")  # += / -= become merge / subtract
    strategies = {t.name: type(states[1]).__name__ if len(states) > 1 else None for t, states in m._engine.metrics}
    assert strategies == {"accuracy": SubtractingPanes.__name__, "river_accuracy": RevertingPanes.__name__,
                          "median": None, "river_mean": SubtractingPanes.__name__}
    caps = capabilities(river_metrics.Accuracy())
    assert caps.revert and not caps.merge
    assert MergingPanes  # used for merge-only operators (see the property tests)


def test_river_metric_reads_scores_when_it_does_not_require_labels():
    m = monitor()
    m.track(river_metrics.LogLoss(), name="river_log_loss")
    (tracked,) = m.metrics
    assert tracked.feed.fields == ("y_true", "score")


def test_default_names_follow_prometheus_conventions():
    m = monitor()
    m.track(ops.FeedbackDelay())
    m.track(ops.ROCAUC())
    assert [t.name for t in m.metrics] == ["feedback_delay_seconds", "rocauc"]


def test_null_rate_of_the_score_sees_predictions_without_one():
    m = sm.Monitor("t", windows=[sm.Cumulative()])
    m.track(ops.NullRate(of="score"), name="score_null_rate")
    m.track(ops.Mean(of="score"), name="mean_score")
    m.replay([{"id": "a", "ts": 1, "prediction": 1, "score": 0.5}, {"id": "b", "ts": 2, "prediction": 1},
              {"id": "c", "ts": 3, "prediction": 0}, {"id": "d", "ts": 4, "prediction": 0, "score": 0.25}])
    assert m.value("score_null_rate") == 0.5
    assert m.value("mean_score") == 0.375


def test_an_operator_that_cannot_be_copied_is_refused_at_registration_with_the_fix():
    import threading

    class Locked:
        def __init__(self):
            self.lock, self.n = threading.Lock(), 0

        def update(self, x):
            self.n += 1

        def get(self):
            return float(self.n)

    monitor = sm.Monitor("m", windows=[sm.Cumulative()])
    with pytest.raises(sm.RegistrationError, match=r"metric 'locked': streammon copies the operator .* give it a clone\(\) method"):
        monitor.track(Locked(), of="prediction")
