"""Decoding of valid events (design section 2): every accepted shape, checked against the input itself."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streammon import EventError, Feedback, Prediction, decode_event

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FORMS = ("dict", "json str", "json bytes")


def as_form(event: dict, form: str):
    if form == "dict":
        return event
    text = json.dumps(event)
    return text if form == "json str" else text.encode()


# -- event time -------------------------------------------------------------------------------
@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(0, 1_700_000_000), st.floats(0, 1_700_000_000, allow_nan=False, allow_infinity=False)),
       st.sampled_from(FORMS))
def test_epoch_seconds_are_kept_exactly(ts, form):
    event = decode_event(as_form({"id": "a", "ts": ts, "prediction": 1}, form))
    assert event.ts == float(ts)
    assert isinstance(event.ts, float)


offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2024, 1, 1), timezones=offsets),
       st.sampled_from(["T", " "]))
def test_rfc3339_time_with_offset(moment, separator):
    text = moment.isoformat(sep=separator)
    if moment.utcoffset() == timedelta(0):
        text = text[: -len("+00:00")] + "Z"
    expected = (moment - EPOCH).total_seconds()  # oracle: datetime arithmetic, no string parsing
    assert decode_event({"id": "a", "ts": text, "label": 0}).ts == expected


@pytest.mark.parametrize("text", ["2023-11-14t22:13:20Z", "2023-11-14T22:13:20z", "2023-11-14t22:13:20.5+01:00"])
def test_rfc3339_allows_lower_case_t_and_z(text):
    # RFC 3339 section 5.6: "T" and "Z" may alternatively be lower case.
    expected = datetime.fromisoformat(text.upper()).timestamp()
    assert decode_event({"id": "a", "ts": text, "prediction": 1}).ts == expected


# -- field shapes -----------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_prediction_fields_and_defaults(form):
    sent = {"id": "req-7", "ts": 1_700_000_000.25, "prediction": "cat", "score": {"cat": 0.7, "dog": 0.3},
            "features": {"age": 41, "income": 5.5e4, "city": "Lyon", "vip": True, "missing": None},
            "segment": {"version": "v3", "region": "eu"}}
    event = decode_event(as_form(sent, form))
    assert isinstance(event, Prediction) and event.kind == "prediction"
    assert (event.id, event.ts, event.prediction, event.model) == ("req-7", 1_700_000_000.25, "cat", "default")
    assert event.score == sent["score"]
    assert event.features == sent["features"]
    # Types survive the union: an int stays an int, a bool a bool, a class name a string.
    assert {k: type(v) for k, v in event.features.items()} == {k: type(v) for k, v in sent["features"].items()}
    assert event.segment == sent["segment"]
    assert event.extra == {}


@pytest.mark.parametrize("score", [0.0, 0.25, 1.0, 1])
def test_score_as_a_number(score):
    event = decode_event({"id": "a", "ts": 1, "prediction": 1, "score": score})
    assert event.score == float(score) and isinstance(event.score, float)


@pytest.mark.parametrize("prediction", [0, 3, -2.5, True, False, "spam"])
def test_prediction_keeps_its_type(prediction):
    event = decode_event(json.dumps({"id": "a", "ts": 1, "prediction": prediction}))
    assert event.prediction == prediction and type(event.prediction) is type(prediction)


@pytest.mark.parametrize("label", [0, 1, 2.75, True, "ham"])
def test_feedback_fields_and_defaults(label):
    event = decode_event(json.dumps({"id": "a", "ts": "2023-11-14T22:13:20Z", "label": label}))
    assert isinstance(event, Feedback) and event.kind == "feedback"
    assert (event.id, event.ts, event.model) == ("a", 1_700_000_000.0, None)
    assert event.label == label and type(event.label) is type(label)


@pytest.mark.parametrize("form", FORMS)
def test_unknown_fields_are_kept_in_extra(form):
    unknown = {"request_id": "r-1", "latency_ms": 12, "tags": ["a", "b"], "nested": {"x": 1}}
    prediction = decode_event(as_form({"id": "a", "ts": 1, "prediction": 1, **unknown}, form))
    feedback = decode_event(as_form({"id": "a", "ts": 2, "label": 0, **unknown}, form))
    assert prediction.extra == unknown
    assert feedback.extra == unknown
    assert not set(unknown) & set(Prediction.model_fields)


# -- kind -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, kind", [({"prediction": 1}, Prediction), ({"label": 1}, Feedback)])
def test_kind_is_inferred_from_fields(fields, kind):
    assert type(decode_event({"id": "a", "ts": 1, **fields})) is kind


@pytest.mark.parametrize("kind, model, leftover", [("prediction", Prediction, "label"), ("feedback", Feedback, "prediction")])
def test_kind_field_overrides_inference(kind, model, leftover):
    event = decode_event({"id": "a", "ts": 1, "prediction": 1, "label": 0, "kind": kind})
    assert type(event) is model
    assert event.extra == {leftover: 1 if leftover == "prediction" else 0}


@pytest.mark.parametrize("form", FORMS)
def test_kind_given_by_the_topic(form):
    assert type(decode_event(as_form({"id": "a", "ts": 1, "label": 1}, form), kind="feedback")) is Feedback
    with pytest.raises(EventError, match="prediction"):
        decode_event(as_form({"id": "a", "ts": 1, "label": 1}, form), kind="prediction")


def test_model_instances_pass_through_and_respect_the_topic():
    p = Prediction(id="a", ts=1, prediction=1)
    assert decode_event(p) is p
    with pytest.raises(EventError, match="prediction event on the feedback stream"):
        decode_event(p, kind="feedback")


@pytest.mark.parametrize("key", ["a-1", b"a-1"])
def test_key_equal_to_id_is_accepted(key):
    assert decode_event({"id": "a-1", "ts": 1, "prediction": 1}, key=key).id == "a-1"


# -- round trips ------------------------------------------------------------------------------
text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
values = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), text)
probabilities = st.floats(0, 1)
predictions = st.fixed_dictionaries(
    {"id": text.filter(bool), "ts": st.integers(0, 1_700_000_000), "prediction": values},
    optional={
        "model": text,
        "score": st.one_of(probabilities, st.dictionaries(text, probabilities, max_size=4)),
        "features": st.dictionaries(text, st.one_of(st.none(), values), max_size=4),
        "segment": st.dictionaries(text, text, max_size=3),
        "request_id": text,
    },
)
feedbacks = st.fixed_dictionaries(
    {"id": text.filter(bool), "ts": st.floats(0, 1_700_000_000), "label": values},
    optional={"model": text, "note": st.one_of(text, st.integers())},
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.one_of(predictions, feedbacks))
def test_round_trips(sent):
    event = decode_event(sent)
    # The decoded fields are the sent fields (an integer score becomes a float).
    dumped = event.model_dump(exclude_none=True)
    assert dumped.pop("kind") == ("feedback" if "label" in sent else "prediction")
    if "model" not in sent and isinstance(event, Prediction):
        assert dumped.pop("model") == "default"
    assert dumped == {**sent, "ts": float(sent["ts"])}
    # Every way back in gives the same event.
    assert decode_event(json.dumps(sent)) == event
    assert decode_event(event.model_dump_json()) == event
    assert decode_event(event.model_dump()) == event
    assert type(event).model_validate_json(event.model_dump_json()) == event
    assert pickle.loads(pickle.dumps(event)) == event
