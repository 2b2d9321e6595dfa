"""``streammon dashboard`` and ``streammon alerts``: Grafana and Prometheus configuration from an app."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..apps import load_app
from ..errors import RegistrationError, UsageError

__all__ = ["add_generate_commands"]


def _dashboard(args: argparse.Namespace) -> int:
    from ..dashboards import dashboard  # imported late, like every command's own module

    _write(json.dumps(dashboard(load_app(args.app)), indent=2) + "\n", args.output)
    return 0


def _alerts(args: argparse.Namespace) -> int:
    from ..alerts import alert_rules, to_yaml

    monitor = load_app(args.app)
    try:
        rules = alert_rules(monitor, below=dict(args.below), above=dict(args.above), window=args.window,
                            for_=args.for_, min_count=args.min_count)
    except RegistrationError as exc:
        raise UsageError(str(exc)) from exc
    _write(to_yaml(rules), args.output)
    return 0


def _threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        if not (sep and name):
            raise ValueError(text)
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not METRIC=NUMBER, e.g. accuracy=0.8") from None


def _write(text: str, path: str | None) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def add_generate_commands(commands: Any) -> None:
    board = commands.add_parser("dashboard", help="print a Grafana dashboard (JSON) with a panel per metric of an app")
    board.add_argument("app", metavar="APP", help="the Monitor: app.py:monitor or package.module:monitor")
    board.add_argument("--output", metavar="FILE", help="write to this file instead of stdout")
    board.set_defaults(handler=_dashboard)

    alerts = commands.add_parser("alerts", help="print Prometheus alert rules (YAML) for thresholds on an app's metrics")
    alerts.add_argument("app", metavar="APP", help="the Monitor: app.py:monitor or package.module:monitor")
    alerts.add_argument("--below", type=_threshold, action="append", default=[], metavar="METRIC=NUMBER",
                        help="alert while the metric is below NUMBER, e.g. accuracy=0.8 (repeatable; METRIC[key] for one class or quantile)")
    alerts.add_argument("--above", type=_threshold, action="append", default=[], metavar="METRIC=NUMBER",
                        help="alert while the metric is above NUMBER, e.g. log_loss=0.6 (repeatable)")
    alerts.add_argument("--window", help="window label to watch (default: each metric's first sliding window)")
    alerts.add_argument("--for", dest="for_", default="15m", metavar="DURATION", help="how long the condition must hold (default 15m)")
    alerts.add_argument("--min-count", type=int, default=100, help="events the window must hold (default 100)")
    alerts.add_argument("--output", metavar="FILE", help="write to this file instead of stdout")
    alerts.set_defaults(handler=_alerts)
