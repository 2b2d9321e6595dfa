"""Metric operators: incremental, river-compatible, mostly mergeable sufficient statistics."""

from .base import Capabilities, Mergeable, Operator, Revertible, Statistic, capabilities
from .confusion import ConfusionMatrix
from .stats import Count, Mean, Moments

__all__ = [
    "Operator", "Revertible", "Mergeable", "Statistic", "Capabilities", "capabilities",
    "Count", "Mean", "Moments", "ConfusionMatrix",
]
