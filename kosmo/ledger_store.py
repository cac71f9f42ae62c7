"""The ledger's SQL: check, debit and store sends; apply delivery reports and refunds.

Rules:
- Everything here runs inside the caller's transaction (``Database.run``): a batch of sends
  (or of reports) commits together or not at all, so a message is never stored without its
  debit nor debited without its row.
- The debit is a conditional upsert on ``quota_usage`` (``used < limit``). PostgreSQL re-checks
  the condition on the locked row, so the rule stays exact when several gateway processes share
  one database: no check-then-write in process memory.
- A refund is guarded by ``messages.charged``: the flag is cleared and the usage decremented in
  one transaction, so no message is refunded twice, whatever the reports.
- History rows are appended through ``record_history``, which assigns their ids (event ids)
  in commit order.
- Subscription and plan rules live in ``kosmo.domain``; state transitions in ``kosmo.delivery``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg

from kosmo import delivery
from kosmo.delivery import Report, Status
from kosmo.domain import Quota, Refusal, Scope, Subscription, check_scope
from kosmo.events import Event, lock_event_order, make_event


@dataclass(frozen=True)
class NewMessage:
    message_id: UUID
    user_id: UUID
    node_id: str
    text: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Accepted:
    message: NewMessage
    quota: Quota


@dataclass(frozen=True)
class Refused:
    refusal: Refusal
    quota: Quota | None = None


@dataclass(frozen=True)
class StatusReport:
    message_id: UUID
    report: Report
    at: datetime
    packet_id: int | None = None
    bridge_id: str | None = None


@dataclass(frozen=True)
class Applied:
    """What a report did. ``message`` is None when the message id is unknown."""

    report: StatusReport
    transition: delivery.Transition | None
    user_id: UUID | None = None
    node_id: str | None = None


_SUBSCRIPTIONS = """
SELECT DISTINCT ON (s.user_id)
       s.user_id, p.code, p.scope, s.status, s.current_period_start, s.current_period_end,
       COALESCE(s.quota_override, p.monthly_quota)
FROM subscriptions s JOIN plans p ON p.code = s.plan_code
WHERE s.user_id = ANY(%(users)s)
ORDER BY s.user_id,
         (s.status IN ('active', 'trialing')
          AND s.current_period_start <= %(now)s AND %(now)s < s.current_period_end) DESC,
         s.current_period_end DESC
"""

_DEBIT = """
INSERT INTO quota_usage AS q (user_id, period_start, period_end, used)
VALUES (%(user)s, %(start)s, %(end)s, 1)
ON CONFLICT (user_id, period_start) DO UPDATE SET used = q.used + 1
WHERE %(limit)s::integer IS NULL OR q.used < %(limit)s::integer
RETURNING used
"""

_INSERT_MESSAGE = """
INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at, updated_at,
                      expires_at, debit_period_start, charged)
VALUES (%s, 'outbound', %s, %s, %s, 'pending', %s, %s, %s, %s, true)
"""

_INSERT_HISTORY = """
INSERT INTO message_status_history (message_id, user_id, status, reason, note, at)
VALUES (%s, %s, %s, %s, %s, %s) RETURNING id
"""


@dataclass(frozen=True)
class HistoryRow:
    """One status-history line to write, with what its event needs to say."""

    message_id: UUID
    user_id: UUID | None
    direction: str
    node_id: str
    text: str
    created_at: datetime
    status: str
    reason: str | None
    at: datetime
    note: bool = False


def record_history(conn: psycopg.Connection, rows: list[HistoryRow]) -> list[Event]:
    """Append history rows (ids in commit order); return the events of those a user sees."""
    if not rows:
        return []
    lock_event_order(conn)
    events: list[Event] = []
    with conn.cursor() as cur:
        cur.executemany(_INSERT_HISTORY, [
            (r.message_id, r.user_id, r.status, r.reason, r.note, r.at) for r in rows],
            returning=True)
        for row in rows:
            history_id = cur.fetchone()[0]  # type: ignore[index]
            cur.nextset()
            if row.user_id is not None and not row.note:
                events.append(make_event(
                    history_id, row.user_id, message_id=row.message_id,
                    direction=row.direction, node_id=row.node_id, text=row.text,
                    created_at=row.created_at, status=row.status, reason=row.reason, at=row.at))
    return events


def _subscriptions(conn: psycopg.Connection, users: list[UUID],
                   now: datetime) -> dict[UUID, Subscription]:
    rows = conn.execute(_SUBSCRIPTIONS, {"users": users, "now": now}).fetchall()
    return {
        row[0]: Subscription(user_id=row[0], plan=row[1], scope=Scope(row[2]), status=row[3],
                             period_start=row[4], period_end=row[5], quota_limit=row[6])
        for row in rows
    }


def _whitelist(conn: psycopg.Connection, pairs: set[tuple[UUID, str]]) -> set[tuple[UUID, str]]:
    if not pairs:
        return set()
    users, nodes = zip(*pairs, strict=True)
    rows = conn.execute(
        "SELECT user_id, node_id FROM node_whitelist"
        " WHERE (user_id, node_id) IN (SELECT * FROM unnest(%s::uuid[], %s::text[]))",
        (list(users), list(nodes))).fetchall()
    return {(row[0], row[1]) for row in rows}


def _used(conn: psycopg.Connection, sub: Subscription) -> int:
    row = conn.execute("SELECT used FROM quota_usage WHERE user_id = %s AND period_start = %s",
                       (sub.user_id, sub.period_start)).fetchone()
    return 0 if row is None else int(row[0])


def accept_sends(conn: psycopg.Connection, sends: list[NewMessage],
                 now: datetime) -> tuple[list[Accepted | Refused], list[Event]]:
    """Check, debit and store each send, in order; one result per send, and the events."""
    if not sends:
        return [], []
    subs = _subscriptions(conn, list({s.user_id for s in sends}), now)
    guarded = {(s.user_id, s.node_id) for s in sends
               if (sub := subs.get(s.user_id)) and sub.scope is Scope.WHITELIST}
    whitelisted = _whitelist(conn, guarded)
    results: list[Accepted | Refused] = []
    stored: list[NewMessage] = []
    for send in sends:
        sub = subs.get(send.user_id)
        refusal = check_scope(sub, (send.user_id, send.node_id) in whitelisted, now)
        if refusal is not None or sub is None:
            results.append(Refused(refusal or Refusal.SUBSCRIPTION_INACTIVE))
            continue
        row = conn.execute(_DEBIT, {"user": send.user_id, "start": sub.period_start,
                                    "end": sub.period_end, "limit": sub.quota_limit}).fetchone()
        if row is None:
            quota = Quota(_used(conn, sub), sub.quota_limit, sub.period_end)
            results.append(Refused(Refusal.QUOTA_EXCEEDED, quota))
            continue
        results.append(Accepted(send, Quota(int(row[0]), sub.quota_limit, sub.period_end)))
        stored.append(send)
    if stored:
        with conn.cursor() as cur:
            cur.executemany(_INSERT_MESSAGE, [
                (m.message_id, m.user_id, m.node_id, m.text, m.created_at, m.created_at,
                 m.expires_at, subs[m.user_id].period_start) for m in stored])
    events = record_history(conn, [
        HistoryRow(m.message_id, m.user_id, "outbound", m.node_id, m.text, m.created_at,
                   Status.PENDING.value, None, m.created_at) for m in stored])
    return results, events


def apply_reports(conn: psycopg.Connection, reports: list[StatusReport]
                  ) -> tuple[list[Applied], list[Event]]:
    """Run each report through the delivery state machine; refund where it says so."""
    if not reports:
        return [], []
    if all(r.report.status is Status.QUEUED for r in reports):
        # Losing a ``queued`` mark in a crash is harmless (the outbox publishes the message
        # again and consumers dedupe), so these commits need not wait for the disk.
        conn.execute("SET LOCAL synchronous_commit = off")
    ids = list({r.message_id for r in reports})
    rows = conn.execute(
        "SELECT id, status, user_id, node_id, text, created_at FROM messages"
        " WHERE id = ANY(%s) AND direction = 'outbound' ORDER BY id FOR UPDATE",
        (ids,)).fetchall()
    current = {row[0]: (Status(row[1]), row[2], row[3]) for row in rows}
    texts = {row[0]: (row[4], row[5]) for row in rows}
    applied: list[Applied] = []
    history: list[HistoryRow] = []
    refunds: list[UUID] = []
    for item in reports:
        found = current.get(item.message_id)
        if found is None:
            applied.append(Applied(item, None))
            continue
        status, user_id, node_id = found
        transition = delivery.apply(status, item.report)
        text, created_at = texts[item.message_id]
        history.extend(HistoryRow(item.message_id, user_id, "outbound", node_id, text,
                                  created_at, e.status.value, e.reason, item.at, e.note)
                       for e in transition.history)
        if transition.changed:
            final_reason = transition.history[-1].reason
            conn.execute(
                "UPDATE messages SET status = %s, reason = %s, updated_at = %s,"
                " packet_id = COALESCE(%s, packet_id), bridge_id = COALESCE(%s, bridge_id)"
                " WHERE id = %s",
                (transition.after.value, final_reason, item.at, item.packet_id, item.bridge_id,
                 item.message_id))
            current[item.message_id] = (transition.after, user_id, node_id)
        if transition.refund:
            refunds.append(item.message_id)
        applied.append(Applied(item, transition, user_id, node_id))
    if refunds:
        _refund(conn, refunds)
    return applied, record_history(conn, history)


def _refund(conn: psycopg.Connection, message_ids: list[UUID]) -> None:
    """Give back one message each to the period it was debited in, once per message."""
    rows = conn.execute(
        "UPDATE messages SET charged = false WHERE id = ANY(%s) AND charged"
        " RETURNING user_id, debit_period_start", (message_ids,)).fetchall()
    per_period: dict[tuple[UUID, datetime], int] = {}
    for user_id, period_start in rows:
        per_period[(user_id, period_start)] = per_period.get((user_id, period_start), 0) + 1
    for (user_id, period_start), count in sorted(per_period.items()):  # one lock order
        conn.execute("UPDATE quota_usage SET used = used - %s"
                     " WHERE user_id = %s AND period_start = %s", (count, user_id, period_start))


def pending_messages(conn: psycopg.Connection, created_before: datetime,
                     limit: int = 10_000) -> list[NewMessage]:
    """Outbound messages still ``pending`` (stored, not yet acknowledged by the broker)."""
    rows = conn.execute(
        "SELECT id, user_id, node_id, text, created_at, expires_at FROM messages"
        " WHERE status = 'pending' AND created_at < %s ORDER BY created_at, id LIMIT %s",
        (created_before, limit)).fetchall()
    return [NewMessage(*row) for row in rows]


def expired_messages(conn: psycopg.Connection, now: datetime, limit: int = 1000) -> list[UUID]:
    """Outbound messages that did not reach the air before their ``expires_at``."""
    rows = conn.execute(
        "SELECT id FROM messages WHERE status IN ('pending', 'queued') AND expires_at <= %s"
        " ORDER BY expires_at LIMIT %s", (now, limit)).fetchall()
    return [row[0] for row in rows]


def pending_for_node(conn: psycopg.Connection, node_id: str, after: datetime,
                     limit: int) -> list[NewMessage]:
    """A node's ``pending`` messages created after ``after``, oldest first."""
    rows = conn.execute(
        "SELECT id, user_id, node_id, text, created_at, expires_at FROM messages"
        " WHERE status = 'pending' AND direction = 'outbound' AND node_id = %s"
        " AND created_at > %s ORDER BY created_at, id LIMIT %s",
        (node_id, after, limit)).fetchall()
    return [NewMessage(*row) for row in rows]
