"""Metric operators: incremental, river-compatible, mostly mergeable sufficient statistics."""

from .base import Capabilities, Mergeable, Operator, Revertible, Statistic, capabilities
from .binned import ROCAUC, Calibration
from .classification import F1, Accuracy, BrierScore, LogLoss, Precision, Recall
from .confusion import ConfusionMatrix
from .distribution import ClassDistribution, LabelDistribution, MeanScore, NullRate
from .drift import KS, PSI, load_reference
from .regression import MAE, MSE, R2, RMSE, MeanError
from .sketch import FeedbackDelay, Quantiles, QuantileSketch
from .stats import Count, Mean, Moments

__all__ = [
    "Operator", "Revertible", "Mergeable", "Statistic", "Capabilities", "capabilities",
    "Count", "Mean", "Moments", "ConfusionMatrix",
    "Accuracy", "Precision", "Recall", "F1", "LogLoss", "BrierScore", "ROCAUC", "Calibration",
    "MAE", "MSE", "RMSE", "MeanError", "R2",
    "QuantileSketch", "Quantiles", "FeedbackDelay",
    "ClassDistribution", "LabelDistribution", "NullRate", "MeanScore",
    "PSI", "KS", "load_reference",
]
