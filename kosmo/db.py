"""Database access: a psycopg 3 connection pool driven from Trio through worker threads.

Rules:
- psycopg's async API is asyncio-only, so the gateway uses its sync API in worker threads:
  ``await db.run(fn, *args)`` calls ``fn(conn, *args)`` in a thread with a pooled connection,
  inside one transaction that commits when ``fn`` returns and rolls back when it raises. The
  thread starts without a pass of the Trio loop first (``kosmo.threads``).
- A statement that PostgreSQL would plan again at every run, and whose plan cannot depend on
  the values or on a table's growth, runs after ``generic_plans(conn)`` and before
  ``default_plans(conn)`` or the transaction's end: its generic plan is made once per
  connection (psycopg prepares a query after 5 runs). Only such statements: a generic plan
  made while a table was small is kept until the table is analyzed again, so a lookup in a
  fast-growing table (messages, history, idempotency keys) keeps choosing its plan at each
  run.
- A ``trio.CapacityLimiter`` as large as the pool bounds the threads, so no thread ever waits
  for a connection while holding a limiter slot that another task needs.
- Thread calls are not abandoned on cancellation: a transaction always finishes (commit or
  rollback) before the caller sees the cancellation.
- A transaction the server rolled back by itself (a deadlock or a serialization failure:
  nothing was written) runs again in a new transaction, up to ``ROLLBACK_RETRIES`` times,
  before it fails like a broken connection. Without this a deadlock between two writers
  counted as an outage and refused every request for a probe interval.
- Connection failures surface as ``DatabaseUnavailable`` (the HTTP front answers 503), after
  at most ``connect_timeout`` seconds: threads never queue for a connection (the limiter sees
  to that), so a longer wait can only mean the server is away.
- Once a call failed that way, the database counts as down: further calls fail at once with
  the same reason instead of each waiting ``connect_timeout``. While ``watch`` runs (the
  gateway runs it), it alone probes the server every ``probe_interval`` seconds and ends the
  outage when a probe succeeds, so no request ever waits for a probe. Without a watcher, one
  call at a time, at most every ``probe_interval`` seconds, goes through as the probe. The
  state lives in the Trio thread only (``run`` and ``watch`` read and write it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import trio

from kosmo import threads

log = logging.getLogger(__name__)
T = TypeVar("T")
ROLLBACK_RETRIES = 2  # runs again of a transaction the server rolled back (deadlock, ...)
_ROLLED_BACK = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
                psycopg.errors.TransactionRollback)


def _ping(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT 1")


def generic_plans(conn: psycopg.Connection[Any]) -> None:
    """Until ``default_plans`` or the transaction's end, prepared statements run their generic
    plan, made once (see Rules)."""
    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")


def default_plans(conn: psycopg.Connection[Any]) -> None:
    """Back to the connection's own plan choice for the rest of the transaction."""
    conn.execute("SET LOCAL plan_cache_mode = DEFAULT")


class DatabaseUnavailable(Exception):
    """The database could not be reached or the connection broke mid-transaction."""


class Database:
    def __init__(self, url: str, *, size: int = 8, connect_timeout: float = 2.0,
                 probe_interval: float = 0.5, name: str = "kosmo") -> None:
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=size, open=False, timeout=connect_timeout, name=name,
            kwargs={"connect_timeout": max(1, int(connect_timeout)),
                    "application_name": name})
        self._limiter = trio.CapacityLimiter(size)
        self._probe_interval = probe_interval
        self._down: str | None = None  # why the last call failed, while the database is down
        self._went_down = trio.Event()
        self._watched = False
        self._probing = False
        self._next_probe = 0.0
        self.attempts = 0  # calls of ``run`` that went to the pool (the rest failed fast)
        self.probes = 0  # the watcher's probes

    async def open(self, *, within: float = 30.0) -> None:
        """Open the pool; raise DatabaseUnavailable if no connection comes ``within`` seconds."""
        try:
            await trio.to_thread.run_sync(self._pool.open, True, within)
        except psycopg_pool.PoolTimeout as exc:
            await trio.to_thread.run_sync(self._pool.close)
            raise DatabaseUnavailable(f"no database connection within {within:.0f} s") from exc

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._pool.close, 5.0)

    @property
    def down(self) -> bool:
        """True from a failed connection until a call succeeds again."""
        return self._down is not None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in a worker thread, in one transaction."""
        probe = self._down is not None
        if probe:
            if self._watched or self._probing or trio.current_time() < self._next_probe:
                raise DatabaseUnavailable(self._down)
            self._probing = True
            self._next_probe = trio.current_time() + self._probe_interval
        try:
            self.attempts += 1
            result: T = await threads.run_sync(self._call, fn, args, limiter=self._limiter)
        except DatabaseUnavailable as exc:
            self._mark_down(exc)
            raise
        finally:
            if probe:
                self._probing = False
        self._mark_up()
        return result

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """While the database is down, probe it every ``probe_interval`` seconds; forever."""
        self._watched = True
        try:
            task_status.started()
            while True:
                await self._went_down.wait()
                while self._down is not None:
                    await trio.sleep(self._probe_interval)
                    try:
                        self.probes += 1
                        await threads.run_sync(self._call, _ping, (), limiter=self._limiter)
                    except DatabaseUnavailable as exc:
                        self._down = str(exc)
                    else:
                        self._mark_up()
        finally:
            self._watched = False

    def _mark_down(self, exc: DatabaseUnavailable) -> None:
        if self._down is None:
            log.warning("database unavailable: %s", exc)
            self._next_probe = trio.current_time() + self._probe_interval
            self._went_down.set()
        self._down = str(exc)

    def _mark_up(self) -> None:
        if self._down is not None:
            log.info("database reachable again")
            self._down = None
            self._went_down = trio.Event()

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return self._transaction(fn, args)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            # The server may have restarted: drop the idle connections that died with it now,
            # rather than hand them out one failed request at a time.
            self._pool.check()
            raise DatabaseUnavailable(str(exc).strip().splitlines()[0]) from exc

    def _transaction(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        for _ in range(ROLLBACK_RETRIES):
            try:
                with self._pool.connection() as conn:
                    return fn(conn, *args)
            except _ROLLED_BACK as exc:  # nothing was written
                log.info("transaction rolled back by the server, run again: %s",
                         str(exc).strip().splitlines()[0])
        with self._pool.connection() as conn:
            return fn(conn, *args)

    def statistics(self) -> dict[str, int]:
        return dict(self._pool.get_stats())
