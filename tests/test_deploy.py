"""The compose stack's files, checked without a Docker engine: with promtool, by parsing, and by
running each service's command (and health check) here.

Oracles: promtool (Debian's prometheus package) for configs and rules; threshold semantics written
out in Python for the generated rules' unit tests; PyYAML for ``to_yaml``; the app's own
registrations for the generated dashboard; and the CLI's own parsers for the compose command lines.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import streammon as sm
from streammon import operators as ops
from streammon.alerts import alert_rules, to_yaml
from streammon.cli.main import _parser, load_app, main
from streammon.dashboards import dashboard
from worker_helpers import Worker, create_topics, free_port, scrape

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
APP = "examples/taxi_app.py:monitor"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ONE_SHOT = {"kafka-topics", "generate"}


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: `apt-get install prometheus` brings it (.ci/run does it)")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def command(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def container_path(service: str, path: str) -> tuple[str, Path | str] | None:
    """(mount source, rest of path) of the volume that holds ``path`` in ``service``; None if none does."""
    best = None
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        inside = path == target or path.startswith(target.rstrip("/") + "/")
        if inside and (best is None or len(target) > len(best[2])):
            best = (source, path[len(target):].lstrip("/"), target)
    return None if best is None else best[:2]


# -- promtool on the shipped files ----------------------------------------------------------------
@pytest.mark.prometheus
def test_promtool_accepts_the_prometheus_config_and_its_rules():
    result = promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "streammon.yml" in result.stdout + result.stderr  # the rules/*.yml glob found the shipped rules


@pytest.mark.prometheus
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    rules = sorted(str(p) for p in (DEPLOY / "prometheus" / "rules").glob("*.yml"))
    tests = sorted(str(p) for p in (DEPLOY / "prometheus" / "tests").glob("*.yml"))
    assert rules and tests
    checked = promtool("check", "rules", *rules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", *tests)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_shipped_alert_has_a_unit_test_that_makes_it_fire():
    alerts = {r["alert"] for p in (DEPLOY / "prometheus" / "rules").glob("*.yml")
              for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]}
    fired = {case["alertname"] for p in (DEPLOY / "prometheus" / "tests").glob("*.yml")
             for t in yaml.safe_load(p.read_text())["tests"] for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert alerts == fired
    wanted = {"StreammonAccuracyBelowThreshold", "StreammonDriftHigh", "StreammonFeedbackCoverageCollapse",
              "StreammonRejectedEventsSpike", "StreammonDown", "StreammonCheckpointStale",
              "StreammonConsumerLagGrowing"}
    assert wanted <= alerts  # the issue's list


# -- generated alert rules ------------------------------------------------------------------------
@pytest.mark.prometheus
def test_generated_rules_fire_exactly_where_the_threshold_says(tmp_path, capsys):
    rules_file = tmp_path / "rules.yml"
    code = main(["alerts", APP, "--below", "accuracy=0.7", "--above", "payment_type_share[cash]=0.4",
                 "--for", "5m", "--min-count", "100", "--output", str(rules_file)])
    assert code == 0, capsys.readouterr().err
    checked = promtool("check", "rules", str(rules_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A grid of series around each threshold; the expected alerts are written from the rule's meaning.
    series, expected = [], []
    grid = [(v, n, w, m) for v in (-0.01, 0.0, 0.01) for n in (99, 100, 101) for w in ("1h", "cumulative")
            for m in ("taxi", "other")]
    rules = (("accuracy", 0.7, "<", {}), ("payment_type_share", 0.4, ">", {"class": "cash"}))
    for metric, threshold, op, extra in rules:
        for i, (delta, n, window, mon) in enumerate(grid):
            labels = {"monitor": mon, "model": "tip", "window": window, "version": f"s{i}"}
            for cls in ([extra["class"], "card"] if extra else [None]):
                value = threshold + delta
                name_labels = {**labels, **({"class": cls} if cls else {})}
                series.append({"series": f"streammon_{metric}{fmt(name_labels)}", "values": f"{value}x10"})
                fires = (value < threshold if op == "<" else value > threshold) and n >= 100 and window == "1h" \
                    and mon == "taxi" and cls in (None, "cash")
                if fires:
                    expected.append((metric, name_labels, value))
            series.append({"series": f"streammon_{metric}_count{fmt(labels)}", "values": f"{n}x10"})
    assert len(expected) == 4  # two per rule: just past the threshold, with 100 and 101 events
    cases = []
    for metric, alert in (("accuracy", "StreammonAccuracyBelow"),
                          ("payment_type_share", "StreammonPaymentTypeShareAbove")):
        cases.append({"eval_time": "4m", "alertname": alert, "exp_alerts": []})  # pending for 5m
        cases.append({"eval_time": "6m", "alertname": alert, "exp_alerts": [
            {"exp_labels": {**labels, "severity": "warning", "metric": metric},
             "exp_annotations": annotations(metric, labels, value)}
            for m, labels, value in expected if m == metric]})
    unit = {"rule_files": [str(rules_file)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases}]}
    (tmp_path / "unit.yml").write_text(yaml.safe_dump(unit))
    tested = promtool("test", "rules", str(tmp_path / "unit.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def fmt(labels: dict) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def annotations(metric: str, labels: dict, value: float) -> dict:
    what = metric + ("[cash]" if "class" in labels else "")
    word, threshold = ("below", "0.7") if metric == "accuracy" else ("above", "0.4")
    return {"summary": f"{labels['monitor']}/{labels['model']}: {what} is {value:.4g}, {word} {threshold} (window 1h)",
            "description": f"{what} of model {labels['model']} has been {word} {threshold} in the 1h window for 5m, "
                           f"over at least 100 events. See docs/deployment.md, section Alerts."}


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give at least one threshold"),
    ({"below": {"acuracy": 0.8}}, "no metric named 'acuracy'"),
    ({"below": {"accuracy[1]": 0.8}}, "publishes one value; write accuracy=0.8"),
    ({"below": {"accuracy": 0.8}, "window": "5m"}, "not published in window '5m'; its windows: cumulative, 1h"),
    ({"below": {"accuracy": float("nan")}}, "must be a finite number"),
    ({"below": {"accuracy": 0.8}, "for_": "ten minutes"}, "not a Prometheus duration"),
    ({"below": {"accuracy": 0.8}, "min_count": -1}, "whole number of events"),
])
def test_alert_rules_refuse_what_cannot_work_and_say_the_fix(kwargs, message):
    with pytest.raises(sm.RegistrationError, match=re.escape(message)):
        alert_rules(load_app(APP), **kwargs)


def test_alerts_command_exits_2_on_a_bad_threshold(capsys):
    assert main(["alerts", APP, "--below", "nope=1"]) == 2
    assert "no metric named 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["alerts", APP, "--below", "accuracy"])
    assert exit_.value.code == 2
    assert "is not METRIC=NUMBER" in capsys.readouterr().err


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(yaml_values)
def test_to_yaml_reads_back_as_the_same_data(data):
    assert yaml.safe_load(to_yaml(data)) == data


# -- generated dashboards -------------------------------------------------------------------------
def test_the_shipped_model_health_dashboard_is_the_generated_one():
    shipped = json.loads((DEPLOY / "grafana" / "dashboards" / "model-health.json").read_text())
    assert shipped == dashboard(segments=("version",)), (
        "regenerate it: python -c \"import json; from streammon.dashboards import dashboard; "
        "print(json.dumps(dashboard(segments=('version',)), indent=2))\" > deploy/grafana/dashboards/model-health.json")


def test_dashboard_command_writes_a_panel_per_registered_metric(tmp_path, capsys):
    assert main(["dashboard", APP, "--output", str(tmp_path / "d.json")]) == 0, capsys.readouterr().err
    board = json.loads((tmp_path / "d.json").read_text())
    monitor = load_app(APP)
    assert board == dashboard(monitor)
    metric_panels = {p["title"]: p for p in board["panels"] if p["type"] == "timeseries"
                     and re.fullmatch(r"streammon_\w+\{.*\}", p["targets"][0]["expr"])}
    for tracked in monitor.metrics:
        (target,) = metric_panels[tracked.name]["targets"]
        assert target["expr"].startswith(f"streammon_{tracked.name}{{")
        if tracked.output_label:
            assert "{{" + tracked.output_label + "}}" in target["legendFormat"]
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "monitor", "model", "window", "version"]


def test_generated_dashboard_shows_drift_and_quantile_panels_only_for_metrics_that_have_them():
    plain = sm.Monitor("plain", windows=[sm.Cumulative()])
    plain.track(ops.MAE())
    titles = [p["title"] for p in dashboard(plain)["panels"]]
    assert "Drift score" not in titles and "Score quantiles over time" not in titles
    assert "mae $window vs cumulative" in titles  # the headline is the first pair metric
    rich = sm.Monitor("rich", windows=[sm.Cumulative(), sm.Sliding("1h")])
    rich.track(ops.Accuracy())
    rich.track(ops.PSI([0.1, 0.2, 0.3, 0.5, 0.9] * 20, of="score"), name="score_psi")
    rich.track(ops.Quantiles([0.5], of="score"), name="score_q")
    board = dashboard(rich)
    exprs = {p["title"]: p["targets"][0]["expr"] for p in board["panels"] if p["type"] != "row"}
    assert 'streammon_(score_psi)' in exprs["Drift score"]
    assert 'streammon_(score_q)' in exprs["Score quantiles over time"]
    with pytest.raises(sm.RegistrationError, match="tracks no metric yet"):
        dashboard(sm.Monitor("empty"))


@pytest.mark.parametrize("which", ["shipped", "generated"])
def test_dashboard_layout_and_data_source(which):
    board = (json.loads((DEPLOY / "grafana/dashboards/model-health.json").read_text()) if which == "shipped"
             else dashboard(load_app(APP)))
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cell & cells, f"panel {p['title']!r} overlaps another"
        cells |= cell
        if p["type"] != "row":
            assert {p["datasource"]["uid"]} | {t["datasource"]["uid"] for t in p["targets"]} == {"${datasource}"}
    stats = [p["title"] for p in panels if p["type"] == "stat"]
    drifts = which == "shipped" or any(isinstance(getattr(t.prototype, "stat", t.prototype), (ops.PSI, ops.KS))
                                       for t in load_app(APP).metrics)  # a generated dashboard shows drift if tracked
    assert stats == ["accuracy $window vs cumulative", "Feedback coverage", *(["Drift score"] if drifts else []),
                     "Rejected events", "Processing p99", "Consumer lag"]
    assert max(p["gridPos"]["y"] for p in panels if p["type"] == "stat") == 1  # the stat row comes first
    (source,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/streammon.yml").read_text())["datasources"]
    assert source["current"]["value"] == next(d["uid"] for d in provisioned if d["type"] == "prometheus")


# -- Grafana provisioning ---------------------------------------------------------------------------
def test_grafana_provisioning_points_at_what_compose_mounts():
    grafana = SERVICES["grafana"]
    assert container_path("grafana", "/etc/grafana/provisioning/x") == ("./deploy/grafana/provisioning", "x")
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/streammon.yml").read_text())["providers"]
    mounted = {p["options"]["path"]: container_path("grafana", p["options"]["path"]) for p in providers}
    assert mounted["/etc/dashboards/streammon"] == ("./deploy/grafana/dashboards", "")
    assert mounted["/generated/grafana"] == ("generated", "grafana")  # where the generate service writes
    assert "--output /generated/grafana/" in " ".join(command("generate"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    source, rest = container_path("grafana", home)
    assert (ROOT / source / rest).is_file()
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/streammon.yml").read_text())
    sources = {d["type"]: d for d in provisioned["datasources"]}
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert sources["prometheus"]["url"] == f"http://prometheus:{listen_port('prometheus')}"
    assert sources["prometheus"]["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]
    assert sources["alertmanager"]["url"] == "http://alertmanager:9093"


def listen_port(service: str) -> str:
    flags = dict(arg.split("=", 1) for arg in command(service) if arg.startswith("--") and "=" in arg)
    return flags.get("--web.listen-address", ":9093" if service == "alertmanager" else ":9090").rsplit(":", 1)[1]


# -- the compose file -------------------------------------------------------------------------------
def test_compose_has_the_stack_and_publishes_only_loopback_ports_a_user_needs():
    assert set(SERVICES) == {"kafka", "kafka-topics", "generate", "streammon", "producer", "prometheus", "alertmanager",
                             "grafana"}
    published = {}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published[name] = (int(host_port), int(container_port))
    assert published == {"grafana": (3000, 3000), "prometheus": (9090, 9090), "alertmanager": (9093, 9093),
                         "kafka": (9094, 9094)}


def test_kafka_is_the_apache_image_in_kraft_mode_with_a_listener_for_the_host():
    kafka = SERVICES["kafka"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert not any("ZOOKEEPER" in k for k in env)
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16  # what kafka-storage format accepts
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["HOST"] == f"localhost:{published_port('kafka')}"
    assert listeners["HOST"] == f":{published_port('kafka')}"
    for client in ("streammon", "producer"):  # the workers' bootstrap servers are the internal listener
        assert option(command(client), "--bootstrap-servers") == advertised["INTERNAL"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics come from kafka-topics, co-partitioned


def published_port(service: str) -> int:
    return int(str(SERVICES[service]["ports"][0]).split(":")[1])


def test_topic_script_creates_every_topic_with_one_partition_count(tmp_path):
    service = SERVICES["kafka-topics"]
    assert service["image"] == SERVICES["kafka"]["image"]
    stub = tmp_path / "kafka-topics.sh"
    log = tmp_path / "calls"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    stub.chmod(0o755)
    (script,) = service["command"]
    script = script.replace("$$", "$").replace("/opt/kafka/bin/kafka-topics.sh", str(stub))  # compose's escaping
    env = {**os.environ, **{k: str(v) for k, v in service["environment"].items()}}
    subprocess.run(["/bin/bash", "-c", script], env=env, check=True, timeout=30)
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    created = {option(c, "--topic"): c for c in calls}
    predictions, feedback = option(command("streammon"), "--topics").split(",")
    assert set(created) == {predictions, feedback, option(command("streammon"), "--dead-letter-topic")}
    assert {option(c, "--partitions") for c in calls} == {str(service["environment"]["PARTITIONS"])}
    assert all("--create" in c and "--if-not-exists" in c for c in calls)
    assert {option(c, "--bootstrap-server") for c in calls} == {"kafka:9092"}


def test_long_running_services_have_health_checks_and_restart_policies():
    for name, service in SERVICES.items():
        if name in ONE_SHOT:
            assert service["restart"] == "on-failure" and "healthcheck" not in service
        else:
            assert service["restart"] == "unless-stopped", name
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition["condition"] == expected, (name, dependency)


def test_volumes_are_declared_and_bind_mounts_exist():
    named = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                assert volume.endswith(":ro"), f"{name} may write into the repository: {volume}"
            else:
                named.add(source)
    assert named == set(COMPOSE["volumes"])
    assert container_path("streammon", option(command("streammon"), "--state-dir"))[0] == "streammon-state"
    assert container_path("kafka", SERVICES["kafka"]["environment"]["KAFKA_LOG_DIRS"])[0] == "kafka-data"


def test_prometheus_config_matches_the_services():
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    flags = dict(arg.split("=", 1) for arg in command("prometheus"))
    source, rest = container_path("prometheus", flags["--config.file"])
    assert (ROOT / source / rest).resolve() == (DEPLOY / "prometheus/prometheus.yml").resolve()
    assert container_path("prometheus", flags["--storage.tsdb.path"])[0] == "prometheus-data"
    local, generated = config["rule_files"]
    assert list((DEPLOY / "prometheus").glob(local))  # relative to the config file, as Prometheus reads it
    assert container_path("prometheus", generated) == ("generated", "prometheus/*.yml")
    assert "--output /generated/prometheus/" in " ".join(command("generate"))
    (am,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == f"alertmanager:{listen_port('alertmanager')}"
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streammon"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["streammon"] and str(sd["port"]) == option(command("streammon"), "--metrics-port")
    assert option(command("streammon"), "--metrics-host") == "0.0.0.0"  # reachable from the prometheus container
    am_flags = dict(arg.split("=", 1) for arg in command("alertmanager"))
    source, rest = container_path("alertmanager", am_flags["--config.file"])
    assert (ROOT / source / rest).resolve() == (DEPLOY / "alertmanager/alertmanager.yml").resolve()


def test_alertmanager_routes_to_declared_receivers():
    config = yaml.safe_load((DEPLOY / "alertmanager/alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}

    def routes(route):
        yield route
        for child in route.get("routes", []):
            yield from routes(child)
    assert all(r["receiver"] in receivers for r in routes(config["route"]))
    assert {"monitor", "model"} <= set(config["route"]["group_by"])


def test_compose_commands_parse_as_the_programs_they_run():
    run = _parser().parse_args(command("streammon"))
    assert run.command == "run" and run.app == APP
    assert run.topics == "predictions,feedback" and run.group and run.state_dir and run.metrics_port == 9108
    producer = SERVICES["producer"]
    assert producer["entrypoint"] == ["python", "deploy/demo_producer.py"]
    args = load_producer().parser().parse_args(command("producer"))
    assert args.topics == run.topics
    assert str(args.heartbeat) in " ".join(producer["healthcheck"]["test"])


@pytest.mark.prometheus
def test_generate_service_writes_the_apps_dashboard_and_rules(tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "streammon").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m streammon "$@"\n')
    (shim / "streammon").chmod(0o755)
    for sub in ("grafana", "prometheus"):
        (tmp_path / "generated" / sub).mkdir(parents=True)
    (script,) = command("generate")
    assert SERVICES["generate"]["entrypoint"] == ["/bin/sh", "-c"]
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    subprocess.run(["/bin/sh", "-c", script.replace("/generated/", f"{tmp_path}/generated/")], cwd=ROOT, env=env,
                   check=True, timeout=120, capture_output=True)
    (board,) = (tmp_path / "generated/grafana").glob("*.json")
    assert json.loads(board.read_text()) == dashboard(load_app(APP))
    (rules,) = (tmp_path / "generated/prometheus").glob("*.yml")
    expected = alert_rules(load_app(APP), below={"accuracy": 0.7}, above={"log_loss": 0.6})
    assert yaml.safe_load(rules.read_text()) == expected
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def load_producer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_producer", DEPLOY / "demo_producer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- health checks, run here ----------------------------------------------------------------------
def run_check(test: list[str], **replace: str) -> int:
    kind, *argv = test
    assert kind == "CMD"
    argv = [arg for arg in argv]
    for old, new in replace.items():
        argv = [arg.replace(old, new) for arg in argv]
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    return subprocess.run(argv, timeout=30, capture_output=True).returncode


@pytest.mark.slow
def test_worker_health_check_passes_while_metrics_are_served():
    monitor = load_app(APP)
    server = monitor.serve(0)
    test = SERVICES["streammon"]["healthcheck"]["test"]
    try:
        assert run_check(test, **{":9108/": f":{server.port}/"}) == 0
    finally:
        monitor.close()
    assert run_check(test, **{":9108/": f":{server.port}/"}) != 0


def test_producer_health_check_follows_the_heartbeat(tmp_path):
    beat = tmp_path / "alive"
    beat.touch()
    test = SERVICES["producer"]["healthcheck"]["test"]
    heartbeat = option(command("producer"), "--heartbeat")
    assert run_check(test, **{heartbeat: str(beat)}) == 0
    os.utime(beat, (time.time() - 60, time.time() - 60))
    assert run_check(test, **{heartbeat: str(beat)}) != 0


# -- the demo producer ------------------------------------------------------------------------------
def test_demo_producer_routes_keys_and_paces_the_simulation(tmp_path):
    from streammon.demo import simulate

    producer = load_producer()
    events = list(simulate(3, n_events=3000))
    sent, clock = [], [0.0]
    heartbeat = tmp_path / "alive"
    n = producer.produce(lambda topic, key, value: sent.append((topic, key, value)), events, rate=100.0,
                         predictions="p", feedback="f", heartbeat=heartbeat,
                         clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert n == len(sent) == len(events)
    assert clock[0] == pytest.approx((len(events) - 1) / 100.0)  # paced: event i leaves at i / rate
    assert heartbeat.exists()
    for (topic, key, value), event in zip(sent, events):
        assert json.loads(value) == event
        is_feedback = event.get("kind") == "feedback" or (event.get("kind") is None and "label" in event)
        assert topic == ("f" if is_feedback else "p")
        assert key == (event["id"].encode() if isinstance(event.get("id"), str) and event["id"] else None)
    assert {t for t, _, _ in sent} == {"p", "f"}


# -- the image ---------------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: a pattern excludes a path or any folder above it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(p, pattern) or (bare != pattern and fnmatch.fnmatch(p.rsplit("/", 1)[-1], bare))
               for p in prefixes):
            return True
    return False


@pytest.mark.slow
def test_image_copies_what_the_compose_commands_need(tmp_path):
    instructions = dockerfile()
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert dict(instructions)["WORKDIR"] == "/app"
    assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["streammon"]
    assert dict(instructions)["USER"] != "root"
    # Stage the image's /app as the COPY lines would, from the build context .dockerignore leaves.
    app = tmp_path / "app"
    for kind, rest in instructions:
        if kind != "COPY":
            continue
        *sources, target = rest.split()
        for source in sources:
            assert (ROOT / source).exists() and not ignored(source, patterns), source
            dest = app / (target.removeprefix("./") if not target.endswith("/") else target.removeprefix("./") + source)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, dest, dirs_exist_ok=True,
                                ignore=lambda d, names: [n for n in names if ignored(
                                    str((Path(d) / n).relative_to(ROOT)), patterns)])
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, dest)
    readme = re.search(r'readme = "([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert (app / "pyproject.toml").is_file() and (app / readme).is_file()  # pip install . needs both
    assert not list(app.rglob("__pycache__"))
    # Every file the compose commands name is in the image, and the generate command works from it alone.
    assert (app / APP.split(":")[0]).is_file() and (app / SERVICES["producer"]["entrypoint"][1]).is_file()
    env = {**os.environ, "PYTHONPATH": str(app)}
    out = subprocess.run([sys.executable, "-m", "streammon", "dashboard", APP], cwd=app, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["title"] == "streammon: taxi"
    run = " ".join(rest for kind, rest in instructions if kind == "RUN")
    for path in ("/state", "/generated/grafana", "/generated/prometheus"):  # fresh volumes start owned by the user
        assert path in run


# -- the compose pipeline on a real broker ----------------------------------------------------------
@pytest.mark.kafka
def test_compose_producer_and_worker_commands_run_the_pipeline(broker, tmp_path):
    """The producer's and the worker's compose command lines, run against the tansu broker on loopback."""
    from streammon.demo import simulate
    from test_demo import well_formed

    n_events = 3000
    topics_env = SERVICES["kafka-topics"]["environment"]
    port = free_port()
    create_topics(broker, topics_env["TOPICS"].split(), int(topics_env["PARTITIONS"]))
    local = {"kafka:9092": broker.bootstrap_servers, "/state": str(tmp_path / "state"), "9108": str(port),
             "0.0.0.0": "127.0.0.1", "/tmp/producer.alive": str(tmp_path / "alive")}
    argv = lambda service: [local.get(a, a) for a in command(service)]  # noqa: E731
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    produced = subprocess.run([sys.executable, *SERVICES["producer"]["entrypoint"][1:], *argv("producer"),
                               "--n-events", str(n_events), "--rate", "5000"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert produced.returncode == 0, produced.stderr
    worker = Worker(*argv("streammon"), log=tmp_path / "worker.log")
    try:
        deadline, got = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            assert worker.poll() is None, worker.report()
            try:
                got = scrape(port)
            except OSError:
                got = {}
            if sum(v for (name, _), v in got.items() if name == "streammon_events_total") == n_events \
                    and any(name == "streammon_checkpoint_age_seconds" for name, _ in got):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"the worker did not read the {n_events} events: {got}\n{worker.report()}")
        assert run_check(SERVICES["streammon"]["healthcheck"]["test"], **{":9108/": f":{port}/"}) == 0
    finally:
        worker.stop()
    assert worker.returncode == 0, worker.report()

    malformed = sum(1 for e in simulate(0, n_events=n_events) if not well_formed(e))
    rejected = sum(v for (name, labels), v in got.items()
                   if name == "streammon_events_total" and dict(labels)["outcome"] == "rejected")
    assert rejected == malformed > 0
    assert got[("streammon_dead_letters_total", (("monitor", "taxi"),))] == rejected  # so the dead-letter topic exists
    lags = {labels: v for (name, labels), v in got.items() if name == "streammon_consumer_lag"}
    assert len(lags) == 2 * int(topics_env["PARTITIONS"]) and set(lags.values()) == {0.0}


# -- the guide ----------------------------------------------------------------------------------------
def test_the_guides_kubernetes_manifests_fit_together():
    text = (ROOT / "docs" / "deployment.md").read_text()
    docs = [d for block in re.findall(r"```yaml\n(.*?)```", text, re.S) for d in yaml.safe_load_all(block) if d]
    by_kind = {d["kind"]: d for d in docs if "kind" in d}
    workload, service, monitor = by_kind["StatefulSet"], by_kind["Service"], by_kind["ServiceMonitor"]
    pod = workload["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    metrics = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert all(metrics.get(p["targetPort"]) == p["port"] for p in service["spec"]["ports"])
    args = _parser().parse_args([str(a) for a in container["args"]])
    assert args.metrics_port == metrics["metrics"] and args.metrics_host == "0.0.0.0"
    assert args.state_dir in {m["mountPath"] for m in container["volumeMounts"]}
    assert service["metadata"]["name"] == "streammon"  # the job name the StreammonDown rule looks for
    receivers = [d for d in docs if "receivers" in d]
    assert receivers and all(d["route"]["receiver"] in {r["name"] for r in d["receivers"]} for d in receivers)
