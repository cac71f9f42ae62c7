"""The quota is exact under any concurrency, also with several ledgers on one database."""

from __future__ import annotations

import pytest
import trio

from actors.ledger import Ledger
from kosmo.db import Database
from kosmo.ledger_store import Accepted, Refused
from tests.conftest import SANCTUARY, WANDERER, Gateway, db_value

# Messages are handed to a bridge only while one is online: this one takes them all.
pytestmark = pytest.mark.usefixtures("online_bridge")


async def test_500_concurrent_sends_with_50_left_succeed_exactly_50_times(gateway: Gateway, sql):
    statuses: list[int] = []

    async def one(i: int) -> None:
        # A generous timeout: 500 requests at once on a shared two-core machine.
        response = await gateway.send(WANDERER, "!a1b2c3d4", f"msg {i}", timeout=120)
        statuses.append(response.status_code)

    async with trio.open_nursery() as nursery:
        for i in range(500):
            nursery.start_soon(one, i)

    assert statuses.count(201) == 50
    assert statuses.count(429) == 450
    assert db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s", WANDERER) == 50
    assert db_value(sql, "SELECT count(*) FROM messages WHERE user_id = %s", WANDERER) == 50
    assert db_value(sql, "SELECT count(*) FROM message_status_history"
                         " WHERE status = 'pending'") == 50
    assert gateway.running.ledger.batches < 500  # requests were grouped into transactions


async def test_two_ledgers_sharing_one_database_stay_exact(database_url: str, sql):
    sql.execute("UPDATE subscriptions SET quota_override = 37 WHERE user_id = %s", (WANDERER,))
    results: list[Accepted | Refused] = []

    async def no_dispatch(message: object) -> None:
        pass

    dbs = [Database(database_url, size=4) for _ in range(2)]
    async with trio.open_nursery() as nursery:
        ledgers = []
        for db in dbs:
            await db.open()
            ledger = Ledger(db, dispatch=no_dispatch, message_ttl=3600)
            await nursery.start(ledger.run)
            ledgers.append(ledger)

        async def one(ledger: Ledger) -> None:
            results.append(await ledger.send(WANDERER, "!a1b2c3d4", "x"))

        async with trio.open_nursery() as senders:
            for i in range(300):
                senders.start_soon(one, ledgers[i % 2])
        nursery.cancel_scope.cancel()
    for db in dbs:
        await db.close()

    assert sum(isinstance(r, Accepted) for r in results) == 37
    assert db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s", WANDERER) == 37
    assert db_value(sql, "SELECT count(*) FROM messages") == 37


async def test_a_burst_larger_than_every_queue_does_not_stall(gateway: Gateway, sql):
    # More sends than the ledger's, the router's and a node's queues hold together, all for
    # one node: conversation actors report ``queued`` back to the ledger while the ledger
    # waits for them to take more work. Nothing may wait in a circle.
    ledger = gateway.running.ledger
    results: list[object] = []

    async def one() -> None:
        results.append(await ledger.send(SANCTUARY, "!a1b2c3d4", "burst"))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(1500):
                nursery.start_soon(one)
        while db_value(sql, "SELECT count(*) FROM messages WHERE status = 'queued'") < 1500:
            await trio.sleep(0.05)
    assert sum(isinstance(r, Accepted) for r in results) == 1500
