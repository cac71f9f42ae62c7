"""A database outage: 503 with Retry-After while it lasts, /healthz stays up, recovery is
automatic, and nothing accepted before it is lost."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from kosmo import migrate
from kosmo.config import Settings
from kosmo.db import Database, DatabaseUnavailable
from kosmo.embedded import EmbeddedPostgres, start_postgres
from tests.conftest import WANDERER, start_gateway

# Messages are handed to a bridge only while one is online: this one takes them all.
pytestmark = pytest.mark.usefixtures("online_bridge")


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, so the test may stop and start it."""
    root = Path(tempfile.mkdtemp(prefix="kosmo-outage-"))
    server = start_postgres(root / "data")
    try:
        migrate.migrate(server.url)
        migrate.seed(server.url)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_outage_answers_503_and_recovers(nursery, settings: Settings,
                                               own_postgres: EmbeddedPostgres):
    settings = settings.replace(database_url=own_postgres.url, start_timeout=10.0)
    async with start_gateway(nursery, settings) as gateway:
        before = await gateway.send(WANDERER, text="before")
        assert before.status_code == 201

        await trio.to_thread.run_sync(own_postgres.stop)
        for response in [await gateway.send(WANDERER, text="during"),
                         await gateway.get("/api/v1/messages/conversations", WANDERER),
                         await gateway.get(before.headers["Location"], WANDERER)]:
            assert response.status_code == 503, response.text
            assert response.headers["Content-Type"] == "application/problem+json"
            assert int(response.headers["Retry-After"]) > 0
        assert (await gateway.client.get("/readyz")).status_code == 503
        assert (await gateway.client.get("/healthz")).status_code == 200

        restarted = await trio.to_thread.run_sync(start_postgres, own_postgres.data_dir)
        assert restarted.url == own_postgres.url
        with trio.fail_after(30):
            while (await gateway.client.get("/readyz")).status_code != 200:
                await trio.sleep(0.1)
        after = await gateway.send(WANDERER, text="after")
        assert after.status_code == 201, after.text
        listing = (await gateway.get("/api/v1/messages/conversations/!a1b2c3d4",
                                     WANDERER)).json()
        assert [m["text"] for m in listing["messages"]] == ["before", "after"]


def _one(conn) -> int:
    return conn.execute("SELECT 1").fetchone()[0]


async def test_a_down_database_fails_fast_and_one_probe_ends_the_outage(
        own_postgres: EmbeddedPostgres):
    db = Database(own_postgres.url, size=2, probe_interval=3600)
    await db.open()
    try:
        assert await db.run(_one) == 1
        await trio.to_thread.run_sync(own_postgres.stop)
        with pytest.raises(DatabaseUnavailable):
            await db.run(_one)
        assert db.down
        attempts = db.attempts
        for _ in range(20):  # within the probe interval: no call reaches the pool
            with pytest.raises(DatabaseUnavailable):
                await db.run(_one)
        assert db.attempts == attempts

        await trio.to_thread.run_sync(start_postgres, own_postgres.data_dir)
        db._probe_interval = 0.0
        db._next_probe = 0.0
        with trio.fail_after(30):
            while True:
                try:
                    assert await db.run(_one) == 1
                    break
                except DatabaseUnavailable:
                    await trio.sleep(0.1)
        assert not db.down
        assert await db.run(_one) == 1
    finally:
        await db.close()


async def test_a_watched_database_ends_the_outage_by_itself(nursery,
                                                            own_postgres: EmbeddedPostgres):
    db = Database(own_postgres.url, size=2, probe_interval=0.1)
    await db.open()
    try:
        await nursery.start(db.watch)
        await trio.to_thread.run_sync(own_postgres.stop)
        with pytest.raises(DatabaseUnavailable):
            await db.run(_one)
        attempts = db.attempts
        for _ in range(20):  # no call waits for a connection, none probes
            with pytest.raises(DatabaseUnavailable):
                await db.run(_one)
        assert db.attempts == attempts

        await trio.to_thread.run_sync(start_postgres, own_postgres.data_dir)
        with trio.fail_after(30):
            while db.down:  # nobody calls: the watcher's probe ends the outage
                await trio.sleep(0.05)
        assert db.probes > 0
        assert await db.run(_one) == 1
    finally:
        await db.close()


async def test_every_send_in_an_outage_gets_its_503_without_queueing(
        nursery, settings: Settings, own_postgres: EmbeddedPostgres):
    settings = settings.replace(database_url=own_postgres.url, start_timeout=10.0)
    async with start_gateway(nursery, settings) as gateway:
        db = gateway.running.db
        await trio.to_thread.run_sync(own_postgres.stop)
        assert (await gateway.send(WANDERER, text="first")).status_code == 503
        attempts = db.attempts
        statuses = [(await gateway.send(WANDERER, text=f"during {i}")).status_code
                    for i in range(10)]
        assert statuses == [503] * 10
        assert db.attempts == attempts  # answered without waiting for a connection

        await trio.to_thread.run_sync(start_postgres, own_postgres.data_dir)
        with trio.fail_after(30):
            while (await gateway.send(WANDERER, text="after")).status_code != 201:
                await trio.sleep(0.1)


async def test_a_transaction_rolled_back_by_the_server_runs_again(settings: Settings):
    # A deadlock is not an outage: the victim's transaction runs again, nothing was written.
    db = Database(settings.database_url, size=2)
    await db.open()
    calls: list[int] = []

    def victim(conn: psycopg.Connection) -> int:
        calls.append(conn.execute("SELECT 1").fetchone()[0])
        if len(calls) < 3:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return len(calls)

    try:
        assert await db.run(victim) == 3
        assert not db.down
    finally:
        await db.close()
