"""Fixtures shared by the test modules; plain helpers (ports, scrapes, worker processes) are in tests/worker_helpers.py.

Markers (pyproject.toml): ``kafka`` for tests that start the tansu broker, ``prometheus`` for tests
that run the prometheus or promtool binaries, ``slow`` for property tests with many examples, long
end-to-end runs and the slowest others (so that the fast loop stays under 30 s). The fast loop
leaves all three out: ``python3 -m pytest -q -m "not kafka and not prometheus and not slow"``.
"""

from __future__ import annotations

import pytest

from streammon.connectors.broker import EmbeddedBroker


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items) -> None:
    # Docstring examples cannot carry a marker: those in streammon/ that start a broker get it here.
    for item in items:
        examples = getattr(getattr(item, "dtest", None), "examples", ())
        if any("EmbeddedBroker(" in e.source for e in examples):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="module")
def broker():
    """A tansu broker for the test module alone: its topics and consumer groups never meet another module's.

    A module whose tests share topics creates them by extending this fixture::

        @pytest.fixture(scope="module")
        def broker(broker):
            create_topics(broker, ["predictions", "feedback"], 4)
            return broker
    """
    with EmbeddedBroker() as b:
        yield b
