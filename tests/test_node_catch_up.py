"""What a node actor that fell behind reads from the database (``pending_for_node``): every
message of its node handed to a bridge and not yet queued, in creation order, a page at a
time, whatever order they were handed over in; only where this process publishes the node."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from kosmo.ledger_store import pending_for_node
from tests.conftest import SANCTUARY, WANDERER

NODE = "!a1b2c3d4"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def insert(sql: psycopg.Connection[Any], user: uuid.UUID, created: datetime, *,
           node: str = NODE, handed: bool = True, status: str = "pending") -> uuid.UUID:
    message_id = uuid.uuid4()
    sql.execute(
        "INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at,"
        " updated_at, expires_at, handed_at, bridge_id)"
        " VALUES (%s, 'outbound', %s, %s, 'hi', %s, %s, %s, %s, %s, %s)",
        (message_id, user, node, status, created, created, created + timedelta(days=1),
         T0 if handed else None, "!b0000001" if handed else None))
    return message_id


def test_every_unacknowledged_message_in_creation_order_page_by_page(sql):
    me = uuid.uuid4()
    sql.execute("INSERT INTO node_publishers VALUES (%s, %s), ('!cafe0001', %s)",
                (NODE, me, uuid.uuid4()))
    # Two users' messages, stored in another order than created; two created at the same
    # instant (two processes' clocks), which their ids order.
    late = [insert(sql, SANCTUARY, T0 + timedelta(seconds=s)) for s in (4, 5, 6)]
    early = [insert(sql, SANCTUARY, T0 + timedelta(seconds=s)) for s in (1, 2)]
    tied = sorted(insert(sql, WANDERER, T0 + timedelta(seconds=3)) for _ in range(2))
    expected = early + tied + late
    insert(sql, WANDERER, T0, handed=False)  # waits for a bridge: the dispatcher's
    insert(sql, WANDERER, T0, status="queued")  # the broker has it
    insert(sql, WANDERER, T0, node="!cafe0001")  # another process publishes that node
    with psycopg.connect(sql.info.dsn) as conn:
        read, after = [], None
        while True:
            page = pending_for_node(conn, NODE, after, 2, me)
            read += [m.message_id for m in page]
            if len(page) < 2:
                break
            after = (page[-1].created_at, page[-1].message_id)
        assert read == expected
        assert pending_for_node(conn, NODE, None, 100, uuid.uuid4()) == []  # not its node
