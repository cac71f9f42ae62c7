"""Schema migrations: numbered SQL files ``NNNN_name.sql`` shipped inside the package.

Rules:
- Files are applied in version order, each in its own transaction together with its row in
  ``schema_migrations``; an applied version is never applied again (idempotent).
- A session advisory lock serialises concurrent runs (two ``kosmo migrate`` at once are safe:
  the second waits, then finds nothing to do).
- The demo seed (``seed_demo.sql``) is data, not a migration; ``seed()`` loads it.
- A server checks at start (``check_schema``) that every migration it ships is applied, and
  refuses to start with ``SchemaNotCurrent`` (one line: run ``kosmo migrate``) otherwise.
  Versions it does not know (a newer release migrated the database) are not its concern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from kosmo import locks

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


class SchemaNotCurrent(Exception):
    """The database lacks the schema or some of its migrations; ``str()`` is the one line."""


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("kosmo.sql").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def migrate(url: str, *, up_to: int | None = None) -> list[str]:
    """Apply pending migrations (up to version ``up_to``); return the names applied."""
    applied_now: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (locks.MIGRATION,))
        try:
            conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())""")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in migrations():
                if migration.version in done or (up_to is not None and migration.version > up_to):
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())  # bytes: no parameter parsing
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (migration.version, migration.name))
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (locks.MIGRATION,))
    return applied_now


def check_schema(conn: psycopg.Connection) -> None:
    """Raise SchemaNotCurrent unless every shipped migration is applied."""
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() in (None, (None,)):
        raise SchemaNotCurrent("the database has no kosmo schema: run `kosmo migrate` first")
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    missing = [m.name for m in migrations() if m.version not in done]
    if missing:
        raise SchemaNotCurrent(f"the database schema is older than this gateway ({len(missing)} "
                               f"migrations missing, from {missing[0]}): run `kosmo migrate`")


def seed_sql() -> str:
    return resources.files("kosmo.sql").joinpath("seed_demo.sql").read_text("utf-8")


def seed(url: str) -> None:
    """Load the demo users, subscriptions and whitelist (idempotent)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(seed_sql().encode())
