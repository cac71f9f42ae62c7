"""The hand-over claim, one process: its cost with the publisher rule against the claim as it
was before (kept here as the baseline), measured in the same run on the same database.

What it does: a fresh database ``bench_<random>`` (migrated, seeded), ``--messages`` waiting
messages of one user spread over ``--nodes`` nodes, one registered gateway process. Then
``--rounds`` rounds; in each, both claims (in alternating order) hand every waiting message to
one bridge, ``--batch`` offered per transaction as the dispatcher offers its queue's head,
after which the messages wait again (the publisher rows stay: the first pass inserts them, as
at a start; the others measure the steady state). Each claim call is timed (its transaction, commit
included); the figures are medians and p90 over all calls, in microseconds per call.

    .venv/bin/python bench/claim.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path[:0] = [str(HERE.parent), str(HERE)]

import psycopg  # noqa: E402
from common import percentile, say, source_version  # noqa: E402

from kosmo import locks, migrate  # noqa: E402
from kosmo.dispatch_store import claim  # noqa: E402

SANCTUARY = uuid.UUID("33333333-3333-3333-3333-333333333333")
BRIDGE = "!b0000001"

# The claim before one publisher per node (commit 0ee62b7), verbatim but for its name.
_CLAIM_BEFORE = """
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


def claim_before(conn: psycopg.Connection[Any], offered: list[tuple[uuid.UUID, None]],
                 bridge_id: str, credit: int, now: datetime) -> int:
    locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (locks.HAND_OVER,)).fetchone()
    if not (locked and locked[0]):
        return 0
    counted = conn.execute(
        "SELECT count(*) FROM messages WHERE bridge_id = %s AND handed_at IS NOT NULL"
        " AND status IN ('pending', 'queued') AND direction = 'outbound'",
        (bridge_id,)).fetchone()
    held = int(counted[0]) if counted else 0
    take = offered[:max(0, credit - held)]
    return len(conn.execute(_CLAIM_BEFORE, {
        "now": now, "bridge": bridge_id, "ids": [i for i, _ in take],
        "etas": [e for _, e in take]}).fetchall())


def claim_now(process_id: uuid.UUID) -> Callable[..., int]:
    def run(conn: psycopg.Connection[Any], offered: list[tuple[uuid.UUID, None]],
            bridge_id: str, credit: int, now: datetime) -> int:
        return len(claim(conn, list(offered), bridge_id, credit, now, process_id).handed)
    return run


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def setup(url: str, messages: int, nodes: int) -> uuid.UUID:
    migrate.migrate(url)
    migrate.seed(url)
    now = datetime.now(UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at,"
            " updated_at, expires_at) SELECT gen_random_uuid(), 'outbound', %s,"
            " '!' || lpad(to_hex(i %% %s), 8, '0'), 'bench', 'pending',"
            " %s + i * interval '1 ms', %s, %s FROM generate_series(1, %s) AS i",
            (SANCTUARY, nodes, now, now, now + timedelta(days=1), messages))
        process_id = uuid.uuid4()
        conn.execute("INSERT INTO gateway_processes VALUES (%s, 'bench', 'h', 1, now(), now())",
                     (process_id,))
        conn.execute("ANALYZE")  # plans from statistics, not from an empty table's guesses
    return process_id


def one_pass(url: str, fn: Callable[..., int], batch: int, credit: int) -> list[float]:
    """Claim every waiting message, ``batch`` per call; the time of each call (s)."""
    took: list[float] = []
    with psycopg.connect(url) as conn:
        waiting = [r[0] for r in conn.execute(
            "SELECT id FROM messages WHERE handed_at IS NULL ORDER BY created_at, id")]
        conn.commit()
        for start in range(0, len(waiting), batch):
            offered = [(i, None) for i in waiting[start:start + batch]]
            began = time.perf_counter()
            with conn.transaction():
                handed = fn(conn, offered, BRIDGE, credit, datetime.now(UTC))
            took.append(time.perf_counter() - began)
            assert handed == len(offered), (handed, len(offered))
        conn.execute("UPDATE messages SET handed_at = NULL, bridge_id = NULL")
        conn.commit()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get(
        "KOSMO_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    name = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = with_db(args.database_url, name)
    try:
        process_id = setup(url, args.messages, args.nodes)
        variants = {"before": claim_before, "publishers": claim_now(process_id)}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for key in order:
                times[key] += one_pass(url, variants[key], args.batch, args.messages + 1)
            say(f"round {round_ + 1}/{args.rounds}")
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    load = os.getloadavg()
    print(f"claim benchmark, code {source_version()}, {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{args.messages} messages over {args.nodes} nodes, {args.batch} offered per claim, "
          f"{args.rounds} rounds; microseconds per claim call")
    base = percentile(times["before"], 50)
    for key, values in times.items():
        p50, p90 = percentile(values, 50), percentile(values, 90)
        print(f"  {key:<11} p50 {p50 * 1e6:7.0f}  p90 {p90 * 1e6:7.0f}  "
              f"ratio of p50 to before {p50 / base:.2f}  ({len(values)} calls)")


if __name__ == "__main__":
    main()
