"""What the benchmarks run against: a free port, a bench database, the gateway's environment
(migrated and seeded), a server's readiness, the gateway's MQTT session. Plain blocking code,
outside Trio; shared by bench/accept.py and bench/inbound.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
from common import BenchError  # bench/ is on sys.path when run as a script

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_db(url: str, name: str) -> str:
    """The same server, database ``name``."""
    return psycopg.conninfo.make_conninfo(url, dbname=name)


@contextlib.contextmanager
def bench_database(admin_url: str, name: str) -> Iterator[str]:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield with_db(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def gateway_env(db_url: str, mqtt_url: str, topic_root: str, client_id: str) -> dict[str, str]:
    """The environment a benchmarked gateway runs with (header auth, its own topic root and
    MQTT session, no other KOSMO_* setting), once ``kosmo migrate`` and ``kosmo seed`` have run
    with it on the bench database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    env.update(KOSMO_DATABASE_URL=db_url, KOSMO_MQTT_URL=mqtt_url, KOSMO_AUTH_MODE="header",
               KOSMO_MQTT_TOPIC_ROOT=topic_root, KOSMO_MQTT_CLIENT_ID=client_id,
               KOSMO_LOG_LEVEL="WARNING")
    for command in ("migrate", "seed"):
        done = subprocess.run([str(BIN / "kosmo"), command], env=env,
                              capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise BenchError(f"kosmo {command} failed:\n{done.stderr.decode()}")
    return env


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_ready(name: str, proc: subprocess.Popen[bytes], url: str, log: Path, *,
               any_answer: bool, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 2xx (or anything, with ``any_answer``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode}:\n{tail(log)}")
        try:
            with _NO_PROXY.open(url, timeout=2):
                return
        except urllib.error.HTTPError as exc:
            exc.close()
            if any_answer:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"{name} not ready within {timeout:.0f} s:\n{tail(log)}")


def forget_mqtt_session(mqtt_url: str, client_id: str) -> None:
    """Drop the gateway's persistent session from the broker (a clean-session connect)."""
    from paho.mqtt.client import Client
    from paho.mqtt.enums import CallbackAPIVersion

    from kosmo.config import MqttEndpoint

    endpoint = MqttEndpoint.from_url(mqtt_url)
    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls:
        client.tls_set()
    try:
        client.connect(endpoint.host, endpoint.port)
        deadline = time.monotonic() + 3
        while not client.is_connected() and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        client.disconnect()
    except OSError as exc:
        print(f"could not drop the MQTT session {client_id!r}: {exc}", file=sys.stderr)
