"""The membership's SQL: live gateway processes, their heartbeat, the dead ones, leaving.

Rules:
- A process is registered by one row of ``gateway_processes`` (a new id each start) and is
  live while the row exists and its ``seen_at`` is within ``lease`` of the database's
  ``now()``. Every time here is the database's: the hosts' clocks never meet.
- A process's earlier lives (rows of its client id) are deleted when it registers: their nodes
  are adopted at once rather than after the lease.
- A heartbeat moves ``seen_at`` to ``now()``; it reports whether the row still exists. A row
  gone means another process declared this one dead (or it left): it must not publish again.
- Stale rows are only read here (``stale``); one is deleted (``bury``) only if it is still
  stale in that transaction, so a process that beat again meanwhile lives on. Burying
  notifies every process on ``DISPATCH_CHANNEL`` so their dispatchers adopt the dead process's
  nodes at once (kosmo/dispatch_store.py).
- Leaving deletes the row and the process's publisher rows of nodes with nothing claimed and
  unacknowledged; the others stay for adoption, which publishes those messages again first.
- A process row that goes (buried or left) leaves its MQTT client id in ``stranded_sessions``
  unless a live process has the same one. ``take_stranded`` leases one such session to one
  process once its grace has passed (a process restarted within it takes its session back,
  and its row is then deleted); ``drained`` forgets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from kosmo import locks
from kosmo.dispatch_store import DISPATCH_CHANNEL


class Fenced(Exception):
    """This process's row is gone: another process declared it dead and took its nodes."""


@dataclass(frozen=True)
class Registered:
    process_id: UUID
    started_at: datetime  # the database's time
    replaced: list[UUID]  # rows of earlier lives of this client id, deleted


@dataclass(frozen=True)
class Stale:
    """A process whose heartbeat is older than the lease."""

    process_id: UUID
    client_id: str
    seen_at: datetime


def register(conn: psycopg.Connection[Any], process_id: UUID, client_id: str, host: str,
             pid: int) -> Registered:
    """Register this process. Rows of the same MQTT client id are its predecessors (two live
    processes never share one: the broker would take the session from one for the other), so
    they go now, without waiting for their lease: their nodes are adopted at once, and the
    session is this process's again (no drain)."""
    gone = conn.execute("DELETE FROM gateway_processes WHERE client_id = %s RETURNING id",
                        (client_id,)).fetchall()
    conn.execute("DELETE FROM stranded_sessions WHERE client_id = %s", (client_id,))
    if gone:
        conn.execute("SELECT pg_notify(%s, '')", (DISPATCH_CHANNEL,))
    row = conn.execute(
        "INSERT INTO gateway_processes (id, client_id, host, pid, started_at, seen_at)"
        " VALUES (%s, %s, %s, %s, now(), now()) RETURNING started_at",
        (process_id, client_id, host, pid)).fetchone()
    assert row is not None
    return Registered(process_id, row[0], [r[0] for r in gone])


def beat(conn: psycopg.Connection[Any], process_id: UUID) -> bool:
    """Move this process's ``seen_at`` to now; False when its row is gone."""
    return conn.execute("UPDATE gateway_processes SET seen_at = now() WHERE id = %s",
                        (process_id,)).rowcount == 1


def stale(conn: psycopg.Connection[Any], process_id: UUID, lease: float) -> list[Stale]:
    """The other processes whose last heartbeat is older than ``lease`` seconds."""
    return [Stale(*row) for row in conn.execute(
        "SELECT id, client_id, seen_at FROM gateway_processes"
        " WHERE id <> %s AND seen_at < now() - make_interval(secs => %s)"
        " ORDER BY seen_at", (process_id, lease)).fetchall()]


# The gone process's MQTT session is left to drain (its client id, unless a live process has it).
_STRANDED = """
INSERT INTO stranded_sessions (client_id, since)
SELECT c.client_id, now() FROM (SELECT %(client)s::text AS client_id) c
WHERE NOT EXISTS (SELECT 1 FROM gateway_processes g WHERE g.client_id = c.client_id)
ON CONFLICT (client_id) DO UPDATE SET since = EXCLUDED.since
"""


def bury(conn: psycopg.Connection[Any], process_id: UUID, lease: float) -> bool:
    """Delete a dead process's row if it is still stale; tell every dispatcher."""
    gone = conn.execute(
        "DELETE FROM gateway_processes"
        " WHERE id = %s AND seen_at < now() - make_interval(secs => %s) RETURNING client_id",
        (process_id, lease)).fetchone()
    if gone:
        conn.execute(_STRANDED, {"client": gone[0]})
        conn.execute("SELECT pg_notify(%s, '')", (DISPATCH_CHANNEL,))
    return gone is not None


_LEAVE = """
DELETE FROM node_publishers p WHERE p.process_id = %(me)s AND NOT EXISTS (
    SELECT 1 FROM messages m WHERE m.node_id = p.node_id AND m.status = 'pending'
      AND m.handed_at IS NOT NULL AND m.direction = 'outbound')
"""


def leave(conn: psycopg.Connection[Any], process_id: UUID) -> None:
    """This process stops: its row goes, and with it the nodes it has nothing owed to."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (locks.HAND_OVER,))
    conn.execute(_LEAVE, {"me": process_id})
    gone = conn.execute("DELETE FROM gateway_processes WHERE id = %s RETURNING client_id",
                        (process_id,)).fetchone()
    if gone:
        conn.execute(_STRANDED, {"client": gone[0]})
    conn.execute("SELECT pg_notify(%s, '')", (DISPATCH_CHANNEL,))


# One stranded session this process may drain now: past its grace, no drain in progress (or
# that drain's lease ran out), and no live process with its client id. Rows of client ids
# that are live again are deleted first: their process took its own session back.
_RECLAIMED = """
DELETE FROM stranded_sessions s
WHERE EXISTS (SELECT 1 FROM gateway_processes g WHERE g.client_id = s.client_id)
"""

_TAKE_STRANDED = """
UPDATE stranded_sessions SET drain_until = now() + make_interval(secs => %(lease)s),
       attempts = attempts + 1
WHERE client_id = (
    SELECT client_id FROM stranded_sessions
    WHERE since < now() - make_interval(secs => %(grace)s)
      AND (drain_until IS NULL OR drain_until < now())
    ORDER BY since LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING client_id, attempts
"""


def take_stranded(conn: psycopg.Connection[Any], grace: float,
                  lease: float) -> tuple[str, int] | None:
    """A stranded session to drain (its client id, this attempt's number), leased to this
    process for ``lease`` seconds; None when there is none."""
    conn.execute(_RECLAIMED)
    row = conn.execute(_TAKE_STRANDED, {"grace": grace, "lease": lease}).fetchone()
    return (row[0], row[1]) if row else None


def drained(conn: psycopg.Connection[Any], client_id: str) -> None:
    """The session is drained and deleted at the broker: forget it."""
    conn.execute("DELETE FROM stranded_sessions WHERE client_id = %s", (client_id,))

