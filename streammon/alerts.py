"""Prometheus alert rules written from a monitor's registered metrics, and YAML without PyYAML.

``alert_rules(monitor, below={"accuracy": 0.8})`` writes one threshold rule per metric (and output),
guarded by a minimum count of events in the window; ``to_yaml`` prints them for a rules file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .dashboards import slug
from .errors import RegistrationError

if TYPE_CHECKING:
    from .monitor import Monitor

__all__ = ["alert_rules", "to_yaml"]


_THRESHOLD_KEY = re.compile(r"^([a-z_][a-z0-9_]*)(?:\[([^\]]+)\])?$")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def alert_rules(monitor: Monitor, *, below: Mapping[str, float] | None = None,
                above: Mapping[str, float] | None = None, window: str | None = None, for_: str = "15m",
                min_count: int = 100, severity: str = "warning") -> dict:
    """Prometheus alerting rules: a registered metric below (or above) a threshold in a window.

    A key is a metric name, or ``name[key]`` for one output of a metric that publishes several
    (``payment_share[cash]``). The window defaults to the metric's first sliding window. A rule
    fires only while the window holds at least ``min_count`` events, so a thin window cannot page.

    >>> import streammon as sm
    >>> from streammon import operators as ops
    >>> m = sm.Monitor("fraud")
    >>> _ = m.track(ops.Accuracy())
    >>> rule = alert_rules(m, below={"accuracy": 0.9})["groups"][0]["rules"][0]
    >>> rule["alert"]
    'StreammonAccuracyBelow'
    >>> print(rule["expr"].replace(" and ", "\\nand "))
    streammon_accuracy{monitor="fraud", window="1h"} < 0.9
    and streammon_accuracy_count{monitor="fraud", window="1h"} >= 100
    """
    wanted = [(k, v, "<", "below") for k, v in (below or {}).items()]
    wanted += [(k, v, ">", "above") for k, v in (above or {}).items()]
    if not wanted:
        raise RegistrationError("give at least one threshold, e.g. below={'accuracy': 0.8} (--below accuracy=0.8)")
    if not _DURATION.match(for_):
        raise RegistrationError(f"for_={for_!r} is not a Prometheus duration; write it like '15m' or '1h'")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
        raise RegistrationError(f"min_count={min_count!r} must be a whole number of events, e.g. 100")
    tracked = {t.name: t for t in monitor.metrics}
    rules = []
    for key, threshold, op, word in wanted:
        match = _THRESHOLD_KEY.match(key)
        t = tracked.get(match.group(1)) if match else None
        if match is None or t is None:
            raise RegistrationError(f"no metric named {key!r} in monitor {monitor.name!r}; tracked: "
                                    f"{', '.join(tracked) or 'none'} (a threshold reads like accuracy=0.8)")
        output = match.group(2)
        if output is not None and t.output_label is None:
            raise RegistrationError(f"metric {t.name!r} publishes one value; write {t.name}={threshold}, not {key}")
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
            raise RegistrationError(f"threshold for {key!r} must be a finite number, got {threshold!r}")
        labels = [w.label for w in t.windows]
        win = window or next((w for w in labels if w != "cumulative"), labels[0])
        if win not in labels:
            raise RegistrationError(f"metric {t.name!r} is not published in window {win!r}; "
                                    f"its windows: {', '.join(labels)}")
        base = f'monitor="{_escape(monitor.name)}", window="{win}"'
        value = f"streammon_{t.name}{{{base}" + (f', {t.output_label}="{_escape(output)}"' if output else "") + "}"
        on = f" ignoring ({t.output_label})" if t.output_label else ""
        what = t.name + (f"[{output}]" if output else "")
        rules.append({
            "alert": "Streammon" + "".join(p.capitalize() for p in t.name.split("_")) + word.capitalize(),
            "expr": f"{value} {op} {_num(threshold)} and{on} streammon_{t.name}_count{{{base}}} >= {min_count}",
            "for": for_,
            "labels": {"severity": severity, "metric": t.name},
            "annotations": {
                "summary": f"{{{{ $labels.monitor }}}}/{{{{ $labels.model }}}}: {what} is "
                           f"{{{{ $value | printf \"%.4g\" }}}}, {word} {_num(threshold)} (window {win})",
                "description": f"{what} of model {{{{ $labels.model }}}} has been {word} {_num(threshold)} in the "
                               f"{win} window for {for_}, over at least {min_count} events. "
                               f"See docs/deployment.md, section Alerts.",
            },
        })
    return {"groups": [{"name": f"streammon-{slug(monitor.name)}-thresholds", "rules": rules}]}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')  # a PromQL label value in double quotes


def _num(x: float) -> str:
    return repr(x) if isinstance(x, int) else repr(float(x))


def to_yaml(data: Any) -> str:
    """Block-style YAML for dicts, lists, strings and numbers; strings are double-quoted (JSON escapes).

    >>> print(to_yaml({"groups": [{"name": "g", "rules": [{"alert": "A", "for": "5m"}]}]}), end="")
    groups:
      - name: 'g'
        rules:
          - alert: 'A'
            for: '5m'
    """
    return "\n".join(_yaml_lines(data, 0)) + "\n"


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}  # plain keys YAML would not read as strings


def _yaml_lines(value: Any, indent: int) -> Iterator[str]:
    pad = " " * indent
    if isinstance(value, dict) and value:
        for k, v in value.items():
            key = k if isinstance(k, str) and _PLAIN_KEY.fullmatch(k) and k.lower() not in _YAML_WORDS else _quote(str(k))
            if isinstance(v, (dict, list)) and v:
                yield f"{pad}{key}:"
                yield from _yaml_lines(v, indent + 2)
            else:
                yield f"{pad}{key}: {_scalar(v)}"
    elif isinstance(value, list) and value:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                first, *rest = _yaml_lines(item, indent + 2)
                yield f"{pad}- {first.lstrip()}"
                yield from rest
            else:
                yield f"{pad}- {_scalar(item)}"
    else:
        yield pad + _scalar(value)


def _scalar(v: Any) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return ".nan" if math.isnan(v) else ".inf" if v > 0 else "-.inf"
        text = repr(v)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text  # YAML 1.1 floats need a dot
    return _quote(str(v))


def _quote(s: str) -> str:
    if all(0x20 <= ord(ch) < 0x7F for ch in s):  # single quotes: PromQL reads as written
        return "'" + s.replace("'", "''") + "'"
    # Else double quotes with ASCII escapes, so no character can be read as a YAML line break.
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
    return '"' + "".join(out) + '"'
