"""The hand-over's order rule, statement by statement: a message is not claimed while an older
one of its (user, node) waits unoffered or is held by another bridge, whichever side of the
claiming bridge's id that bridge sorts on; a long delivered history does not count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from kosmo import locks
from kosmo.dispatch_store import claim
from kosmo.events import lock_event_order
from kosmo.process_store import register
from tests.conftest import SANCTUARY, WANDERER

NODE = "!a1b2c3d4"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def message(sql: psycopg.Connection[Any], user: UUID, age: float, status: str = "pending",
            bridge: str | None = None) -> UUID:
    """A message accepted ``age`` seconds before NOW; handed to ``bridge`` when given."""
    message_id = uuid4()
    at = NOW - timedelta(seconds=age)
    sql.execute(
        "INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at,"
        " updated_at, expires_at, debit_period_start, charged, handed_at, bridge_id)"
        " VALUES (%s, 'outbound', %s, %s, 'hi', %s, %s, %s, %s, %s, true, %s, %s)",
        (message_id, user, NODE, status, at, at, NOW + timedelta(hours=1),
         datetime(2026, 12, 1, tzinfo=UTC), at if bridge else None, bridge))
    return message_id


@pytest.fixture
def me(sql: psycopg.Connection[Any]) -> UUID:
    process_id = uuid4()
    register(sql, process_id, "order", "host", 1)
    sql.execute("INSERT INTO node_publishers (node_id, process_id) VALUES (%s, %s)",
                (NODE, process_id))
    return process_id


def handed(sql: psycopg.Connection[Any], offered: list[UUID], bridge: str, me: UUID
           ) -> list[UUID]:
    with sql.transaction():
        found = claim(sql, [(i, None) for i in offered], bridge, 100, NOW, me)
    assert found.locked
    return [m.message_id for m in found.handed]


@pytest.mark.parametrize("other", ["a0", "z9"])  # sorts before, and after, "m5"
def test_not_past_an_older_message_held_by_another_bridge(
        sql: psycopg.Connection[Any], me: UUID, other: str) -> None:
    message(sql, WANDERER, 30, "queued", bridge=other)
    newer = message(sql, WANDERER, 10)
    someone_else = message(sql, SANCTUARY, 5)  # another user's: not held back
    assert handed(sql, [newer, someone_else], "m5", me) == [someone_else]


def test_after_an_older_message_held_by_the_same_bridge(
        sql: psycopg.Connection[Any], me: UUID) -> None:
    message(sql, WANDERER, 30, "queued", bridge="m5")
    newer = message(sql, WANDERER, 10)
    assert handed(sql, [newer], "m5", me) == [newer]


def test_not_past_an_older_waiting_message_unless_offered_with_it(
        sql: psycopg.Connection[Any], me: UUID) -> None:
    older = message(sql, WANDERER, 30)
    newer = message(sql, WANDERER, 10)
    assert handed(sql, [newer], "m5", me) == []
    assert handed(sql, [older, newer], "m5", me) == [older, newer]


def test_a_finished_history_does_not_hold_anything_back(
        sql: psycopg.Connection[Any], me: UUID) -> None:
    for age, status in [(90, "delivered"), (80, "failed"), (70, "expired"), (60, "transmitted"),
                        (50, "canceled")]:
        message(sql, WANDERER, age, status, bridge="z9" if status != "canceled" else None)
    waiting = message(sql, WANDERER, 10)
    assert handed(sql, [waiting], "m5", me) == [waiting]


def test_a_claim_goes_ahead_while_another_transaction_writes_history(
        sql: psycopg.Connection[Any], me: UUID, database_url: str) -> None:
    # Writers of history hold the event-order lock to their commit; a hand-over has a lock of
    # its own (kosmo/locks.py), so it neither waits for them nor gives up its round.
    waiting = message(sql, WANDERER, 10)
    with psycopg.connect(database_url) as writer:
        lock_event_order(writer)  # its transaction stays open, holding the lock
        assert handed(sql, [waiting], "m5", me) == [waiting]
        writer.rollback()
    keys = [locks.MIGRATION, locks.EVENT_ORDER, locks.HAND_OVER]
    assert len(set(keys)) == len(keys)
