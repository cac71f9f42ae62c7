"""Migrations: idempotent, recorded, safe when two run at once, shipped inside the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest
import trio

from kosmo import migrate
from tests.conftest import fresh_database

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty_db(pg_admin_url: str):
    with fresh_database(pg_admin_url) as url:
        yield url


async def test_two_concurrent_migrations_apply_each_version_once(empty_db: str):
    results: list[list[str]] = []

    async def run() -> None:
        results.append(await trio.to_thread.run_sync(migrate.migrate, empty_db))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        nursery.start_soon(run)
    names = [m.name for m in migrate.migrations()]
    assert sorted(results, key=len) == [[], names]
    assert migrate.migrate(empty_db) == []
    with psycopg.connect(empty_db) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
    assert [r[1] for r in rows] == names


def test_seed_is_idempotent_and_loads_the_demo_users(empty_db: str):
    migrate.migrate(empty_db)
    migrate.seed(empty_db)
    migrate.seed(empty_db)
    with psycopg.connect(empty_db) as conn:
        plans = dict(conn.execute(
            "SELECT u.id::text, s.plan_code || '/' || s.status FROM users u"
            " JOIN subscriptions s ON s.user_id = u.id").fetchall())
        whitelist = conn.execute("SELECT user_id::text, node_id FROM node_whitelist").fetchall()
    assert plans == {
        "11111111-1111-1111-1111-111111111111": "wanderer/active",
        "22222222-2222-2222-2222-222222222222": "guardian/active",
        "33333333-3333-3333-3333-333333333333": "sanctuary/active",
        "44444444-4444-4444-4444-444444444444": "free/active",
        "55555555-5555-5555-5555-555555555555": "wanderer/canceled",
    }
    assert whitelist == [("22222222-2222-2222-2222-222222222222", "!a1b2c3d4")]


def test_each_migration_upgrades_a_database_holding_data(empty_db: str):
    """Apply the migrations one at a time, with messages written between them."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for migration in migrate.migrations():
            migrate.migrate(empty_db, up_to=migration.version)
            if migration.version == 1:
                migrate.seed(empty_db)
            conn.execute("""INSERT INTO messages (id, direction, user_id, node_id, text, status,
                            created_at, updated_at) VALUES (gen_random_uuid(), 'outbound',
                            '11111111-1111-1111-1111-111111111111', '!a1b2c3d4', 'x',
                            'pending', now(), now())""")
            conn.execute("INSERT INTO message_status_history (message_id, status, at)"
                         " SELECT id, 'pending', now() FROM messages m WHERE NOT EXISTS"
                         " (SELECT 1 FROM message_status_history h WHERE h.message_id = m.id)")
        assert migrate.migrate(empty_db) == []
        count = conn.execute("SELECT count(*) FROM message_status_history").fetchone()
    assert count is not None
    assert count[0] == len(migrate.migrations())


def test_status_history_is_append_only(empty_db: str):
    migrate.migrate(empty_db)
    migrate.seed(empty_db)
    with psycopg.connect(empty_db) as conn:
        conn.execute("""INSERT INTO messages (id, direction, user_id, node_id, text, status,
                        created_at, updated_at) VALUES (gen_random_uuid(), 'outbound',
                        '11111111-1111-1111-1111-111111111111', '!a1b2c3d4', 'x', 'pending',
                        now(), now())""")
        conn.execute("INSERT INTO message_status_history (message_id, status, at)"
                     " SELECT id, 'pending', now() FROM messages")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE message_status_history SET status = 'queued'")


def test_migrate_runs_from_a_built_wheel(empty_db: str, tmp_path: Path):
    # Built from a copy of the checkout without its venv and build folders: a ``build/`` left by an
    # earlier build would otherwise ship files since removed (setuptools reuses it).
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".kosmo", ".hypothesis", ".schemathesis", "build", "dist", "*.egg-info",
        "__pycache__", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"kosmo/sql/{m.name}" for m in migrate.migrations()} <= set(names)
    assert "kosmo/sql/seed_demo.sql" in names
    for package in ["kosmo", "actors", "bridge"]:  # every package of the tree is shipped
        for init in (ROOT / package).rglob("__init__.py"):
            assert init.relative_to(ROOT).as_posix() in names
    # Import kosmo from the wheel itself (zipimport), not from the source tree.
    env = {**os.environ, "PYTHONPATH": str(wheel), "KOSMO_DATABASE_URL": empty_db}
    result = subprocess.run(
        [sys.executable, "-c", "import kosmo, sys; assert '.whl' in kosmo.__file__, kosmo.__file__;"
         "from kosmo.cli import main; main(['migrate'])"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"applied {len(migrate.migrations())} migrations" in result.stdout
