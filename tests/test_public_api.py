"""The public surface is exactly what the docs name (design section 12)."""

import subprocess
import sys
from pathlib import Path

import streammon as sm
from streammon import connectors, operators, testing

DOCUMENTED = {
    "Monitor", "MonitorSettings", "MetricsServer", "Cumulative", "Sliding", "Window", "Sample",
    "Prediction", "Feedback", "EventPolicy", "decode_event",
    "StreamMonError", "RegistrationError", "EventError", "SourceError", "CheckpointError",
    "EventProducer", "MemoryProducer",
    "operators", "connectors", "__version__",
}


def test_top_level_all_is_the_documented_surface():
    assert set(sm.__all__) == DOCUMENTED
    for name in sm.__all__:
        assert hasattr(sm, name), name


def test_subpackages_export_what_they_declare():
    import importlib
    import pkgutil

    import streammon
    # Every subpackage and module of streammon that declares __all__, found by walking the package.
    modules = [importlib.import_module(info.name) for info in pkgutil.walk_packages(streammon.__path__, "streammon.")
               if not info.name.endswith("__main__")]
    assert {operators, connectors, testing} <= set(modules)
    for module in (m for m in modules if hasattr(m, "__all__")):
        assert len(module.__all__) == len(set(module.__all__))
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)


def test_testing_ships_the_operator_laws_alone():
    assert testing.__all__ == ["check_operator"]
    # Users' test suites need not have the test extra: pytest and hypothesis are not imported.
    code = "import sys; sys.modules.update(pytest=None, hypothesis=None); import streammon.testing"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_one_exception_root():
    from streammon.errors import AppLoadError, UsageError
    for exc in (sm.RegistrationError, sm.EventError, sm.SourceError, sm.CheckpointError, AppLoadError, UsageError):
        assert issubclass(exc, sm.StreamMonError)
