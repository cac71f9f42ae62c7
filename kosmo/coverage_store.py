"""SQL of coverage: which nodes each bridge's radio hears (sql/0004_coverage.sql).

Rules:
- One row per (bridge, node): its newest observation. A newer ``last_heard`` replaces the row;
  an older or equal one changes nothing, so late, repeated and reordered reports are harmless
  and several gateway processes may store reports of one bridge side by side.
- A newer observation without ``snr`` or ``hops_away`` (a packet from an old firmware that
  does not say its hops) keeps the values the row had.
- Set-based: one statement per batch, whatever its size; within a batch the newest
  observation of each (bridge, node) is the one offered. Runs in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg

from kosmo.wire import Heard, HeardReport

_UPSERT = """
INSERT INTO coverage AS c (bridge_id, node_id, last_heard, snr, hops_away, updated_at)
SELECT b, n, h, s, o, %s
FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::float8[], %s::smallint[])
     AS v (b, n, h, s, o)
ON CONFLICT (bridge_id, node_id) DO UPDATE
SET last_heard = EXCLUDED.last_heard,
    snr = COALESCE(EXCLUDED.snr, c.snr),
    hops_away = COALESCE(EXCLUDED.hops_away, c.hops_away),
    updated_at = EXCLUDED.updated_at
WHERE c.last_heard < EXCLUDED.last_heard
"""


def newest(reports: Iterable[HeardReport]) -> dict[tuple[str, str], Heard]:
    """The newest observation of each (bridge, node) in ``reports``."""
    found: dict[tuple[str, str], Heard] = {}
    for report in reports:
        for node in report.nodes:
            key = (report.bridge_id, node.node_id)
            kept = found.get(key)
            if kept is None or kept.last_heard < node.last_heard:
                found[key] = node
    return found


def store_coverage(conn: psycopg.Connection[Any], reports: list[HeardReport],
                   now: datetime) -> int:
    """Store the batch's observations; return how many rows they created or made newer."""
    rows = newest(reports)
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.execute(_UPSERT, (
            now, [b for b, _ in rows], [n for _, n in rows],
            [h.last_heard for h in rows.values()], [h.snr for h in rows.values()],
            [h.hops_away for h in rows.values()]))
        return cur.rowcount


def nodes_heard(conn: psycopg.Connection[Any], bridge_ids: list[str]) -> dict[str, int]:
    """How many nodes each of ``bridge_ids`` has heard (the rows it has, whatever their age)."""
    return {row[0]: row[1] for row in conn.execute(
        "SELECT bridge_id, count(*) FROM coverage WHERE bridge_id = ANY(%s) GROUP BY bridge_id",
        (bridge_ids,)).fetchall()}


def coverage_of(conn: psycopg.Connection[Any], bridge_id: str
                ) -> list[tuple[str, datetime, float | None, int | None]]:
    """A bridge's rows (node, last heard, snr, hops away), by node: for operators and tests."""
    return [(r[0], r[1], r[2], r[3]) for r in conn.execute(
        "SELECT node_id, last_heard, snr, hops_away FROM coverage WHERE bridge_id = %s"
        " ORDER BY node_id", (bridge_id,)).fetchall()]
