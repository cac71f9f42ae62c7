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
- One publisher per node (``node_publishers``, sql/0009_publishers.sql): in the claim's
  transaction the offered messages' nodes without a publisher get the claiming process, and
  only messages of nodes it publishes are claimed. Those of a node another process publishes
  are reported ``others`` and left waiting for it; that process is woken by a notification on
  ``DISPATCH_CHANNEL`` (payload: its id), sent in the same transaction. A process whose row in
  ``gateway_processes`` is gone (declared dead) claims nothing.
- Adoption (``adopt``), under the same lock: the nodes whose publisher's row is gone become
  the adopting process's, and the messages it had claimed and the broker had not acknowledged
  (``pending``) are returned, oldest first, to be published again before any newer claim of
  their node; a node with none of those loses its publisher row instead.
- Estimates (``queue_position``, ``estimated_transmit_at``) are written only on rows that still
  wait, under the hand-over lock when it is free (never waited for: estimates and claims of
  several processes would deadlock on the same rows); a claim clears the position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from kosmo import locks
from kosmo.messages import NewMessage
from kosmo.routing import Hearing

DISPATCH_CHANNEL = "kosmo_dispatch"  # notifications: a process id to wake, or '' for every one

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

# What the bridges hold, in aggregate: one row per (bridge, user, node, text size), so a round
# reads as many rows as there are conversations on air, not one per held message (a bridge
# announcing a large credit may hold thousands). The newest hand-over last: it routes its pair.
_HELD = """
SELECT bridge_id, user_id, node_id, octet_length(text), count(*) FROM messages
WHERE handed_at IS NOT NULL AND status IN ('pending', 'queued') AND direction = 'outbound'
GROUP BY bridge_id, user_id, node_id, octet_length(text)
ORDER BY max(handed_at), bridge_id, user_id, node_id
"""

_ESTIMATES = """
UPDATE messages AS m SET queue_position = x.p, estimated_transmit_at = x.e
FROM unnest(%b::uuid[], %b::integer[], %b::timestamptz[]) AS x (i, p, e)
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
    """``count`` messages of ``size`` bytes from one user to one node, handed to ``bridge_id``
    and not yet on air nor ended."""

    bridge_id: str
    user_id: UUID
    node_id: str
    size: int
    count: int


@dataclass(frozen=True)
class Queue:
    waiting: list[Waiting]
    held: list[Held]


def load_queue(conn: psycopg.Connection[Any], limit: int) -> Queue:
    """The waiting messages (oldest first, at most ``limit``) and the held ones, in aggregate
    (the newest hand-over last)."""
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
    longer wait (canceled, expired, handed by another process); how many the bridge holds now;
    those left for the process that publishes their node (``others``). ``locked`` False:
    another gateway process was claiming, or this one is no longer registered; nothing was
    done."""

    handed: list[NewMessage]
    gone: list[UUID]
    held: int
    locked: bool = True
    others: list[UUID] = field(default_factory=list)  # still waiting, another process's nodes


# A message is claimed only while it waits, before its expiry, and never ahead of its own
# (user, node): no older one may still wait (unless offered in this claim) nor be held by
# another bridge. So one user's messages to one node go on air in the order they were
# accepted, whichever gateway process accepted or claims them. And only by its node's
# publisher.
_CLAIM = """
UPDATE messages AS m SET handed_at = %(now)s, bridge_id = %(bridge)s, queue_position = NULL,
       estimated_transmit_at = x.e
FROM unnest(%(ids)s::uuid[], %(etas)s::timestamptz[]) AS x (i, e)
WHERE m.id = x.i AND m.status = 'pending' AND m.handed_at IS NULL AND m.expires_at > %(now)s
  -- Each check is a subquery run per message with its (user, node) as index keys: OFFSET 0
  -- keeps PostgreSQL from turning it into a join, whose plan depends on statistics that lag
  -- a fast-growing table (measured: unparameterized scans of the whole index, 20 ms a claim).
  AND NOT EXISTS (  -- an older one of its (user, node) waits, not offered (messages_pair_waiting)
    SELECT 1 FROM messages o
    WHERE o.user_id = m.user_id AND o.node_id = m.node_id AND o.direction = 'outbound'
      AND o.handed_at IS NULL AND o.status IN ('pending', 'queued')
      AND (o.created_at, o.id) < (m.created_at, m.id)
      AND o.expires_at > %(now)s AND o.id <> ALL(%(offered)s::uuid[]) OFFSET 0)
  -- Held by another bridge is two ranges, not `<>` (no index range): the claiming bridge's own
  -- held messages of the pair are never read (measured with 2,000 of them: 1.2-1.8 ms a claim
  -- of 35 messages, 10 ms with `<>`).
  AND NOT EXISTS (  -- an older one is held by another bridge (messages_pair_held), before it
    SELECT 1 FROM messages o
    WHERE o.user_id = m.user_id AND o.node_id = m.node_id AND o.direction = 'outbound'
      AND o.handed_at IS NOT NULL AND o.status IN ('pending', 'queued')
      AND o.bridge_id < %(bridge)s AND (o.created_at, o.id) < (m.created_at, m.id) OFFSET 0)
  AND NOT EXISTS (  -- or after it
    SELECT 1 FROM messages o
    WHERE o.user_id = m.user_id AND o.node_id = m.node_id AND o.direction = 'outbound'
      AND o.handed_at IS NOT NULL AND o.status IN ('pending', 'queued')
      AND o.bridge_id > %(bridge)s AND (o.created_at, o.id) < (m.created_at, m.id) OFFSET 0)
  AND EXISTS (SELECT 1 FROM node_publishers p
              WHERE p.node_id = m.node_id AND p.process_id = %(me)s)
RETURNING m.id, m.user_id, m.node_id, m.text, m.created_at, m.expires_at
"""

# The nodes without a publisher among those of the messages not claimed get this process; the
# messages still waiting whose node another process publishes are returned, and each such
# publisher is notified once (PostgreSQL folds equal notifications of a transaction), at
# commit: it reads its queue then. (pg_notify returns void, never null: the filter keeps
# every row and makes the call.)
_OWN_AND_OTHERS = f"""
WITH own AS (
    INSERT INTO node_publishers (node_id, process_id)
    SELECT DISTINCT m.node_id, %(me)s::uuid
    FROM unnest(%(ids)s::uuid[]) AS x (i) JOIN messages m ON m.id = x.i
    ON CONFLICT (node_id) DO NOTHING
)
SELECT m.id FROM unnest(%(ids)s::uuid[]) AS x (i) JOIN messages m ON m.id = x.i
JOIN node_publishers p ON p.node_id = m.node_id
WHERE p.process_id <> %(me)s AND m.status = 'pending' AND m.handed_at IS NULL
  AND pg_notify('{DISPATCH_CHANNEL}', p.process_id::text) IS NOT NULL
"""


_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%s)"


def _lock(conn: psycopg.Connection[Any]) -> bool:
    """Take the hand-over lock for this transaction, if no other process holds it."""
    row = conn.execute(_TRY_LOCK, (locks.HAND_OVER,)).fetchone()
    return bool(row and row[0])


def claim(conn: psycopg.Connection[Any], offered: list[tuple[UUID, datetime | None]],
          bridge_id: str, credit: int, now: datetime, process_id: UUID) -> Claimed:
    """Hand ``bridge_id`` the first of ``offered`` (id, estimated transmit time), in order, as
    far as its credit allows, those of nodes ``process_id`` publishes; one transaction."""
    with conn.pipeline():  # one round trip: the count is only used once the lock is held
        trying = conn.execute(_TRY_LOCK, (locks.HAND_OVER,))  # as _lock, pipelined
        # A statement after the lock's: its snapshot sees every claim committed before.
        counting = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM gateway_processes WHERE id = %s),"
            " (SELECT count(*) FROM messages WHERE bridge_id = %s AND handed_at IS NOT NULL"
            "  AND status IN ('pending', 'queued') AND direction = 'outbound')",
            (process_id, bridge_id))
    locked = trying.fetchone()
    if not (locked and locked[0]):
        return Claimed([], [], 0, locked=False)
    row = counting.fetchone()
    if not (row and row[0]):
        return Claimed([], [], 0, locked=False)  # declared dead: it claims nothing more
    held = int(row[1])
    take = offered[:max(0, credit - held)]
    if not take:
        return Claimed([], [], held)
    ids = [i for i, _ in take]
    etas = dict(take)
    params = {"now": now, "bridge": bridge_id, "offered": ids, "me": process_id}
    # Most often every node offered is already this process's: one statement. Otherwise the
    # nodes without a publisher become its own and the rest is claimed in a second one.
    rows = {row[0]: row for row in conn.execute(
        _CLAIM, {**params, "ids": ids, "etas": [etas[i] for i in ids]}).fetchall()}
    others: set[UUID] = set()
    rest = [i for i in ids if i not in rows]
    if rest:
        others = {row[0] for row in conn.execute(
            _OWN_AND_OTHERS, {"ids": rest, "me": process_id}).fetchall()}
        rest = [i for i in rest if i not in others]
        if rest:
            rows.update((row[0], row) for row in conn.execute(
                _CLAIM, {**params, "ids": rest, "etas": [etas[i] for i in rest]}).fetchall())
    handed = [NewMessage(*rows[i], bridge_id=bridge_id)  # type: ignore[misc]
              for i in ids if i in rows]
    return Claimed(handed, [i for i in ids if i not in rows and i not in others],
                   held + len(handed), others=[i for i in ids if i in others])


@dataclass(frozen=True)
class Adopted:
    """Nodes taken over from one dead process, and its messages to publish again."""

    dead: UUID
    nodes: list[str]
    messages: list[NewMessage]  # oldest first


# Nodes whose publisher is no longer registered (declared dead, or left).
_ORPHANS = """
SELECT p.node_id, p.process_id FROM node_publishers p
WHERE NOT EXISTS (SELECT 1 FROM gateway_processes g WHERE g.id = p.process_id)
ORDER BY p.process_id, p.node_id LIMIT %s
"""

_UNACKED = """
SELECT id, user_id, node_id, text, created_at, expires_at, bridge_id FROM messages
WHERE node_id = ANY(%s) AND status = 'pending' AND handed_at IS NOT NULL
  AND direction = 'outbound'
ORDER BY created_at, id
"""


def has_orphans(conn: psycopg.Connection[Any]) -> bool:
    """Whether some node's publisher is gone (a cheap check before ``adopt`` takes the lock)."""
    return conn.execute(_ORPHANS, (1,)).fetchone() is not None


def adopt(conn: psycopg.Connection[Any], process_id: UUID, limit: int = 10_000
          ) -> list[Adopted] | None:
    """Take over the nodes of dead publishers (at most ``limit`` nodes); None when another
    process holds the lock or this one is no longer registered."""
    if not _lock(conn):
        return None
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM gateway_processes WHERE id = %s)",
                       (process_id,)).fetchone()
    if not (row and row[0]):
        return None
    owners: dict[UUID, list[str]] = {}
    for node_id, dead in conn.execute(_ORPHANS, (limit,)).fetchall():
        owners.setdefault(dead, []).append(node_id)
    if not owners:
        return []
    nodes = [n for ns in owners.values() for n in ns]
    messages = [NewMessage(*r) for r in conn.execute(_UNACKED, (nodes,)).fetchall()]
    owed = {m.node_id for m in messages}
    conn.execute("UPDATE node_publishers SET process_id = %s WHERE node_id = ANY(%s)",
                 (process_id, sorted(owed)))
    conn.execute("DELETE FROM node_publishers WHERE node_id = ANY(%s)",
                 ([n for n in nodes if n not in owed],))
    return [Adopted(dead, [n for n in ns if n in owed],
                    [m for m in messages if m.node_id in set(ns)])
            for dead, ns in owners.items()]


def write_estimates(conn: psycopg.Connection[Any],
                    rows: list[tuple[UUID, int | None, datetime | None]]) -> bool:
    """Set the position and estimate of messages that still wait (others are left alone).
    Under the hand-over lock, taken only if free: estimates and claims of several processes
    update the same rows in different orders and would deadlock; False (nothing written) when
    another process holds it: the next round writes them."""
    if not rows:
        return True
    if not _lock(conn):
        return False
    conn.execute("SET LOCAL synchronous_commit = off")  # advisory: rewritten each round
    conn.execute(_ESTIMATES, ([r[0] for r in rows], [r[1] for r in rows],
                              [r[2] for r in rows]))
    return True
