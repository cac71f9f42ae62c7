"""Generic plans where they cannot go wrong: the ledger's subscription check and its writes
from arrays are planned once per connection; a lookup in a table that grows with the traffic
(the idempotency answers' update), and every statement after the ledger's, keep PostgreSQL's
own choice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from kosmo import idempotency
from kosmo.db import default_plans, generic_plans
from kosmo.ledger_store import Accepted, accept_sends
from kosmo.messages import NewMessage
from tests.conftest import WANDERER

RUNS = 12  # psycopg prepares a query at its 5th run


def _setting(conn: psycopg.Connection) -> str:
    return conn.execute("SHOW plan_cache_mode").fetchone()[0]


def test_the_setting_lasts_until_set_back_or_the_transaction_ends(database_url: str):
    with psycopg.connect(database_url) as conn:
        before = _setting(conn)
        generic_plans(conn)
        assert _setting(conn) == "force_generic_plan"
        default_plans(conn)
        assert _setting(conn) == before
        generic_plans(conn)
        conn.commit()
        assert _setting(conn) == before


def _plans(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    return {statement: (generic, custom) for statement, generic, custom in conn.execute(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements").fetchall()}


def _plans_of(plans: dict[str, tuple[int, int]], fragment: str) -> tuple[int, int]:
    [found] = [counts for statement, counts in plans.items() if fragment in statement]
    return found


def _send(n: int) -> NewMessage:
    now = datetime.now(UTC)
    return NewMessage(uuid.uuid4(), WANDERER, "!a1b2c3d4", f"hello {n}", now,
                      now + timedelta(hours=1))


def test_the_check_and_the_writes_are_planned_once(database_url: str):
    with psycopg.connect(database_url) as conn:
        for n in range(RUNS):
            send = _send(n)
            [result], _ = accept_sends(conn, [send], send.created_at, commit=True)
            assert isinstance(result, Accepted)
        plans = _plans(conn)
    # Prepared at the 5th run, then run with its generic plan every time: never planned again.
    for fragment in ("INSERT INTO quota_usage", "UPDATE quota_usage",
                     "INSERT INTO message_status_history"):
        generic, custom = _plans_of(plans, fragment)
        assert custom == 0, (fragment, generic, custom)
        assert generic >= RUNS - 5, (fragment, generic, custom)


def test_the_answers_lookup_and_a_transaction_that_goes_on_keep_postgresqls_choice(
        database_url: str):
    with psycopg.connect(database_url) as conn:
        for n in range(RUNS):
            send = _send(n)
            claim = idempotency.claim(conn, WANDERER, f"key {n}", b"print", send.created_at)
            assert isinstance(claim, idempotency.Claim)
            [result], _ = accept_sends(conn, [send], send.created_at, [claim], commit=True)
            assert isinstance(result, Accepted)
        for n in range(RUNS):
            send = _send(n)
            [result], _ = accept_sends(conn, [send], send.created_at)
            assert isinstance(result, Accepted)
            assert _setting(conn) != "force_generic_plan"
            conn.commit()
        plans = _plans(conn)
    # Planned as PostgreSQL chooses: custom plans first.
    generic, custom = _plans_of(plans, "UPDATE idempotency_keys")
    assert custom > 0, (generic, custom)


def test_a_batch_all_refused_leaves_the_plan_choice_as_it_found_it(database_url: str):
    with psycopg.connect(database_url) as conn:
        before = _setting(conn)
        now = datetime.now(UTC)
        stranger = NewMessage(uuid.uuid4(), uuid.uuid4(), "!a1b2c3d4", "hello", now,
                              now + timedelta(hours=1))
        [result], _ = accept_sends(conn, [stranger], now)
        assert not isinstance(result, Accepted)
        assert _setting(conn) == before
