"""Pytest plugin: a PostgreSQL server and an MQTT broker for the tests.

Each fixture prefers a service the environment names, then one already running on its
standard local port, and only then starts an embedded one (see kosmo/embedded.py) for the
session. ``KOSMO_TEST_SERVICES=embedded`` skips the first two and always starts embedded ones.
The `find_*` helpers are plain functions so CI scripts can reuse them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from kosmo.embedded import Broker, mqtt_accepts, start_broker, start_postgres

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_MQTT_PORT = 1883


def postgres_can_create_databases(url: str) -> bool:
    """True if `url` connects quickly as a role that may CREATE DATABASE."""
    try:
        # libpq rounds connect_timeout up to 2 s; a closed local port fails at once.
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            row = conn.execute(
                "select rolsuper or rolcreatedb from pg_roles where rolname = current_user"
            ).fetchone()
    except psycopg.Error:
        return False
    return row is not None and bool(row[0])


def _embedded_only() -> bool:
    return os.environ.get("KOSMO_TEST_SERVICES") == "embedded"


def find_postgres() -> str | None:
    """$KOSMO_TEST_DATABASE_URL, else the local server on 5432 if usable, else None."""
    if _embedded_only():
        return None
    if url := os.environ.get("KOSMO_TEST_DATABASE_URL"):
        return url
    return LOCAL_POSTGRES_URL if postgres_can_create_databases(LOCAL_POSTGRES_URL) else None


def find_mqtt() -> str | None:
    """$KOSMO_TEST_MQTT_URL, else the local broker on 1883 if it answers, else None."""
    if _embedded_only():
        return None
    if url := os.environ.get("KOSMO_TEST_MQTT_URL"):
        return url
    if mqtt_accepts("127.0.0.1", LOCAL_MQTT_PORT, timeout=0.5):
        return f"mqtt://127.0.0.1:{LOCAL_MQTT_PORT}"
    return None


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server where tests may CREATE DATABASE."""
    if url := find_postgres():
        yield url
        return
    # Outside pytest's temp tree: pytest resets it to mode 0700 at every session start, and the
    # embedded server may run as another system user that must traverse the path.
    root = Path(tempfile.mkdtemp(prefix="kosmo-test-pg-"))
    server = start_postgres(root / "data")
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an MQTT broker shared by the session."""
    if url := find_mqtt():
        yield url
        return
    broker = start_broker(tmp_path_factory.mktemp("mqtt"))
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker process of the test's own on a free port; the test may stop and start it."""
    broker = start_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield broker
    finally:
        broker.stop()
