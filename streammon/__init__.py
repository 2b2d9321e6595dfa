"""streammon: exact, incremental monitoring of ML models in production, published to Prometheus."""

from . import connectors, operators
from .collectors import Sample
from .connectors.producer import EventProducer, MemoryProducer
from .errors import CheckpointError, EventError, RegistrationError, SourceError, StreamMonError
from .events import EventPolicy, Feedback, Prediction, decode_event
from .monitor import Monitor, MonitorSettings
from .server import MetricsServer
from .windows import Cumulative, Sliding, Window

__version__ = "0.1.0"

__all__ = [
    "Monitor", "MonitorSettings", "MetricsServer", "Cumulative", "Sliding", "Window", "Sample",
    "Prediction", "Feedback", "EventPolicy", "decode_event",
    "StreamMonError", "RegistrationError", "EventError", "SourceError", "CheckpointError",
    "EventProducer", "MemoryProducer",
    "operators", "connectors", "__version__",
]
