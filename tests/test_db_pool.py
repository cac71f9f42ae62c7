"""The pool's connections: every one runs its prepared statements with a generic plan, made
once, rather than planning them again at each run."""

from __future__ import annotations

import threading
import uuid

import psycopg
import trio

from kosmo.config import Settings
from kosmo.db import Database


def _plan_of_a_prepared_statement(conn: psycopg.Connection, barrier: threading.Barrier) -> str:
    barrier.wait(timeout=10)  # every caller holds a connection of its own at once
    name = f"probe_{uuid.uuid4().hex}"
    conn.execute(f"PREPARE {name} (uuid) AS SELECT status FROM messages WHERE id = $1")
    try:
        rows = conn.execute(f"EXPLAIN EXECUTE {name} ('{uuid.uuid4()}')").fetchall()
    finally:
        conn.execute(f"DEALLOCATE {name}")
    return "\n".join(row[0] for row in rows)


async def test_every_pooled_connection_uses_generic_plans(settings: Settings):
    db = Database(settings.database_url, size=3)
    await db.open()
    barrier = threading.Barrier(3)
    plans: list[str] = []

    async def probe() -> None:
        plans.append(await db.run(_plan_of_a_prepared_statement, barrier))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(probe)
    finally:
        await db.close()
    assert len(plans) == 3
    for plan in plans:
        # A custom plan would carry the value; the generic one keeps the parameter.
        assert "$1" in plan, plan
