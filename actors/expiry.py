"""Expiry: a message not transmitted within its time to live becomes ``expired`` and is refunded.

Rules:
- The deadline is the message's ``expires_at`` in the database, so expiry holds across restarts:
  a sweep runs at start and then every ``interval`` seconds.
- Expiry is a delivery report like any other (reason ``ttl``): the ledger applies it through the
  state machine, which refunds exactly once and ignores messages already on air.
- A database outage skips a sweep (logged as a warning); the next one catches up.
- After a sweep that expired something, ``settled`` tells the dispatcher (a bridge may have
  credit again; its queue changed).
- Each sweep also deletes Idempotency-Key records past their 24 h (``kosmo.idempotency.sweep``,
  a bounded batch); they already count as absent, so this only keeps the table small.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from uuid import UUID

import trio

from actors.ledger import Ledger
from kosmo import idempotency
from kosmo.clock import utcnow
from kosmo.db import Database, DatabaseUnavailable
from kosmo.delivery import Report, Status
from kosmo.ledger_store import expired_messages
from kosmo.messages import StatusReport

log = logging.getLogger(__name__)


class Expiry:
    def __init__(self, db: Database, ledger: Ledger, *, interval: float = 30.0,
                 settled: Callable[[], Awaitable[None]] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._settled = settled
        self._ledger = ledger
        self._interval = interval
        self._clock = clock
        self.expired = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.sweep()
            await trio.sleep(self._interval)

    async def sweep(self) -> int:
        """Expire every message past its deadline now; return how many were expired."""
        now = self._clock()
        count = 0
        try:
            while due := await self._db.run(expired_messages, now):
                async with trio.open_nursery() as nursery:
                    for message_id in due:
                        nursery.start_soon(self._expire, message_id, now)
                count += len(due)
            await self._db.run(idempotency.sweep, now)
        except* DatabaseUnavailable as group:
            log.warning("expiry sweep stopped, database unavailable: %s", group.exceptions[0])
        self.expired += count
        if count and self._settled is not None:
            await self._settled()
        return count

    async def _expire(self, message_id: UUID, now: datetime) -> None:
        applied = await self._ledger.report(
            StatusReport(message_id, Report(Status.EXPIRED, "ttl"), now), wait=True)
        if applied is not None and applied.transition is not None and applied.transition.changed:
            log.info("message %s to node %s expired (ttl)", message_id, applied.node_id)
