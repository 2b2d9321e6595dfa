"""Kafka secrets off the command line: ``-X KEY=@FILE`` and ``STREAMMON_KAFKA_*`` variables, never echoed."""

from __future__ import annotations

import argparse
import logging

import pytest

from streammon.cli import main
from streammon.cli.kafka import environment_settings, kafka_option, kafka_settings
from streammon.errors import UsageError

APP = "tests/kafka_app.py:monitor"
SECRET = "0123456789"  # digits: it must stay text wherever it comes from a file


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "kafka-password"
    path.write_text(SECRET + "\n")  # as `echo` writes it
    path.chmod(0o600)
    return path


def test_a_value_at_a_file_is_its_text_without_the_trailing_newline(secret_file, tmp_path):
    assert kafka_option(f"sasl_plain_password=@{secret_file}") == ("sasl_plain_password", SECRET)
    crlf = tmp_path / "crlf"
    crlf.write_bytes(b"pa ss \r\n")  # inner and trailing spaces are part of a password
    assert kafka_option(f"sasl.password=@{crlf}") == ("sasl.password", "pa ss ")
    two = tmp_path / "two"
    two.write_text("x\n\n")
    assert kafka_option(f"k=@{two}") == ("k", "x\n")  # only one newline is taken off
    assert kafka_option("sasl_plain_password=@@not-a-file") == ("sasl_plain_password", "@not-a-file")
    assert kafka_option("session_timeout_ms=10000") == ("session_timeout_ms", 10000)  # unchanged: numbers converted


UNUSABLE = {"missing": None, "directory": None, "empty": b"", "latin1": b"\xe9t\xe9"}


@pytest.mark.parametrize("kind, message", [("missing", "the file does not exist"),
                                           ("directory", "cannot read the file: Is a directory"),
                                           ("empty", "the file is empty"), ("latin1", "the file is not UTF-8 text")])
def test_an_unusable_secret_file_is_a_usage_error_naming_it(tmp_path, capsys, kind, message):
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    elif UNUSABLE[kind] is not None:
        path.write_bytes(UNUSABLE[kind])
    with pytest.raises(SystemExit) as exit_:
        main(["run", APP, "--bootstrap-servers", "127.0.0.1:1", "-X", f"sasl_plain_password=@{path}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"-X sasl_plain_password=@{path}: {message}" in err and "Traceback" not in err, err


def test_environment_names_map_to_both_clients_settings():
    env = {
        "STREAMMON_KAFKA_SASL_PLAIN_PASSWORD": "pw",  # kafka-python: underscores stay
        "STREAMMON_KAFKA_SECURITY__PROTOCOL": "SASL_SSL",  # confluent-kafka: a double underscore is a dot
        "STREAMMON_KAFKA_SSL__KEY__LOCATION": "/etc/kafka/key.pem",
        "STREAMMON_KAFKA_SESSION_TIMEOUT_MS": "10000",
        "STREAMMON_TANSU": "/bin/tansu",  # not a Kafka setting
        "HOME": "/root",
    }
    assert environment_settings(env) == {"sasl_plain_password": "pw", "security.protocol": "SASL_SSL",
                                         "ssl.key.location": "/etc/kafka/key.pem", "session_timeout_ms": 10000}
    with pytest.raises(UsageError, match="STREAMMON_KAFKA_ names no setting"):
        environment_settings({"STREAMMON_KAFKA_": "x"})


def test_the_command_line_wins_over_the_environment_and_files_are_read_from_both(secret_file):
    args = argparse.Namespace(kafka_option=[kafka_option("session_timeout_ms=2000"),
                                            kafka_option(f"sasl_plain_username=@{secret_file}")])
    env = {"STREAMMON_KAFKA_SESSION_TIMEOUT_MS": "10000", "STREAMMON_KAFKA_SASL_PLAIN_USERNAME": "from-env",
           "STREAMMON_KAFKA_SASL_PLAIN_PASSWORD": f"@{secret_file}"}
    assert kafka_settings(args, env) == {"session_timeout_ms": 2000, "sasl_plain_username": SECRET,
                                         "sasl_plain_password": SECRET}
    with pytest.raises(UsageError, match=r"\$STREAMMON_KAFKA_SASL_PLAIN_PASSWORD=@/nope: the file does not exist"):
        kafka_settings(argparse.Namespace(kafka_option=[]), {"STREAMMON_KAFKA_SASL_PLAIN_PASSWORD": "@/nope"})


def test_environment_settings_reach_either_client_and_no_secret_is_printed(monkeypatch, capsys, caplog, secret_file):
    caplog.set_level(logging.INFO, logger="streammon")
    monkeypatch.setenv("STREAMMON_KAFKA_SASL_PLAIN_PASSWORD", SECRET)
    monkeypatch.setenv("STREAMMON_KAFKA_NO_SUCH_SETTING", "1")  # the client's refusal proves the variable reached it
    code = main(["run", APP, "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "Unrecognized configs: {'no_such_setting'}" in err, err
    assert "Kafka settings from the environment: no_such_setting, sasl_plain_password" in caplog.text
    monkeypatch.delenv("STREAMMON_KAFKA_SASL_PLAIN_PASSWORD")
    monkeypatch.delenv("STREAMMON_KAFKA_NO_SUCH_SETTING")
    monkeypatch.setenv("STREAMMON_KAFKA_NO__SUCH__SETTING", "1")
    code = main(["run", APP, "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "0", "--kafka-client", "confluent",
                 "-X", f"sasl.password=@{secret_file}"])
    err = capsys.readouterr().err
    assert code == 1 and 'No such configuration property: "no.such.setting"' in err, err
    assert SECRET not in err + caplog.text


def test_produce_reads_a_secret_file_too_and_never_echoes_it(tmp_path, capsys, secret_file):
    events = tmp_path / "events.jsonl"
    events.write_text('{"id": "a", "ts": 1, "prediction": 1}\n')
    code = main(["produce", str(events), "--bootstrap-servers", "127.0.0.1:1", "-X", f"sasl_plain_pasword=@{secret_file}"])
    err = capsys.readouterr().err
    assert code == 2 and "'sasl_plain_pasword' is not a kafka-python producer setting" in err, err
    assert SECRET not in err
