"""Which nodes a gateway process publishes, and whether its MQTT session waits to be drained,
read from the membership tables when the schema has them (``gateway_processes``,
``node_publishers``, ``stranded_sessions``); without them every answer is None.

Rules:
- Read-only, one short connection per call, from the harness's threads; a database that is
  down answers None (the caller polls again).
- A process is found by its pid: all gateways of a chaos run are on this host.
"""

from __future__ import annotations

import psycopg

_TABLES = ("SELECT to_regclass('gateway_processes') IS NOT NULL"
           " AND to_regclass('node_publishers') IS NOT NULL")


def owned_by_pid(url: str, pid: int) -> tuple[str, int] | None:
    """The process id of the gateway with this pid and how many nodes it publishes."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute(_TABLES).fetchone()
            if not row or not row[0]:
                return None
            row = conn.execute(
                "SELECT p.id::text, count(n.node_id)::int FROM gateway_processes p"
                " LEFT JOIN node_publishers n ON n.process_id = p.id"
                " WHERE p.pid = %s GROUP BY p.id ORDER BY max(p.started_at) DESC LIMIT 1",
                (pid,)).fetchone()
    except psycopg.OperationalError:
        return None
    return (row[0], row[1]) if row else None


def still_published_by(url: str, process_id: str) -> int | None:
    """How many nodes still name this process as their publisher (None: database down)."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*)::int FROM node_publishers WHERE process_id = %s",
                               (process_id,)).fetchone()
    except psycopg.OperationalError:
        return None
    return int(row[0]) if row else None


def stranded(url: str, client_id: str) -> bool | None:
    """Whether this client id's session waits to be drained (None: database down or no such
    table)."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT to_regclass('stranded_sessions') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return None
            row = conn.execute("SELECT count(*)::int FROM stranded_sessions WHERE client_id = %s",
                               (client_id,)).fetchone()
    except psycopg.OperationalError:
        return None
    return bool(row and row[0])
