"""streammon: exact, incremental monitoring of ML models in production, published to Prometheus."""

from . import connectors, operators
from .errors import EventError, RegistrationError, SourceError, StreamMonError
from .events import EventPolicy, Feedback, Prediction, decode_event
from .exporter import Sample
from .monitor import Monitor, MonitorSettings
from .producer import EventProducer, MemoryProducer
from .windows import Cumulative, Sliding, Window

__version__ = "0.1.0"

__all__ = [
    "Monitor", "MonitorSettings", "Cumulative", "Sliding", "Window", "Sample",
    "Prediction", "Feedback", "EventPolicy", "decode_event",
    "StreamMonError", "RegistrationError", "EventError", "SourceError",
    "EventProducer", "MemoryProducer",
    "operators", "connectors", "__version__",
]
