"""What the airtime bench runs against: the mesh's shape (three radios that overlap), the
regions, the bench's users in the database, the gateway process, the broker's cleanup. Plain
blocking code, outside Trio."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion
from servers import BIN  # bench/ is on sys.path

from kosmo.config import MqttEndpoint

HEAVY = uuid.UUID(int=0xB0000000_0000_4000_8000_000000000000)
PLANS = (("wanderer", 1), ("guardian", 2), ("sanctuary", 4))
RADIOS = ("A", "B", "C")
FINAL = ("delivered", "failed", "expired", "canceled")


def node(n: int) -> str:
    return f"!{0xCAFE0000 + n:08x}"


# Each radio: two nodes of its own, one shared with each other radio, one all three hear.
ALL_HEAR = node(99)
HEARS = {
    "A": [node(1), node(2), node(12), node(13), ALL_HEAR],
    "B": [node(3), node(4), node(12), node(23), ALL_HEAR],
    "C": [node(5), node(6), node(13), node(23), ALL_HEAR],
}
NODES = sorted({n for ns in HEARS.values() for n in ns})


@dataclass(frozen=True)
class Region:
    name: str
    preset: str
    time_scale: float
    deadline: float  # real seconds for a round's messages to end


REGIONS = {"US": Region("US", "LONG_FAST", 10.0, 120.0),
           "EU_868": Region("EU_868", "LONG_MODERATE", 300.0, 150.0)}


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    plan: str
    weight: int


def users(light: int) -> list[User]:
    return [User(HEAVY, "wanderer", 1)] + [
        User(uuid.UUID(int=0xB1000000_0000_4000_8000_000000000000 + i), *PLANS[i % 3])
        for i in range(light)]


def create_users(db_url: str, everyone: list[User]) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(db_url, autocommit=False) as conn:
        for u in everyone:
            conn.execute("INSERT INTO users (id, email) VALUES (%s, %s)",
                         (u.id, f"bench-{u.id}@example.org"))
            conn.execute(
                "INSERT INTO subscriptions (id, user_id, plan_code, status,"
                " current_period_start, current_period_end, quota_override)"
                " VALUES (%s, %s, %s, 'active', %s, %s, 1000000)",
                (uuid.uuid4(), u.id, u.plan, now - timedelta(days=1), now + timedelta(days=30)))
            if u.plan == "guardian":
                for n in NODES:
                    conn.execute("INSERT INTO node_whitelist (user_id, node_id) VALUES (%s, %s)",
                                 (u.id, n))


def forget_at_broker(endpoint: MqttEndpoint, client_id: str, retained: str) -> None:
    """Drop a bridge's persistent session and clear its retained state topic."""
    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls:
        client.tls_set()
    try:
        client.connect(endpoint.host, endpoint.port)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        client.publish(retained, b"", qos=1, retain=True).wait_for_publish(timeout=5)
        client.disconnect()
        client.loop_stop()
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"could not clean up {client_id!r} at the broker: {exc}", file=sys.stderr)


@contextlib.contextmanager
def gateway_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "kosmo"), "gateway"], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class Problems(logging.Handler):
    """Warnings and errors the bridges (and the library) log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
