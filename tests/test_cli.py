"""The command line: help that explains, one clear line for a bad setting, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from kosmo import config

KOSMO = [sys.executable, "-m", "kosmo"]


def run(*args: str, env: dict[str, str] | None = None,
        args_timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    return subprocess.run([*KOSMO, *args], env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=args_timeout)


def test_help_lists_commands_and_settings():
    top = run("--help")
    assert top.returncode == 0
    for command in ["migrate", "seed", "gateway", "up"]:
        assert command in top.stdout
    gateway = run("gateway", "--help")
    for option in config.OPTIONS.values():
        assert option.env in gateway.stdout


@pytest.mark.parametrize(("env", "args", "expected"), [
    ({}, ["migrate"], "KOSMO_DATABASE_URL is not set"),
    ({"KOSMO_DATABASE_URL": "mysql://x"}, ["migrate"], "KOSMO_DATABASE_URL is invalid"),
    ({"KOSMO_DATABASE_URL": "postgresql://u@h/db", "KOSMO_MESSAGE_TTL": "soon"}, ["gateway"],
     "KOSMO_MESSAGE_TTL is invalid"),
    ({"KOSMO_DATABASE_URL": "postgresql://u@h/db", "KOSMO_MQTT_URL": "http://x"}, ["gateway"],
     "KOSMO_MQTT_URL is invalid"),
    ({"KOSMO_DATABASE_URL": "postgresql://u@h/db", "KOSMO_HTTP_BIND": "nowhere"}, ["gateway"],
     "KOSMO_HTTP_BIND is invalid"),
    ({"KOSMO_DATABASE_URL": "postgresql://u@h/db", "KOSMO_AUTH_MODE": "open"}, ["gateway"],
     "KOSMO_AUTH_MODE is invalid"),
    ({"KOSMO_DATABASE_URL": "postgresql://u@h/db"}, ["gateway"], "KOSMO_JWT_SECRET is not set"),
    ({"KOSMO_DATABASE_URL": "postgresql://u@h/db", "KOSMO_MAX_CONVERSATIONS": "0"}, ["gateway"],
     "KOSMO_MAX_CONVERSATIONS is invalid"),
    ({"KOSMO_DATABASE_URL": "postgresql://u@h/db", "KOSMO_HTTP_READ_TIMEOUT": "0s"}, ["gateway"],
     "KOSMO_HTTP_READ_TIMEOUT is invalid"),
    ({"KOSMO_DATABASE_URL": "postgresql://u@h/db", "KOSMO_AUTH_MODE": "header"},
     ["gateway", "--max-text-bytes", "-3"], "--max-text-bytes is invalid"),
])
def test_bad_setting_is_one_line_and_exit_2(env, args, expected):
    result = run(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kosmo: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_password_is_not_echoed_in_errors():
    result = run("migrate", env={"KOSMO_DATABASE_URL": "mysql://u:hunter2@h/db"})
    assert "hunter2" not in result.stderr
    assert "***" in result.stderr


def test_unreachable_database_is_one_line_and_exit_1():
    result = run("migrate", env={"KOSMO_DATABASE_URL":
                                 "postgresql://postgres@127.0.0.1:1/x?connect_timeout=2"})
    assert result.returncode == 1
    assert result.stderr.strip().startswith("kosmo: error: cannot reach the database")
    assert len(result.stderr.strip().splitlines()) == 1


def test_gateway_stops_cleanly_on_sigterm(database_url: str, mqtt_url: str, topic_root: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    env.update(KOSMO_DATABASE_URL=database_url, KOSMO_MQTT_URL=mqtt_url,
               KOSMO_AUTH_MODE="header", KOSMO_HTTP_BIND="127.0.0.1:0",
               KOSMO_MQTT_TOPIC_ROOT=topic_root, KOSMO_MQTT_CLIENT_ID=f"gw-{topic_root}")
    with subprocess.Popen([*KOSMO, "gateway"], env=env, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "gateway listening on" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=15) == 0
    assert "Traceback" not in rest
    assert "shutting down" in rest


def test_gateway_with_unreachable_database_is_one_line_and_exit_1():
    result = run("gateway", env={"KOSMO_DATABASE_URL":
                                 "postgresql://postgres@127.0.0.1:1/x?connect_timeout=1",
                                 "KOSMO_AUTH_MODE": "header", "KOSMO_HTTP_BIND": "127.0.0.1:0",
                                 "KOSMO_START_TIMEOUT": "2s"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("kosmo: error: cannot reach the database")
    assert "Traceback" not in result.stderr


def test_bad_log_level_is_one_line():
    result = run("migrate", env={"KOSMO_LOG_LEVEL": "LOUD"})
    assert result.returncode == 2
    assert "KOSMO_LOG_LEVEL is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_while_waiting_for_the_broker_stops_at_once(database_url: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    env.update(KOSMO_DATABASE_URL=database_url, KOSMO_MQTT_URL="mqtt://127.0.0.1:1",
               KOSMO_AUTH_MODE="header", KOSMO_HTTP_BIND="127.0.0.1:0")
    with subprocess.Popen([*KOSMO, "gateway"], env=env, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "MQTT" in line and "WARNING" in line:  # a first failed connection attempt
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=10) == 0
    assert "stopping before the gateway was ready" in rest
    assert "Traceback" not in rest


@pytest.mark.parametrize("url", ["host=127.0.0.1 port=1 password=hunter2 dbname=x",
                                 "postgresql://u@127.0.0.1:1/x?password=hunter2",
                                 "postgresql://u:hunter2@127.0.0.1:1/x"])
def test_database_password_never_reaches_the_logs(url):
    result = run("gateway", env={"KOSMO_DATABASE_URL": url, "KOSMO_AUTH_MODE": "header",
                                 "KOSMO_HTTP_BIND": "127.0.0.1:0", "KOSMO_START_TIMEOUT": "1s"})
    assert result.returncode == 1
    assert "hunter2" not in result.stderr
    assert "***" in result.stderr  # the settings line was logged, redacted
