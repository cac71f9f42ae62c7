"""Shared fixtures: a fresh migrated database per test, a private topic root, a live gateway.

Real parts only: PostgreSQL and the MQTT broker are real servers (found on this machine or
started by ``tests.services``). Each test gets its own database, cloned from a migrated
template, and its own MQTT topic root, so tests never see each other's data.
A test fails if it logs an unexpected ERROR (mark it ``allow_error_logs`` when it expects one).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
import trio

from actors.gateway import Running, run_gateway
from kosmo import migrate, wire
from kosmo.config import Settings
from tests.mesh import FakeBridgeLink

pytest_plugins = ["tests.services"]

WANDERER = uuid.UUID("11111111-1111-1111-1111-111111111111")
GUARDIAN = uuid.UUID("22222222-2222-2222-2222-222222222222")
SANCTUARY = uuid.UUID("33333333-3333-3333-3333-333333333333")
FREE = uuid.UUID("44444444-4444-4444-4444-444444444444")
CANCELED = uuid.UUID("55555555-5555-5555-5555-555555555555")


def _with_db(url: str, name: str) -> str:
    """The same server URL pointing at database ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """A migrated and seeded database that each test clones."""
    name = f"kosmo_tpl_{os.getpid()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = _with_db(pg_admin_url, name)
    migrate.migrate(url)
    migrate.seed(url)
    yield name
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def fresh_database(admin_url: str, template: str | None = None) -> Iterator[str]:
    """A new database (a copy of ``template``, or empty) for one test, dropped afterwards."""
    name = f"kosmo_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    try:
        yield _with_db(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    with fresh_database(pg_admin_url, template_db) as url:
        yield url


@pytest.fixture
def sql(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection to the test's database, for setup and assertions."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def topic_root() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(database_url: str, mqtt_url: str, topic_root: str) -> Settings:
    from kosmo.config import MqttEndpoint

    return Settings(
        database_url=database_url, mqtt_url=MqttEndpoint.from_url(mqtt_url),
        mqtt_topic_root=topic_root, mqtt_client_id=f"gw-{topic_root}",
        http_bind=("127.0.0.1", 0), auth_mode="header", db_pool_size=4)


@dataclass
class Gateway:
    running: Running
    shutdown: trio.Event
    url: str
    client: httpx.AsyncClient

    async def send(self, user: uuid.UUID, node: str = "!a1b2c3d4", text: str = "hello",
                   **kw: Any) -> httpx.Response:
        return await self.client.post("/api/v1/messages", headers={"X-User-ID": str(user)},
                                      json={"target_node_id": node, "text": text}, **kw)

    async def get(self, path: str, user: uuid.UUID | None, **kw: Any) -> httpx.Response:
        headers = {"X-User-ID": str(user)} if user else {}
        return await self.client.get(path, headers=headers, **kw)


@asynccontextmanager
async def start_gateway(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[Gateway]:
    shutdown = trio.Event()
    running: Running = await nursery.start(run_gateway, settings, shutdown)
    url = running.binds[0]
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield Gateway(running, shutdown, url, client)
    shutdown.set()


@pytest.fixture
async def gateway(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[Gateway]:
    async with start_gateway(nursery, settings) as gw:
        yield gw


class Subscriber:
    """A plain paho client on its own thread, collecting what the gateway publishes."""

    def __init__(self, url: str, topic: str) -> None:
        from kosmo.config import MqttEndpoint

        endpoint = MqttEndpoint.from_url(url)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        # A persistent session: what is published while it reconnects is kept for it.
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                   client_id=f"sub-{uuid.uuid4().hex[:8]}", clean_session=False)
        self._client.reconnect_delay_set(0.05, 0.5)
        subscribed = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def on_connect(client: paho.Client, *_: Any) -> None:
            client.subscribe(topic, qos=1)

        def on_subscribe(*_: Any) -> None:
            trio.from_thread.run_sync(subscribed.set, trio_token=token)

        def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            self.messages.append((msg.topic, json.loads(msg.payload)))

        self._client.on_connect = on_connect
        self._client.on_subscribe = on_subscribe
        self._client.on_message = on_message
        self._client.connect(endpoint.host, endpoint.port)
        self._client.loop_start()
        self.subscribed = subscribed

    async def wait_for(self, count: int, timeout: float = 10) -> list[tuple[str, dict[str, Any]]]:
        with trio.fail_after(timeout):
            while len(self.messages) < count:
                await trio.sleep(0.01)
        return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@asynccontextmanager
async def subscribed(url: str, topic: str) -> AsyncIterator[Subscriber]:
    """A subscriber to ``topic`` that is really subscribed before the body runs."""
    sub = Subscriber(url, topic)
    try:
        with trio.fail_after(10):
            await sub.subscribed.wait()
        yield sub
    finally:
        sub.close()


FAKE_BRIDGE = "!b0000001"
ONLINE = {"credit": 100_000, "min_gap_s": 0.0}  # takes every message at once


@pytest.fixture
def online_bridge(mqtt_url: str, topic_root: str) -> Iterator[FakeBridgeLink]:
    """A bridge as the gateway sees it: online (its retained state), with a credit so large
    that the gateway hands it every message at once. Nothing reads its topic unless a test
    subscribes (``subscriber``)."""
    link = FakeBridgeLink(mqtt_url, topic_root, FAKE_BRIDGE)
    link.state("online", ONLINE)
    yield link
    link.close()


@pytest.fixture
async def subscriber(mqtt_url: str, topic_root: str, online_bridge: FakeBridgeLink
                     ) -> AsyncIterator[Subscriber]:
    """What the gateway hands to ``online_bridge``, on that bridge's topic."""
    async with subscribed(mqtt_url, wire.outbound_filter(topic_root, FAKE_BRIDGE)) as sub:
        yield sub


@pytest.fixture(autouse=True)
def _fail_on_error_logs(request: pytest.FixtureRequest,
                        caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    if request.node.get_closest_marker("allow_error_logs"):
        return
    errors = [r for when in ("setup", "call", "teardown")
              for r in caplog.get_records(when) if r.levelno >= logging.ERROR]  # type: ignore[arg-type]
    if errors:
        pytest.fail("unexpected ERROR logs:\n" + "\n".join(
            f"{r.name}: {r.getMessage()}" for r in errors), pytrace=False)


def db_value(conn: psycopg.Connection[Any], query: str, *args: Any) -> Any:
    row = conn.execute(query, args).fetchone()
    return None if row is None else row[0]
