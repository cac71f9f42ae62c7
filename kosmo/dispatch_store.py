"""The dispatcher's SQL: the waiting and held messages, coverage, and the hand-over claim.

Rules:
- A message *waits* while ``status = 'pending' AND handed_at IS NULL``; it is *held* by
  ``bridge_id`` from its claim (``handed_at`` set) until it reaches the air or ends
  (``status IN ('pending', 'queued')``). The database is the queue: the dispatcher's memory is
  rebuilt from these two reads, so a restart, another gateway process, a cancel or an expiry is
  seen at the next read.
- The claim is the one hand-over: ``handed_at`` is set at most once, only on a waiting message
  not yet past its expiry, under a transaction-scoped advisory lock that serializes the claims
  of every gateway process, and only while the bridge holds fewer than its credit (counted in
  the same transaction). So a message is handed to one bridge, once, and never moves after;
  the claim commits durably before anything is published.
- Order is the database's too: a message is not claimed while an older one of its (user, node)
  still waits or is held by another bridge. A message offered but not claimed is reported
  ``gone``; if it still waits, the next read brings it back.
- Estimates (``queue_position``, ``estimated_transmit_at``) are written only on rows that still
  wait; a claim clears the position.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from kosmo.messages import NewMessage
from kosmo.routing import Hearing

CLAIM_LOCK = 0x6B6F736D6F_01  # pg advisory lock key of the hand-over (any process)

# A waiting message, its size and its sender's plan weight (the current subscription's plan).
_WAITING = """
SELECT m.id, m.user_id, m.node_id, m.text, m.created_at, m.expires_at,
       octet_length(m.text), COALESCE(w.weight, 1)
FROM messages m
LEFT JOIN LATERAL (
    SELECT p.airtime_weight AS weight FROM subscriptions s JOIN plans p ON p.code = s.plan_code
    WHERE s.user_id = m.user_id
    ORDER BY (s.status IN ('active', 'trialing')) DESC, s.current_period_end DESC LIMIT 1
) w ON true
WHERE m.status = 'pending' AND m.handed_at IS NULL AND m.direction = 'outbound'
ORDER BY m.created_at, m.id LIMIT %s
"""

_HELD = """
SELECT id, bridge_id, user_id, node_id, created_at, octet_length(text) FROM messages
WHERE handed_at IS NOT NULL AND status IN ('pending', 'queued') AND direction = 'outbound'
ORDER BY handed_at, created_at, id
"""

_ESTIMATES = """
UPDATE messages AS m SET queue_position = x.p, estimated_transmit_at = x.e
FROM unnest(%s::uuid[], %s::integer[], %s::timestamptz[]) AS x (i, p, e)
WHERE m.id = x.i AND m.status = 'pending' AND m.handed_at IS NULL
"""


@dataclass(frozen=True)
class Waiting:
    """A message waiting for a bridge, with what its schedule needs."""

    message: NewMessage
    size: int  # UTF-8 bytes of its text
    weight: int  # its sender's plan weight


@dataclass(frozen=True)
class Held:
    """A message handed to ``bridge_id`` and not yet on air nor ended."""

    message_id: UUID
    bridge_id: str
    user_id: UUID
    node_id: str
    created_at: datetime
    size: int


@dataclass(frozen=True)
class Queue:
    waiting: list[Waiting]
    held: list[Held]


def load_queue(conn: psycopg.Connection[Any], limit: int) -> Queue:
    """The waiting messages (oldest first, at most ``limit``) and the held ones."""
    waiting = [Waiting(NewMessage(*row[:6]), row[6], row[7])
               for row in conn.execute(_WAITING, (limit,)).fetchall()]
    held = [Held(*row) for row in conn.execute(_HELD).fetchall()]
    return Queue(waiting, held)


def weight_of(conn: psycopg.Connection[Any], user_id: UUID) -> int:
    """The plan weight of the user's current subscription (1 without one)."""
    row = conn.execute(
        "SELECT p.airtime_weight FROM subscriptions s JOIN plans p ON p.code = s.plan_code"
        " WHERE s.user_id = %s ORDER BY (s.status IN ('active', 'trialing')) DESC,"
        " s.current_period_end DESC LIMIT 1", (user_id,)).fetchone()
    return int(row[0]) if row else 1


def load_hearings(conn: psycopg.Connection[Any], bridge_ids: list[str]) -> list[Hearing]:
    """Each of ``bridge_ids``' newest observation of every node it heard."""
    return [Hearing(*row) for row in conn.execute(
        "SELECT bridge_id, node_id, last_heard, snr, hops_away FROM coverage"
        " WHERE bridge_id = ANY(%s)", (bridge_ids,)).fetchall()]


@dataclass(frozen=True)
class Claimed:
    """What one claim did: the messages handed, in the order offered; those offered that no
    longer wait (canceled, expired, handed by another process); how many the bridge holds now.
    ``locked`` False: another gateway process was claiming; nothing was done, try again."""

    handed: list[NewMessage]
    gone: list[UUID]
    held: int
    locked: bool = True


# A message is claimed only while it waits, before its expiry, and never ahead of its own
# (user, node): no older one may still wait (unless offered in this claim) nor be held by
# another bridge. So one user's messages to one node go on air in the order they were
# accepted, whichever gateway process accepted or claims them.
_CLAIM = """
UPDATE messages AS m SET handed_at = %(now)s, bridge_id = %(bridge)s, queue_position = NULL,
       estimated_transmit_at = x.e
FROM unnest(%(ids)s::uuid[], %(etas)s::timestamptz[]) AS x (i, e)
WHERE m.id = x.i AND m.status = 'pending' AND m.handed_at IS NULL AND m.expires_at > %(now)s
  AND NOT EXISTS (
    SELECT 1 FROM messages o
    WHERE o.user_id = m.user_id AND o.node_id = m.node_id AND o.direction = 'outbound'
      AND (o.created_at, o.id) < (m.created_at, m.id) AND o.status IN ('pending', 'queued')
      AND ((o.handed_at IS NULL AND o.expires_at > %(now)s AND o.id <> ALL(%(ids)s::uuid[]))
           OR (o.handed_at IS NOT NULL AND o.bridge_id <> %(bridge)s)))
RETURNING m.id, m.user_id, m.node_id, m.text, m.created_at, m.expires_at
"""


def claim(conn: psycopg.Connection[Any], offered: list[tuple[UUID, datetime | None]],
          bridge_id: str, credit: int, now: datetime) -> Claimed:
    """Hand ``bridge_id`` the first of ``offered`` (id, estimated transmit time), in order, as
    far as its credit allows; one transaction."""
    with conn.pipeline():  # one round trip: the count is only used once the lock is held
        trying = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (CLAIM_LOCK,))
        counting = conn.execute(
            "SELECT count(*) FROM messages WHERE bridge_id = %s AND handed_at IS NOT NULL"
            " AND status IN ('pending', 'queued') AND direction = 'outbound'",
            (bridge_id,))
    locked = trying.fetchone()
    if not (locked and locked[0]):
        return Claimed([], [], 0, locked=False)
    counted = counting.fetchone()
    held = int(counted[0]) if counted else 0
    take = offered[:max(0, credit - held)]
    if not take:
        return Claimed([], [], held)
    rows = {row[0]: row for row in conn.execute(_CLAIM, {
        "now": now, "bridge": bridge_id, "ids": [i for i, _ in take],
        "etas": [e for _, e in take]}).fetchall()}
    handed = [NewMessage(*rows[i][:6], bridge_id=bridge_id)  # type: ignore[misc]
              for i, _ in take if i in rows]
    return Claimed(handed, [i for i, _ in take if i not in rows], held + len(handed))


def write_estimates(conn: psycopg.Connection[Any],
                    rows: list[tuple[UUID, int | None, datetime | None]]) -> None:
    """Set the position and estimate of messages that still wait (others are left alone)."""
    if rows:
        conn.execute("SET LOCAL synchronous_commit = off")  # advisory: rewritten each round
        conn.execute(_ESTIMATES, ([r[0] for r in rows], [r[1] for r in rows],
                                  [r[2] for r in rows]))
