"""Webhooks in PostgreSQL: registrations, the events owed to them, and each attempt.

Rules:
- Only a user whose current subscription's plan has API access registers webhooks; a lapsed
  subscription of such a plan is ``INACTIVE``. ``entitlement`` says which.
- The history is turned into deliveries by one cursor row shared by every gateway process:
  ``enqueue_events`` locks it FOR UPDATE SKIP LOCKED (a process that finds it locked does
  nothing), reads the history after it one page at a time, writes one ``owed`` delivery per
  event and subscribed, enabled webhook of the event's user, and advances the cursor, all in
  one transaction. History ids follow commit order (``kosmo.events``), so nothing is skipped.
- ``claim_due`` leases owed deliveries whose time has come (FOR UPDATE SKIP LOCKED, so two
  processes never claim the same row) in a bounded page, at most ``per_webhook`` of one
  webhook, none of the webhooks the caller says are busy. A lease that runs out (its process
  died mid-attempt) makes the row due again: delivery is at least once.
- ``record_attempt`` writes the attempt and moves its delivery on (delivered, due again later,
  given up); 410 disables the webhook and gives up everything it was still owed. A delivery
  whose webhook was deleted meanwhile is simply gone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from kosmo import webhooks
from kosmo.clock import iso
from kosmo.events import encode_event_id, events_after
from kosmo.webhooks import Outcome

MAX_PER_USER = 20
LIST_LIMIT = 100


class Entitlement(enum.Enum):
    OK = "ok"
    NOT_ENTITLED = "plan-not-entitled"
    INACTIVE = "subscription-inactive"


@dataclass(frozen=True)
class Webhook:
    webhook_id: UUID
    url: str
    events: list[str]
    created_at: datetime
    disabled_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"webhook_id": str(self.webhook_id), "url": self.url, "events": self.events,
                "created_at": iso(self.created_at),
                "status": "active" if self.disabled_at is None else "disabled",
                "disabled_at": None if self.disabled_at is None else iso(self.disabled_at)}


@dataclass(frozen=True)
class Due:
    """A delivery leased for one attempt."""

    delivery_id: int
    webhook_id: UUID
    event_id: str
    body: str
    attempt: int  # the number of this attempt, from 1
    url: str
    secret: str


@dataclass(frozen=True)
class Enqueued:
    """What one ``enqueue_events`` did: ``owed`` deliveries written, and whether more history
    may wait after the page it read (``more``)."""

    owed: int = 0
    more: bool = False


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    webhook_id: UUID
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    outcome: Outcome
    next_attempt_at: datetime | None


def entitlement(conn: psycopg.Connection[Any], user: UUID, now: datetime) -> Entitlement:
    row = conn.execute("""
        SELECT p.api_access, s.status IN ('active', 'trialing')
               AND s.current_period_start <= %(now)s AND %(now)s < s.current_period_end
        FROM subscriptions s JOIN plans p ON p.code = s.plan_code
        WHERE s.user_id = %(user)s ORDER BY 2 DESC, s.current_period_end DESC LIMIT 1""",
        {"user": user, "now": now}).fetchone()
    if row is None or not row[0]:
        return Entitlement.NOT_ENTITLED
    return Entitlement.OK if row[1] else Entitlement.INACTIVE


_WEBHOOK = "id, url, events, created_at, disabled_at"


def create_webhook(conn: psycopg.Connection[Any], webhook_id: UUID, user: UUID, url: str,
                   events: list[str], secret: str, now: datetime) -> Webhook | None:
    """The new webhook, or None when the user already has ``MAX_PER_USER``."""
    conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user,))  # count, then insert
    count = conn.execute("SELECT count(*) FROM webhooks WHERE user_id = %s",
                         (user,)).fetchone()
    if count is not None and count[0] >= MAX_PER_USER:
        return None
    row = conn.execute(f"""
        INSERT INTO webhooks (id, user_id, url, events, secret, created_at)
        VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_WEBHOOK}""",
        (webhook_id, user, url, events, secret, now)).fetchone()
    assert row is not None
    return Webhook(*row)


def list_webhooks(conn: psycopg.Connection[Any], user: UUID) -> list[Webhook]:
    rows = conn.execute(f"SELECT {_WEBHOOK} FROM webhooks WHERE user_id = %s"
                        " ORDER BY created_at, id", (user,)).fetchall()
    return [Webhook(*row) for row in rows]


def delete_webhook(conn: psycopg.Connection[Any], user: UUID, webhook_id: UUID) -> bool:
    """Delete it with everything it was owed; False when the user has no such webhook."""
    deleted = conn.execute("DELETE FROM webhooks WHERE id = %s AND user_id = %s",
                           (webhook_id, user))
    return deleted.rowcount > 0


def list_attempts(conn: psycopg.Connection[Any], user: UUID, webhook_id: UUID,
                  limit: int = LIST_LIMIT) -> list[dict[str, Any]] | None:
    """The webhook's latest attempts, newest first; None when the user has no such webhook."""
    if conn.execute("SELECT 1 FROM webhooks WHERE id = %s AND user_id = %s",
                    (webhook_id, user)).fetchone() is None:
        return None
    rows = conn.execute("""
        SELECT d.event_id, d.type, a.attempt, a.status_code, a.error, a.at, a.next_attempt_at,
               a.outcome
        FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
        WHERE a.webhook_id = %s ORDER BY a.id DESC LIMIT %s""", (webhook_id, limit)).fetchall()
    return [{"event_id": encode_event_id(r[0]), "type": r[1], "attempt": r[2],
             "status_code": r[3], "error": r[4], "at": iso(r[5]),
             "next_attempt_at": None if r[6] is None else iso(r[6]), "outcome": r[7]}
            for r in rows]


def enqueue_events(conn: psycopg.Connection[Any], now: datetime, limit: int = 500) -> Enqueued:
    """Turn one page of history into deliveries; nothing owed and no ``more`` when there was
    nothing new (or another process holds the cursor)."""
    # Looking first, without the lock, keeps an idle poll a pair of reads.
    news = conn.execute("""SELECT EXISTS (SELECT 1 FROM message_status_history
                           WHERE id > (SELECT history_id FROM webhook_cursor))""").fetchone()
    if news is None or not news[0]:
        return Enqueued()
    row = conn.execute("SELECT history_id FROM webhook_cursor FOR UPDATE SKIP LOCKED").fetchone()
    if row is None:
        return Enqueued()
    events, last = events_after(conn, row[0], limit)
    if last == row[0]:
        return Enqueued()
    typed = [(t, e) for e in events if (t := webhooks.event_type(e)) is not None]
    users = list({e.user_id for _, e in typed})
    hooks: dict[UUID, list[tuple[UUID, list[str]]]] = {}
    if users:
        for hook_id, user, types in conn.execute(
                "SELECT id, user_id, events FROM webhooks"
                " WHERE user_id = ANY(%s) AND disabled_at IS NULL", (users,)).fetchall():
            hooks.setdefault(user, []).append((hook_id, types))
    owed = [(hook_id, int(e.event_id), t, webhooks.body(t, e), now)
            for t, e in typed for hook_id, types in hooks.get(e.user_id, [])
            if webhooks.wants(types, t)]
    if owed:
        with conn.cursor() as cur:
            cur.executemany("""
                INSERT INTO webhook_deliveries (webhook_id, event_id, type, body, state,
                                                next_attempt_at, created_at)
                VALUES (%s, %s, %s, %s, 'owed', %s, %s) ON CONFLICT DO NOTHING""",
                [(*o, now) for o in owed])
    conn.execute("UPDATE webhook_cursor SET history_id = %s", (last,))
    # ids are distinct and increasing: a page shorter than ``limit`` spans fewer ids, unless
    # the sequence skipped some (then one more read finds nothing, which is harmless)
    return Enqueued(len(owed), last - row[0] >= limit)


def claim_due(conn: psycopg.Connection[Any], now: datetime, lease_until: datetime, limit: int,
              per_webhook: int, in_flight: dict[UUID, int]) -> list[Due]:
    """Lease up to ``limit`` due deliveries, oldest first, at most ``per_webhook`` in flight per
    webhook counting those this process has in flight already (``in_flight``)."""
    rows = conn.execute("""
        WITH flying AS (
            SELECT * FROM unnest(%(flying_ids)s::uuid[], %(flying_n)s::integer[]) AS f (w, n)
        ), candidates AS (
            SELECT id FROM (
                SELECT d.id, d.next_attempt_at, d.webhook_id,
                       row_number() OVER (PARTITION BY d.webhook_id
                                          ORDER BY d.next_attempt_at, d.id) AS n
                FROM webhook_deliveries d
                WHERE d.state = 'owed' AND d.next_attempt_at <= %(now)s
                  AND (d.leased_until IS NULL OR d.leased_until < %(now)s)) c
            LEFT JOIN flying ON flying.w = c.webhook_id
            WHERE c.n <= %(per)s - COALESCE(flying.n, 0)
            ORDER BY next_attempt_at, id LIMIT %(limit)s
        ), locked AS (
            SELECT d.id FROM webhook_deliveries d
            WHERE d.id IN (SELECT id FROM candidates) AND d.state = 'owed'
              AND (d.leased_until IS NULL OR d.leased_until < %(now)s)
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_deliveries d SET leased_until = %(lease)s
        FROM locked, webhooks w
        WHERE d.id = locked.id AND w.id = d.webhook_id
        RETURNING d.id, d.webhook_id, d.event_id, d.body, d.attempts + 1, w.url, w.secret""",
        {"now": now, "lease": lease_until, "per": per_webhook, "limit": limit,
         "flying_ids": list(in_flight), "flying_n": list(in_flight.values())}).fetchall()
    return [Due(r[0], r[1], encode_event_id(r[2]), r[3], r[4], r[5], r[6]) for r in rows]


def record_attempt(conn: psycopg.Connection[Any], attempt: Attempt) -> None:
    a = attempt
    # Lock the delivery first: a webhook deleted meanwhile (its deliveries cascade) either
    # finished before (nothing to record) or waits for this transaction; never a foreign-key
    # violation from an attempt of a delivery that is gone.
    if conn.execute("SELECT 1 FROM webhook_deliveries WHERE id = %s AND state = 'owed'"
                    " FOR UPDATE", (a.delivery_id,)).fetchone() is None:
        return  # deleted with its webhook meanwhile, or already settled
    done = conn.execute("""
        INSERT INTO webhook_attempts (delivery_id, webhook_id, attempt, at, status_code, error,
                                      outcome, next_attempt_at)
        SELECT id, webhook_id, %s, %s, %s, %s, %s, %s FROM webhook_deliveries
        WHERE id = %s AND state = 'owed'""",
        (a.attempt, a.at, a.status_code, a.error, a.outcome.value, a.next_attempt_at,
         a.delivery_id))
    if done.rowcount == 0:
        return  # deleted with its webhook meanwhile
    state = {Outcome.DELIVERED: "delivered", Outcome.RETRYING: "owed"}.get(a.outcome, "given_up")
    conn.execute("""
        UPDATE webhook_deliveries SET state = %s, attempts = %s, next_attempt_at = %s,
                                      leased_until = NULL
        WHERE id = %s""", (state, a.attempt, a.next_attempt_at, a.delivery_id))
    if a.outcome is Outcome.DISABLED:
        conn.execute("UPDATE webhooks SET disabled_at = %s WHERE id = %s AND disabled_at IS NULL",
                     (a.at, a.webhook_id))
        conn.execute("""UPDATE webhook_deliveries SET state = 'given_up', next_attempt_at = NULL,
                        leased_until = NULL WHERE webhook_id = %s AND state = 'owed'""",
                     (a.webhook_id,))
