"""The event feed actor: brings every committed event, whatever process wrote it, to the bus.

Rules:
- One cursor: the last history id read. The feed reads the history after it
  (``kosmo.events.events_after``, every user, page by page) and hands the events to the bus in
  id order, then moves the cursor. History ids follow commit order (``kosmo.events``), so
  every event is delivered once and in event order, whether this process or another wrote it.
- Local events take the same path: a commit in this process only wakes the feed (``wake``,
  called by ``EventBus.publish``) with the largest id it wrote. Delivering them directly would
  race other processes' events: one with a smaller id may still be on its way through the
  notification. The price is one read of the history per wake-up (batched: a read takes every
  event committed since the last one). Measured once (one process, 2 cores shared with other
  load, 280 sequential sends, send -> its ``message.created`` frame on a stream of the same
  process): p50 9.5-10.9 ms with the feed, 10.2-11.8 ms with the old direct publish, so no
  difference above the noise.
- Other processes' commits arrive as PostgreSQL notifications on ``kosmo.events.CHANNEL``
  (sent in the committing transaction by ``kosmo.ledger_store.record_history``, delivered at
  commit, in commit order), their payload the largest id written. The feed listens on a
  dedicated connection, waiting on its socket from Trio (no thread), and reads until the
  cursor reaches the largest id it has been told about.
- The listening connection is not pooled: a pool's connections cannot LISTEN, and a
  transaction-pooling proxy (PgBouncer) does not carry notifications; the feed needs a direct
  (or session-pooled) connection.
- When the listening connection breaks (the database restarts), the feed reconnects with
  backoff (``RETRY_FIRST`` doubling up to ``RETRY_MAX`` seconds), LISTENs again and then reads
  everything after the cursor, so the events of the outage are delivered late, never lost. A
  failed read is retried after a pause; the cursor only moves once the bus has the events.
- The cursor starts at the last committed id when the feed starts: streams replay the history
  before that themselves (``since``).
- While the bus has no subscriber the feed does not read: it moves the cursor to the largest id
  it knows committed and tells the bus's ``on_written`` listeners. Those events precede every
  subscription still to come, which is all a subscriber is promised (it replays older ones
  with ``since``). This saves a read of the history per commit while nobody streams.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
import trio

from actors.events import EventBus
from kosmo.db import Database, DatabaseUnavailable
from kosmo.events import CHANNEL, Event, events_after, last_history_id

log = logging.getLogger(__name__)

PAGE = 1000  # history rows per read
RETRY_FIRST = 0.1  # seconds before the first reconnect of the listener; doubles on failure
RETRY_MAX = 5.0
READ_PAUSE = 0.5  # seconds before a failed read is retried


class EventFeed:
    def __init__(self, db: Database, bus: EventBus, url: str, *, page: int = PAGE,
                 connect_timeout: float = 2.0) -> None:
        self._db = db
        self._bus = bus
        self._url = url
        self._page = page
        self._connect_timeout = connect_timeout
        self._cursor = 0  # the last history id read and delivered
        self._target = 0  # the largest history id known to be committed
        self._woken = trio.Event()
        self.reads = 0
        self.skips = 0  # wake-ups with nobody subscribed: the history was not read
        self.listening = False  # the listener holds a LISTENing connection
        self.reconnects = 0

    @property
    def cursor(self) -> int:
        return self._cursor

    def wake(self, events: Sequence[Event]) -> None:
        """This process committed ``events`` (called from the Trio thread; never blocks)."""
        self._tell(max(int(e.event_id) for e in events))

    def _tell(self, history_id: int) -> None:
        if history_id > self._target:
            self._target = history_id
            self._woken.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._cursor = self._target = await self._db.run(last_history_id)
        self._bus.fed_by(self.wake)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read)
            await nursery.start(self._listen)
            task_status.started()

    async def _read(self) -> None:
        while True:
            await self._woken.wait()
            self._woken = trio.Event()
            while self._cursor < self._target:
                if self._bus.idle():
                    # Nobody streams: what was committed up to the target reaches no one, so
                    # it is not read (a stream that subscribes later replays what it asks for).
                    self._cursor = self._target
                    self.skips += 1
                    self._bus.written()
                    break
                try:
                    events, last = await self._db.run(events_after, self._cursor, self._page)
                except DatabaseUnavailable as exc:
                    log.warning("live events not read: %s", exc)
                    await trio.sleep(READ_PAUSE)
                    continue
                self.reads += 1
                await self._bus.deliver(events)
                if last == self._cursor:
                    break  # nothing more committed (the target's rows are gone)
                self._cursor = last

    async def _listen(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                      ) -> None:
        delay = RETRY_FIRST
        started = False
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = await trio.to_thread.run_sync(self._connect)
                newest = await trio.to_thread.run_sync(last_history_id, conn)
                self.listening = True
                delay = RETRY_FIRST
                self._tell(newest)  # catch up on what was committed while not listening
                if not started:
                    started = True
                    task_status.started()
                await self._notifications(conn)
            except psycopg.Error as exc:
                self.listening = False
                if conn is not None:
                    conn.close()
                    conn = None
                log.warning("event notifications lost (%s); listening again in %.1f s",
                            exc, delay)
                if not started:  # serve anyway: local events still wake the feed
                    started = True
                    task_status.started()
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                self.reconnects += 1
            finally:
                self.listening = False
                if conn is not None:
                    conn.close()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._url, autocommit=True,
                               connect_timeout=max(1, int(self._connect_timeout)),
                               application_name="kosmo-events")
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _notifications(self, conn: psycopg.Connection[Any]) -> None:
        """Wait on the connection's socket and take its notifications, until it breaks."""
        pgconn = conn.pgconn
        while True:
            await trio.lowlevel.wait_readable(pgconn.socket)
            pgconn.consume_input()  # raises OperationalError when the connection is gone
            while (notify := pgconn.notifies()) is not None:
                if notify.relname.decode() == CHANNEL:
                    self._tell(int(notify.extra.decode()))
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the listening connection broke")
