"""Grafana dashboards, written from a monitor's registered metrics.

``dashboard(monitor)`` lays out the model-health view for that monitor: a stat row (headline metric
over a sliding window vs cumulative, feedback coverage, drift, rejected events, processing p99,
consumer lag), one time-series panel per registered metric, score quantiles, join health and
pipeline health. ``dashboard()`` without a monitor is the shipped
``deploy/grafana/dashboards/model-health.json``: its metric panel repeats over every metric family
Prometheus holds, so it fits any monitor. Alert rules: :mod:`streammon.alerts`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import RegistrationError
from .operators import KS, PSI

if TYPE_CHECKING:
    from .monitor import Monitor

__all__ = ["dashboard"]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UID = "streammon-model-health"
_SELF = 'monitor=~"$monitor"'  # self metrics carry the monitor label only
_RATE = "$__rate_interval"
_GREEN_UP = [("red", None), ("orange", 0.7), ("green", 0.8)]  # higher is better
_RED_UP = lambda warn, crit: [("green", None), ("orange", warn), ("red", crit)]  # noqa: E731 - higher is worse


# -- panels -----------------------------------------------------------------------------------
def _target(expr: str, legend: str = "__auto", ref: str = "A") -> dict:
    return {"refId": ref, "expr": expr, "legendFormat": legend, "range": True, "datasource": DATASOURCE}


def _panel(kind: str, title: str, exprs: Sequence[tuple[str, str]], *, description: str, unit: str = "none",
           w: int = 8, h: int = 8, steps: Sequence[tuple[str, float | None]] | None = None, **extra: Any) -> dict:
    defaults: dict[str, Any] = {"unit": unit}
    if steps:
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}
        defaults["color"] = {"mode": "thresholds"}
    if kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "background" if steps else "value", "graphMode": "area", "textMode": "value_and_name",
                   "justifyMode": "auto", "orientation": "auto"}
    else:
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
            "targets": [_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(exprs)],
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options, **extra}


def _layout(sections: Sequence[tuple[str, list[dict]]]) -> list[dict]:
    """Row panels and their panels, left to right, wrapping at Grafana's 24 columns; ids in order."""
    out: list[dict] = []
    y = 0
    for title, panels in sections:
        out.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        y += 1
        x = row_h = 0
        for p in panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > 24:
                x, y, row_h = 0, y + row_h, 0
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x, row_h = x + w, max(row_h, h)
            out.append(p)
        y += row_h
    for i, p in enumerate(out, start=1):
        p["id"] = i
    return out


def _sel(name: str, filters: str, **labels: str) -> str:
    return name + "{" + ", ".join([filters, *(f'{k}="{v}"' for k, v in labels.items())]) + "}"


def _pooled(metric: str, filters: str, window: str) -> str:
    # A count-weighted mean over the selected series: exact for mean metrics (accuracy, MAE, log
    # loss), since sum(value * count) / sum(count) is the mean over all their events.
    value, count = _sel(metric, filters, window=window), _sel(metric + "_count", filters, window=window)
    return f"sum({value} * ({count} > 0)) / sum({count} > 0)"


def _coverage() -> str:
    return (f'sum(increase(streammon_joined_total{{{_SELF}}}[1h])) / '
            f'sum(increase(streammon_events_total{{{_SELF}, topic="predictions", outcome="accepted"}}[1h]))')


def _stat_row(headline: str, filters: str, drift: str | None) -> list[dict]:
    metric = f"streammon_{headline}"
    stats = [
        _panel("stat", f"{headline} $window vs cumulative",
               [(_pooled(metric, filters, "$window"), "$window"),
                (_pooled(metric, filters, "cumulative"), "cumulative")],
               description=f"{headline} over the sliding window and since the start, pooled over the selected "
                           f"models and segments (weighted by event count). Red: the model got worse; "
                           f"see docs/deployment.md.",
               w=6, h=5, steps=_GREEN_UP if headline == "accuracy" else None),
        _panel("stat", "Feedback coverage", [(_coverage(), "coverage")], unit="percentunit", w=4, h=5,
               steps=[("red", None), ("orange", 0.5), ("green", 0.8)],
               description="Predictions joined with their feedback in the last hour / predictions accepted in the "
                           "last hour. Red: feedback stopped arriving (labelling pipeline, feedback topic, ids)."),
    ]
    if drift is not None:
        stats.append(_panel("stat", "Drift score", [(f"max({drift})", "drift")], w=4, h=5, steps=_RED_UP(0.1, 0.2),
                            description="Largest PSI/KS against the reference sample, over sliding windows. "
                                        "PSI above 0.2 is a shifted population."))
    stats += [
        _panel("stat", "Rejected events",
               [(f'(sum(rate(streammon_events_total{{{_SELF}, outcome="rejected"}}[{_RATE}])) or vector(0)) / '
                 f"sum(rate(streammon_events_total{{{_SELF}}}[{_RATE}]))", "rejected")],
               unit="percentunit", w=4 if drift else 6, h=5, steps=_RED_UP(0.01, 0.05),
               description="Share of events rejected (malformed, schema, timestamps). Read the dead-letter reasons."),
        _panel("stat", "Processing p99", [(_processing(0.99), "p99")], unit="s", w=3, h=5, steps=_RED_UP(0.1, 1.0),
               description="99th percentile of the time to process one batch of events."),
        _panel("stat", "Consumer lag", [(f"sum(streammon_consumer_lag{{{_SELF}}})", "lag")], unit="short", w=3, h=5,
               steps=_RED_UP(10_000, 1_000_000),
               description="Messages behind the end of the input topics (published by the Kafka connector)."),
    ]
    return stats


def _processing(q: float) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate(streammon_processing_seconds_bucket{{{_SELF}}}[{_RATE}])))"


def _health(delay: str | None) -> list[tuple[str, list[dict]]]:
    join = [
        _panel("timeseries", "Pending joins", [(f"streammon_join_pending{{{_SELF}}}", "{{side}} waiting")],
               unit="short", description="Predictions waiting for feedback and feedback waiting for its prediction."),
        _panel("timeseries", "Join flow", [
            (f"sum(rate(streammon_joined_total{{{_SELF}}}[{_RATE}]))", "joined"),
            (f"sum by (side) (rate(streammon_join_expired_total{{{_SELF}}}[{_RATE}]))", "expired {{side}}"),
            (f"sum by (side) (rate(streammon_duplicates_total{{{_SELF}}}[{_RATE}]))", "duplicate {{side}}"),
            (f"sum by (side) (rate(streammon_join_evicted_total{{{_SELF}}}[{_RATE}]))", "evicted {{side}}"),
        ], unit="ops",
           description="Pairs made, entries that timed out or were evicted, duplicates ignored (per second)."),
        _panel("timeseries", "Feedback coverage", [(_coverage(), "coverage")], unit="percentunit",
               description="Joined / accepted predictions over the last hour."),
    ]
    if delay is not None:
        join.append(_panel("timeseries", "Feedback delay quantiles", [(delay, "q{{quantile}} {{window}} {{model}}")],
                           unit="s", w=24, description="How long feedback takes to arrive after its prediction."))
    pipeline = [
        _panel("timeseries", "Events", [(f"sum by (topic, outcome) (rate(streammon_events_total{{{_SELF}}}[{_RATE}]))",
                                         "{{topic}} {{outcome}}")], unit="ops",
               description="Events read per second, by topic and outcome (accepted, duplicate, rejected)."),
        _panel("timeseries", "Late events and operator errors", [
            (f"sum by (window, stream) (rate(streammon_late_events_total{{{_SELF}}}[{_RATE}]))",
             "late {{window}} {{stream}}"),
            (f"sum by (metric, window) (rate(streammon_operator_errors_total{{{_SELF}}}[{_RATE}]))",
             "error {{metric}} {{window}}"),
        ], unit="ops", description="Events too old for a sliding window; events a metric's operator raised on."),
        _panel("timeseries", "Processing time per batch", [(_processing(0.5), "p50"), (_processing(0.99), "p99")],
               unit="s", description="Quantiles of the time to process one batch."),
        _panel("timeseries", "Consumer lag and broker connection", [
            (f"sum by (topic) (streammon_consumer_lag{{{_SELF}}})", "lag {{topic}}"),
            (f"min(streammon_source_connected{{{_SELF}}})", "connected")],
               unit="short",
               description="Messages behind the end of each input topic; 1 while the worker reaches Kafka."),
        _panel("timeseries", "Checkpoint age", [(f"max(streammon_checkpoint_age_seconds{{{_SELF}}})", "age")], unit="s",
               description="Seconds since the last completed checkpoint (Kafka connector)."),
        # "> 0" drops the NaN a worker publishes before its first event, which would poison deriv.
        _panel("timeseries", "Event-time progress", [(f"deriv((streammon_stream_time_seconds{{{_SELF}}} > 0)[5m:])",
                                                      "{{monitor}}")],
               description="Seconds of event time per second of wall time: 1 when live, 0 when the stream stalled."),
    ]
    return [("Join health", join), ("Pipeline health", pipeline)]


# -- template variables -----------------------------------------------------------------------
def _query_var(name: str, query: str, *, all_: bool, multi: bool = False, all_value: str | None = ".*",
               regex: str = "", current: str | None = None) -> dict:
    var = {"type": "query", "name": name, "label": name, "datasource": DATASOURCE, "definition": query,
           "query": {"query": query, "refId": f"{name}-variable"}, "refresh": 2, "sort": 1, "regex": regex,
           "multi": multi, "includeAll": all_, "hide": 0, "current": {}}
    if all_:
        if all_value is not None:  # else "All" means every value (what a repeated panel wants)
            var["allValue"] = all_value
        var["current"] = {"text": ["All"], "value": ["$__all"]} if multi else {"text": "All", "value": "$__all"}
    elif current is not None:
        var["current"] = {"text": current, "value": current}
    return var


def _variables(headline: str, segments: Sequence[str], monitor: str | None) -> list[dict]:
    families = '{__name__=~"streammon_.+_count", window!="", monitor=~"$monitor"'
    out = [
        {"type": "datasource", "name": "datasource", "label": "data source", "query": "prometheus", "hide": 0,
         "current": {"text": "Prometheus", "value": "prometheus"}},
        _query_var("monitor", "label_values(streammon_events_total, monitor)", all_=False, current=monitor),
        _query_var("model", f"label_values({families}}}, model)", all_=True),
        _query_var("window", f'label_values(streammon_{headline}_count{{monitor=~"$monitor"}}, window)', all_=False,
                   regex="/^(?!cumulative$).+/"),
    ]
    out += [_query_var(s, f'label_values({families}, model=~"$model"}}, {s})', all_=True) for s in segments]
    return out


# -- dashboards -------------------------------------------------------------------------------
def dashboard(monitor: Monitor | None = None, *, segments: Sequence[str] = (), title: str | None = None) -> dict:
    """A Grafana dashboard (JSON model) for ``monitor``: a panel per registered metric.

    Without a monitor it is the generic model-health dashboard: one metric panel that Grafana repeats
    over every metric family in Prometheus, with a variable for each label in ``segments``.

    >>> import streammon as sm
    >>> from streammon import operators as ops
    >>> m = sm.Monitor("fraud", segments=["version"])
    >>> _ = m.track(ops.Accuracy())
    >>> board = dashboard(m)
    >>> [v["name"] for v in board["templating"]["list"]]
    ['datasource', 'monitor', 'model', 'window', 'version']
    >>> [p["targets"][0]["expr"] for p in board["panels"] if p["title"] == "accuracy"]
    ['streammon_accuracy{monitor=~"$monitor", model=~"$model", version=~"$version"}']
    """
    if monitor is not None:
        segments = monitor.settings.segments
    filters = ", ".join(['monitor=~"$monitor"', 'model=~"$model"', *(f'{s}=~"${s}"' for s in segments)])
    legend = " ".join("{{" + label + "}}" for label in ("model", "window", *segments))
    drift_names: str | None
    score_q: str | None
    delay_q: str | None
    if monitor is None:
        # Conventions stand in for registrations: drift metrics end in _psi/_ks, score quantiles say "score".
        headline, drift_names = "accuracy", "streammon_.+_(psi|ks)"
        score_q, delay_q = "streammon_.*score.*", "streammon_.*delay.*"
        metrics = [_panel("timeseries", "$metric",
                          [(f"streammon_$metric{{{filters}}}", legend + " {{quantile}}{{class}}")],
                          description="One panel per metric family; Grafana repeats it over the metric variable.",
                          repeat="metric", repeatDirection="h", maxPerRow=3)]
        counts = f'{{__name__=~"streammon_.+_count", window!="", {filters}}}'
        variables = _variables(headline, segments, None) + [_query_var(
            "metric", 'label_values({__name__=~"streammon_.+_count", window!="", monitor=~"$monitor"}, __name__)',
            all_=True, multi=True, all_value=None, regex="/^streammon_(.+)_count$/")]
    else:
        tracked = monitor.metrics
        if not tracked:
            raise RegistrationError(f"monitor {monitor.name!r} tracks no metric yet; "
                                    f"register metrics before making its dashboard")
        scalar = [t for t in tracked if t.output_label is None]
        pairs = [t for t in scalar if t.feed.stream == "pair"]
        headline = next((t for t in pairs if t.name == "accuracy"), (pairs or scalar or tracked)[0]).name
        quantiles = [t for t in tracked if t.output_label == "quantile"]
        drift_names = _names([t for t in scalar if isinstance(_stat(t), (PSI, KS))])
        score_q = _names([t for t in quantiles if "score" in t.feed.fields])
        delay_q = _names([t for t in quantiles if "delay" in t.feed.fields])
        metrics = [_panel("timeseries", t.name, [(f"streammon_{t.name}{{{filters}}}",
                                                 legend + (" {{" + t.output_label + "}}" if t.output_label else ""))],
                          unit="s" if t.name.endswith("_seconds") else "none",
                          description=f"{type(_stat(t)).__name__} over {t.feed.stream}s; "
                                      f"windows: {', '.join(w.label for w in t.windows)}.")
                   for t in tracked]
        counts = f'{{__name__=~"{_names(tracked)}_count", {filters}}}'
        variables = _variables(headline, segments, monitor.name)
    drift = f'{{__name__=~"{drift_names}", {filters}, window!="cumulative"}}' if drift_names else None
    metrics.append(_panel("timeseries", "Events in each window", [(counts, "{{__name__}} " + legend)], unit="short",
                          w=24, description="The _count of every metric: a thin or empty window shows here, "
                                            "never a stale value."))
    sections = [("Model health", _stat_row(headline, filters, drift)), ("Metrics by window and segment", metrics)]
    if score_q:
        sections.append(("Score quantiles", [_panel(
            "timeseries", "Score quantiles over time", [(f'{{__name__=~"{score_q}", quantile!="", {filters}}}',
                                                         "q{{quantile}} " + legend)], w=24,
            description="Quantiles of the model's score: a shift here is drift before any feedback arrives.")]))
    delay = f'{{__name__=~"{delay_q}", quantile!="", {_SELF}, model=~"$model"}}' if delay_q else None
    sections += _health(delay)
    name = monitor.name if monitor is not None else None
    return {
        "uid": f"streammon-{slug(name)}" if name else UID,
        "title": title or (f"streammon: {name}" if name else "streammon: model health"),
        "tags": ["streammon"], "timezone": "browser", "editable": True, "graphTooltip": 1,
        "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []}, "templating": {"list": variables}, "panels": _layout(sections),
    }


def _stat(tracked) -> Any:
    return getattr(tracked.prototype, "stat", tracked.prototype)  # a finalizer's statistic


def _names(tracked: Sequence) -> str | None:
    return "streammon_(" + "|".join(t.name for t in tracked) + ")" if tracked else None


def slug(name: str) -> str:
    """``name`` as it may appear in a Grafana uid or a rule group name."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:30] or "monitor"


# -- alert rules ------------------------------------------------------------------------------
