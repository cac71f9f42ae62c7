"""Outbox recovery: messages handed to a bridge but never acknowledged by the broker are
published again, to the same bridge, by the process that publishes their node.

Rules:
- Only messages of nodes this process publishes (``node_publishers``, actors/membership.py)
  are this outbox's: another process's are its own outbox's, a dead process's are adopted
  (actors/dispatcher.py), which publishes them again first. A new process (a new id at every
  start) publishes no node yet, so there is no pass at start: the previous life's messages
  come back through adoption once that life is declared dead.
- Every ``interval`` seconds, messages of its nodes handed longer than ``interval`` ago and
  still ``pending`` are dispatched again (a publish lost with a failed node actor or a
  dropped report).
- A message is always published to the bridge it was handed to (``bridge_id``): it never
  moves. Messages that wait for a bridge are the dispatcher's (actors/dispatcher.py).
- Dispatching twice is harmless: conversation actors skip ids already waiting, and consumers
  dedupe by ``message_id``.
- A database outage skips a pass (logged as a warning); the next pass retries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from uuid import UUID

import trio

from kosmo.clock import utcnow
from kosmo.db import Database, DatabaseUnavailable
from kosmo.ledger_store import pending_messages
from kosmo.messages import NewMessage

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, db: Database, *,
                 dispatch: Callable[[list[NewMessage]], Awaitable[None]],
                 process_id: UUID, interval: float = 30.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._process_id = process_id
        self._dispatch = dispatch
        self._interval = interval
        self._clock = clock
        self.recovered = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            await self.recover(self._clock() - timedelta(seconds=self._interval))

    async def recover(self, handed_before: datetime) -> int:
        try:
            messages = await self._db.run(pending_messages, handed_before, self._process_id)
        except DatabaseUnavailable as exc:
            log.warning("outbox pass skipped, database unavailable: %s", exc)
            return 0
        if messages:
            await self._dispatch(messages)
        if messages:
            log.info("outbox handed out %d pending messages again", len(messages))
        self.recovered += len(messages)
        return len(messages)
