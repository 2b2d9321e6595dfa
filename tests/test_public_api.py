"""The public surface is exactly what the docs name (design section 12)."""

import streammon as sm
from streammon import connectors, operators

DOCUMENTED = {
    "Monitor", "MonitorSettings", "Cumulative", "Sliding", "Window", "Sample",
    "Prediction", "Feedback", "EventPolicy", "decode_event",
    "StreamMonError", "RegistrationError", "EventError", "SourceError",
    "EventProducer", "MemoryProducer",
    "operators", "connectors", "__version__",
}


def test_top_level_all_is_the_documented_surface():
    assert set(sm.__all__) == DOCUMENTED
    for name in sm.__all__:
        assert hasattr(sm, name), name


def test_subpackages_export_what_they_declare():
    for module in (operators, connectors):
        assert len(module.__all__) == len(set(module.__all__))
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)


def test_one_exception_root():
    for exc in (sm.RegistrationError, sm.EventError, sm.SourceError):
        assert issubclass(exc, sm.StreamMonError)
