"""The webhook store under concurrency. Deleting a webhook while one of its attempts is being
recorded: the delete cascades through the deliveries, and the attempt, which waits for it,
records nothing and fails nothing (it used to fail the webhook actor with a foreign-key
violation). A claim never puts more than the per-webhook bound in flight, counting what this
process already has in flight."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from kosmo.webhook_store import Attempt, claim_due, record_attempt
from kosmo.webhooks import Outcome
from tests.conftest import SANCTUARY

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def test_an_attempt_recorded_while_its_webhook_is_deleted_records_nothing(
        database_url: str, sql: psycopg.Connection[Any]) -> None:
    hook = uuid.uuid4()
    sql.execute("INSERT INTO webhooks (id, user_id, url, events, secret, created_at)"
                " VALUES (%s, %s, 'https://example.org/h', '{*}', 'whsec_x', %s)",
                (hook, SANCTUARY, NOW))
    row = sql.execute("INSERT INTO webhook_deliveries (webhook_id, event_id, type, body, state,"
                      " next_attempt_at, created_at) VALUES (%s, 1, 'message.queued', '{}',"
                      " 'owed', %s, %s) RETURNING id", (hook, NOW, NOW)).fetchone()
    assert row is not None
    attempt = Attempt(row[0], hook, 1, NOW, 200, None, Outcome.DELIVERED, None)
    errors: list[BaseException] = []
    with psycopg.connect(database_url) as deleting, psycopg.connect(database_url) as recording:
        deleting.execute("DELETE FROM webhooks WHERE id = %s", (hook,))  # not committed yet

        def record() -> None:
            try:
                with recording.transaction():
                    record_attempt(recording, attempt)
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=record)
        worker.start()
        worker.join(0.5)
        assert worker.is_alive()  # it waits for the delete's transaction
        deleting.commit()
        worker.join(10)
        assert not worker.is_alive()
    assert errors == []
    assert sql.execute("SELECT count(*) FROM webhook_attempts").fetchone() == (0,)


def test_a_claim_counts_what_is_in_flight_towards_the_per_webhook_bound(
        sql: psycopg.Connection[Any], database_url: str) -> None:
    hooks = [uuid.uuid4(), uuid.uuid4()]
    for hook in hooks:
        sql.execute("INSERT INTO webhooks (id, user_id, url, events, secret, created_at)"
                    " VALUES (%s, %s, 'https://example.org/h', '{*}', 'whsec_x', %s)",
                    (hook, SANCTUARY, NOW))
        for event in range(6):
            sql.execute("INSERT INTO webhook_deliveries (webhook_id, event_id, type, body,"
                        " state, next_attempt_at, created_at) VALUES (%s, %s,"
                        " 'message.queued', '{}', 'owed', %s, %s)", (hook, event, NOW, NOW))
    with psycopg.connect(database_url) as conn:
        due = claim_due(conn, NOW, NOW + timedelta(minutes=1), 100, 4, {hooks[0]: 3})
    by_hook = Counter(d.webhook_id for d in due)
    assert by_hook == {hooks[0]: 1, hooks[1]: 4}  # 3 + 1 and 0 + 4: never beyond 4 each
