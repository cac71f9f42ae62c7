"""Property: for any interleaving of sends, reports, duplicates and expiry, each user's quota
usage equals the number of their messages that reached the air or are still in flight.

Runs the ledger's SQL against the real PostgreSQL, one transaction per step, with a model.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from kosmo.delivery import Report, Status
from kosmo.ledger_store import Accepted, accept_sends, apply_reports
from kosmo.messages import NewMessage, StatusReport
from tests.conftest import GUARDIAN, SANCTUARY, WANDERER

USERS = [WANDERER, GUARDIAN, SANCTUARY]
NODES = ["!a1b2c3d4", "!deadbeef"]
REPORTS = [Status.QUEUED, Status.TRANSMITTED, Status.DELIVERED, Status.FAILED]
IN_FLIGHT = {"pending", "queued", "transmitted", "delivered"}


class QuotaMachine(RuleBasedStateMachine):
    messages = Bundle("messages")

    def __init__(self, url: str) -> None:
        super().__init__()
        self.conn = psycopg.connect(url)
        self.applied: list[StatusReport] = []
        self.sent: dict[uuid.UUID, uuid.UUID] = {}  # message -> user

    @initialize()
    def fresh(self) -> None:
        with self.conn.transaction():
            self.conn.execute("TRUNCATE messages, message_status_history, quota_usage")
            self.conn.execute("UPDATE subscriptions SET quota_override = 3"
                              " WHERE user_id = %s", (WANDERER,))

    def teardown(self) -> None:
        self.conn.close()

    def _now(self) -> datetime:
        return datetime.now(UTC)

    @rule(target=messages, user=st.sampled_from(USERS), node=st.sampled_from(NODES))
    def send(self, user: uuid.UUID, node: str) -> Any:
        now = self._now()
        message = NewMessage(uuid.uuid4(), user, node, "x", now, now + timedelta(hours=1))
        with self.conn.transaction():
            [result], _ = accept_sends(self.conn, [message], now)
        if isinstance(result, Accepted):
            self.sent[message.message_id] = user
            return message.message_id
        return None

    def _apply(self, *reports: StatusReport) -> None:
        with self.conn.transaction():
            apply_reports(self.conn, list(reports))
        self.applied.extend(reports)

    @rule(message=messages, status=st.sampled_from(REPORTS),
          reason=st.sampled_from([None, "MAX_RETRANSMIT", "NO_CHANNEL"]))
    def report(self, message: uuid.UUID | None, status: Status, reason: str | None) -> None:
        if message is not None:
            self._apply(StatusReport(message, Report(status, reason), self._now()))

    @rule(message=messages)
    def expire(self, message: uuid.UUID | None) -> None:
        if message is not None:
            self._apply(StatusReport(message, Report(Status.EXPIRED, "ttl"), self._now()))

    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        if self.applied:
            self._apply(data.draw(st.sampled_from(self.applied)))

    @rule(data=st.data())
    def reordered_batch(self, data: st.DataObject) -> None:
        if self.applied:
            batch = data.draw(st.lists(st.sampled_from(self.applied), min_size=2, max_size=5))
            self._apply(*batch)

    @invariant()
    def usage_equals_messages_on_air_or_in_flight(self) -> None:
        rows = self.conn.execute("""
            SELECT m.user_id, m.status,
                   EXISTS (SELECT 1 FROM message_status_history h WHERE h.message_id = m.id
                           AND h.status = 'transmitted' AND NOT h.note) AS aired
            FROM messages m WHERE m.direction = 'outbound'""").fetchall()
        expected = dict.fromkeys(USERS, 0)
        for user, status, aired in rows:
            if status in IN_FLIGHT or (status == "failed" and aired):
                expected[user] += 1
        usage = dict(self.conn.execute(
            "SELECT user_id, sum(used) FROM quota_usage GROUP BY user_id").fetchall())
        self.conn.rollback()
        assert {u: int(usage.get(u, 0)) for u in USERS} == expected
        assert len(rows) == len(self.sent)
        assert expected[WANDERER] <= 3


def test_quota_usage_matches_messages_on_air_or_in_flight(database_url: str) -> None:
    run_state_machine_as_test(
        lambda: QuotaMachine(database_url),
        settings=settings(max_examples=40, stateful_step_count=30, deadline=None))
