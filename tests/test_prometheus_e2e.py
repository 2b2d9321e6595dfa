"""The deploy/ files on real binaries: Prometheus scrapes a worker fed through Kafka, every dashboard
panel's query runs through its HTTP API, and the alert rules fire on what they should.

The stack is the compose stack on loopback: the tansu broker (``EmbeddedBroker``), the compose
demo producer's code writing ``streammon.demo.simulate`` events, the example taxi app consuming them
with the Kafka connector and checkpoints, Debian's Prometheus (installed by .ci/run) run with
``deploy/prometheus/prometheus.yml`` (only addresses and intervals changed) and its rules, and a
stand-in Alertmanager that records what Prometheus sends.

Oracles: the accuracy series of every dashboard equal scikit-learn's ``accuracy_score`` over the
pairs that ``tests/oracle.py`` joins from scratch, in the order the worker read the messages;
dashboard variables resolve to the app's own registrations; alerts equal the series the oracle
puts on the wrong side of each rule's threshold.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from kafka import KafkaProducer
from sklearn.metrics import accuracy_score

from kafka_oracle import aligned_messages
from oracle import run_oracle
from streammon import Sliding
from streammon import operators as ops
from streammon.alerts import alert_rules, to_yaml
from streammon.apps import load_app
from streammon.connectors.kafka import KafkaSource
from streammon.dashboards import dashboard
from streammon.demo import simulate
from test_demo import well_formed
from worker_helpers import create_topics, free_port, wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.kafka]
ROOT = Path(__file__).resolve().parents[1]
HOUR = 3600.0
N_EVENTS = 30_000  # the demo drifts at about event 21,000: its last hour is then all drifted
RATE_INTERVAL = "15s"  # what Grafana would put for $__rate_interval; every rate covers the feed's last seconds
GENERATED_THRESHOLD = 0.7  # between the drifted last hour (~0.55) and the cumulative value (~0.74)


def load_producer():
    spec = importlib.util.spec_from_file_location("demo_producer", ROOT / "deploy" / "demo_producer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordingSource(KafkaSource):
    """The Kafka connector, remembering every message in the order the monitor was handed them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list = []

    def poll(self, max_records: int, timeout: float):
        batch = super().poll(max_records, timeout)
        self.seen.extend(batch)
        return batch


class AlertSink:
    """Stands in for Alertmanager: records the alerts Prometheus posts to /api/v2/alerts."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/api/v2/alerts":
                    received.extend(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Prometheus:
    def __init__(self, config: dict, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("the prometheus binary is not installed: `apt-get install prometheus` (.ci/run does it)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"  # a file, not a pipe nobody reads: a full pipe blocks the process
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={path}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        wait_for(self._ready, 20, "Prometheus to be ready")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_bytes()[-2000:].decode(errors='replace')}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> object:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def local_config(shipped: dict, *, metrics_port: int, prometheus_port: int, alertmanager_port: int,
                 rules: list[str]) -> dict:
    """The shipped config with loopback addresses, 1 s intervals and absolute rule paths."""
    config = json.loads(json.dumps(shipped))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = rules
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    del jobs["streammon"]["dns_sd_configs"]  # compose finds workers by DNS; here there is one, on loopback
    jobs["streammon"]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    return config


# -- the stack ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory, broker):
    workdir = tmp_path_factory.mktemp("stack")
    monitor = load_app(str(ROOT / "examples" / "taxi_app.py") + ":monitor")
    # The dashboards' drift stat reads any *_psi metric: the example app must track one.
    assert any(isinstance(getattr(t.prototype, "stat", t.prototype), (ops.PSI, ops.KS)) for t in monitor.metrics)
    generated = workdir / "generated"
    generated.mkdir()
    for window in ("1h", "cumulative"):  # a rule per window, so that series lie on both sides of the threshold
        rules = alert_rules(monitor, below={"accuracy": GENERATED_THRESHOLD}, window=window, for_="0s", min_count=50)
        (generated / f"taxi-{window}.yml").write_text(to_yaml(rules))
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    producer_code = load_producer()
    events = list(simulate(0, n_events=N_EVENTS))

    create_topics(broker, ["predictions", "feedback"], 4)
    source = RecordingSource(broker.bootstrap_servers, group_id="e2e")
    server = monitor.serve(0)
    sink = AlertSink()
    prometheus = None
    worker = threading.Thread(target=monitor.run, args=(source,),
                              kwargs={"state_dir": str(workdir / "state"), "checkpoint_interval": 0.5}, daemon=True)
    worker.start()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
    try:
        prometheus = Prometheus(local_config(shipped, metrics_port=server.port, prometheus_port=free_port(),
                                            alertmanager_port=sink.port,
                                            rules=[str(ROOT / "deploy/prometheus/rules/*.yml"),
                                                   str(generated / "*.yml")]),
                                workdir)
        # Target discovery hands Prometheus its targets only after ~5 s: wait for the first scrape,
        # then send the events over ~5 s, so counters rise across several scrapes as they would live.
        wait_for(lambda: prometheus.api("query", query='up{job="streammon"} == 1')["result"], 20,
                 "the first scrape of the worker")
        sent = producer_code.produce(lambda topic, key, value: producer.send(topic, key=key, value=value),
                                     events, rate=6000.0)
        producer.flush()
        assert sent == len(events)

        scraped = []

        def read_everything() -> bool:
            got = prometheus.api("query", query='sum(streammon_events_total{monitor="taxi"})')["result"]
            scraped[:] = got
            return bool(got) and float(got[0]["value"][1]) == len(events)

        wait_for(read_everything, 30, "Prometheus to scrape the worker after it read every event")
        evaluated_at = scraped[0]["value"][0]  # the panels are read as of this moment
        checkpoint_age = 'max(streammon_checkpoint_age_seconds{monitor="taxi"})'
        wait_for(lambda: prometheus.api("query", query=checkpoint_age)["result"], 10, "a checkpoint")
        yield {"monitor": monitor, "prometheus": prometheus, "sink": sink, "source": source, "events": events,
               "at": evaluated_at}
    finally:
        monitor.stop()
        worker.join(15)
        producer.close()
        if prometheus is not None:
            prometheus.stop()
        sink.close()
        monitor.close()


@pytest.fixture(scope="module")
def oracle(stack):
    """The from-scratch join over the well-formed messages, in the order the worker processed them: aligned
    by event time (docs/kafka.md, "Input order"), recomputed from what each partition held."""
    seen = stack["source"].seen
    produced = [json.dumps(e, separators=(",", ":")).encode() for e in stack["events"]]
    assert sorted(m.value for m in seen) == sorted(produced)  # every message, once

    def accepted(m) -> bool:
        try:
            e = json.loads(m.value)
        except ValueError:
            return False
        return isinstance(e, dict) and well_formed(e)
    read = [json.loads(m.value) for m in aligned_messages(seen, accepted)]
    good = [e for e in read if isinstance(e, dict) and well_formed(e)]
    assert len(good) < len(read)  # the demo's malformed events are in the stream
    return run_oracle(good, feedback_ttl=3 * HOUR, prediction_ttl=HOUR, segments=("version",))


def oracle_accuracy(oracle, window: str, version: str | None = None) -> tuple[float, int]:
    rows = oracle.select("pair", None if window == "cumulative" else Sliding(window))
    rows = [r for r in rows if version is None or r.segment == (version,)]
    return accuracy_score([r.y_true for r in rows], [r.y_pred for r in rows]), len(rows)


# -- dashboards as Grafana would run them ---------------------------------------------------------
def resolve_variables(board: dict, prometheus: Prometheus) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each query variable's values from Prometheus (label_values, then the variable's regex), in
    order; a variable with "All" takes its allValue, else its first value."""
    chosen: dict[str, str] = {}
    values: dict[str, list[str]] = {}
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = substitute(var["query"]["query"], chosen)
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", query)
        assert match, query
        found = prometheus.api(f"label/{match.group(2)}/values", **{"match[]": match.group(1)})
        if var["regex"]:
            pattern = re.compile(var["regex"].strip("/"))
            found = [(m.group(1) if m.groups() else m.group(0)) for v in found if (m := pattern.search(v))]
        values[var["name"]] = sorted(found)
        assert found, f"variable {var['name']} has no values: {query}"
        chosen[var["name"]] = (var.get("allValue") or ".*") if var["includeAll"] else sorted(found)[0]
    return chosen, values


def substitute(expr: str, chosen: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name in sorted(chosen, key=len, reverse=True):  # $model before $mode, were there one
        expr = expr.replace("${" + name + "}", chosen[name]).replace("$" + name, chosen[name])
    assert "$" not in expr.replace("$1", ""), expr
    return expr


def panels(board: dict, chosen: dict[str, str], values: dict[str, list[str]]):
    """(title, [expr...]) for every panel Grafana would draw, repeated panels expanded."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        repeat = panel.get("repeat")
        for value in values[repeat] if repeat else [None]:
            env = {**chosen, repeat: value} if repeat else chosen
            yield substitute(panel["title"], env), [substitute(t["expr"], env) for t in panel["targets"]], panel["type"]


def finite(result: list[dict]) -> list[float]:
    return [float(v) for series in result for _, v in series.get("values", [series.get("value", (0, "NaN"))])
            if math.isfinite(float(v))]


def boards(monitor) -> list[tuple[str, dict]]:
    shipped = json.loads((ROOT / "deploy/grafana/dashboards/model-health.json").read_text())
    return [("model-health.json", shipped), ("streammon dashboard", dashboard(monitor))]


@pytest.mark.parametrize("which", [0, 1], ids=["shipped model-health.json", "generated for the app"])
def test_every_panel_query_returns_data(stack, oracle, which):
    prometheus, at = stack["prometheus"], stack["at"]
    name, board = boards(stack["monitor"])[which]
    chosen, values = resolve_variables(board, prometheus)
    tracked = {t.name for t in stack["monitor"].metrics}
    assert values["monitor"] == ["taxi"] and values["model"] == ["tip"] and values["version"] == ["v3", "v4"]
    assert values["window"] == ["1h"]  # the accuracy's sliding window
    if "metric" in values:
        assert set(values["metric"]) == tracked  # the repeated panel follows the registered metrics
    drawn = 0
    for title, exprs, kind in panels(board, chosen, values):
        results = []
        for expr in exprs:
            ranged = prometheus.api("query_range", query=expr, start=at - 60, end=at, step="1s")["result"]
            instant = prometheus.api("query", query=expr, time=at)["result"]
            results.append((expr, ranged, instant))
        if kind == "stat":  # every number of the stat row is there, and is a number
            for expr, _, instant in results:
                assert finite(instant), f"{name}: stat {title!r} has no value: {expr} -> {instant}"
        else:
            assert any(finite(ranged) for _, ranged, _ in results), f"{name}: panel {title!r} draws nothing: {exprs}"
        drawn += 1
    assert drawn >= 20


@pytest.mark.parametrize("which", [0, 1], ids=["shipped model-health.json", "generated for the app"])
def test_accuracy_panels_equal_the_oracle(stack, oracle, which):
    prometheus, at = stack["prometheus"], stack["at"]
    _, board = boards(stack["monitor"])[which]
    chosen, values = resolve_variables(board, prometheus)
    drawn = {title: exprs for title, exprs, _ in panels(board, chosen, values)}
    (series_expr,) = drawn["accuracy"]
    series = prometheus.api("query", query=series_expr, time=at)["result"]
    assert {(s["metric"]["window"], s["metric"]["version"]) for s in series} == {
        (w, v) for w in ("cumulative", "1h") for v in ("v3", "v4")}
    for s in series:
        expected, n = oracle_accuracy(oracle, s["metric"]["window"], s["metric"]["version"])
        assert n > 500
        assert float(s["value"][1]) == pytest.approx(expected, abs=1e-12), s["metric"]
    # The stat row pools the versions: the accuracy over all pairs of the window.
    windowed, cumulative = drawn["accuracy 1h vs cumulative"]
    for expr, window in ((windowed, "1h"), (cumulative, "cumulative")):
        (value,) = finite(prometheus.api("query", query=expr, time=at)["result"])
        assert value == pytest.approx(oracle_accuracy(oracle, window)[0], rel=1e-12)
    assert oracle_accuracy(oracle, "1h")[0] < oracle_accuracy(oracle, "cumulative")[0] - 0.1  # the drift shows


# -- rules -----------------------------------------------------------------------------------
def test_every_rule_evaluates_without_error(stack):
    groups = stack["prometheus"].api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    shipped = yaml.safe_load((ROOT / "deploy/prometheus/rules/streammon.yml").read_text())
    names = {r["alert"] for g in shipped["groups"] for r in g["rules"]} | {"StreammonAccuracyBelow"}
    assert {r["name"] for r in rules} >= names
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def active_alerts(prometheus: Prometheus, name: str, state: str) -> set[tuple[str, str]]:
    return {(a["labels"]["window"], a["labels"]["version"]) for a in prometheus.api("alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == state}


def test_alerts_follow_the_oracle_and_reach_alertmanager(stack, oracle):
    prometheus, sink = stack["prometheus"], stack["sink"]
    generated, shipped, drop = set(), set(), set()
    for version in ("v3", "v4"):
        cumulative, _ = oracle_accuracy(oracle, "cumulative", version)
        for window in ("cumulative", "1h"):
            value, n = oracle_accuracy(oracle, window, version)
            if value < GENERATED_THRESHOLD and n >= 50:
                generated.add((window, version))
            if window != "cumulative" and value < 0.7 and n >= 100:
                shipped.add((window, version))
            if window != "cumulative" and value < cumulative - 0.1 and n >= 100:
                drop.add((window, version))
    assert generated and drop  # the drift puts series on both sides of the thresholds
    assert generated != {(w, v) for w in ("cumulative", "1h") for v in ("v3", "v4")}

    def settled() -> bool:
        return (active_alerts(prometheus, "StreammonAccuracyBelow", "firing") == generated  # for: 0s
                and active_alerts(prometheus, "StreammonAccuracyBelowThreshold", "pending") == shipped  # for: 10m
                and active_alerts(prometheus, "StreammonAccuracyDrop", "pending") == drop
                and {(a["labels"].get("window"), a["labels"].get("version")) for a in sink.received
                     if a["labels"]["alertname"] == "StreammonAccuracyBelow"} >= generated)

    wait_for(settled, 15, "alerts to match the oracle")
    notified = [a for a in sink.received if a["labels"]["alertname"] == "StreammonAccuracyBelow"]
    assert all(a["labels"]["monitor"] == "taxi" and a["labels"]["severity"] == "warning" for a in notified)
    assert all(f"below 0.7 (window {a['labels']['window']})" in a["annotations"]["summary"] for a in notified)
