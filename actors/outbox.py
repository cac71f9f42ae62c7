"""Outbox recovery: messages handed to a bridge but never acknowledged by the broker are
published again, to the same bridge.

Rules:
- At start, every message handed to a bridge (claimed by the dispatcher) and still ``pending``
  is dispatched again (a crash between the claim and the publish loses nothing); the actor
  reports ready only after that first pass was handed over.
- Then, every ``interval`` seconds, messages handed longer than ``interval`` ago and still
  ``pending`` are dispatched again (a publish lost with a failed node actor or a dropped
  report).
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

import trio

from kosmo.clock import utcnow
from kosmo.db import Database, DatabaseUnavailable
from kosmo.ledger_store import pending_messages
from kosmo.messages import NewMessage

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, db: Database, *,
                 dispatch: Callable[[list[NewMessage]], Awaitable[None]],
                 interval: float = 30.0, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._dispatch = dispatch
        self._interval = interval
        self._clock = clock
        self.recovered = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.recover(self._clock())
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            await self.recover(self._clock() - timedelta(seconds=self._interval))

    async def recover(self, handed_before: datetime) -> int:
        try:
            messages = await self._db.run(pending_messages, handed_before)
        except DatabaseUnavailable as exc:
            log.warning("outbox pass skipped, database unavailable: %s", exc)
            return 0
        if messages:
            await self._dispatch(messages)
        if messages:
            log.info("outbox handed out %d pending messages again", len(messages))
        self.recovered += len(messages)
        return len(messages)
