"""Stranded sessions: the MQTT sessions of gateway processes that are gone, drained by a live
one.

Rules:
- Every ``interval`` seconds the actor asks the database for one stranded session
  (kosmo/process_store.py ``take_stranded``: gone for longer than ``grace``, no drain of it in
  progress, no live process with its client id), leased to this process for ``lease``
  seconds, and drains it (actors/session_drain.py: what it holds is stored through the inbound
  consumer, then it is unsubscribed and deleted). Drained: the row is deleted. A drain that
  fails (``DrainFailed``: the broker unreachable, a session that would not settle within its
  bound) keeps the row; the lease running out lets any process try again.
- ``grace`` lets a process that restarts under its own client id (a worker, a service
  restarted by its manager) take its session back rather than have it drained from under it.
  ``lease`` exceeds the drain's own bound, so two processes never drain one session at once.
- A database outage skips a pass (warned once); the actor never fails the gateway for a
  drain: a session left for later is only late, not lost (the broker keeps it).
"""

from __future__ import annotations

import logging

import trio

from actors.session_drain import WITHIN, DrainFailed, SessionDrains
from kosmo.db import Database, DatabaseUnavailable
from kosmo.process_store import drained, take_stranded

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between two looks for a stranded session
GRACE = 10.0  # seconds a gone process has to come back to its session
LEASE = WITHIN + 30.0  # one drain's lease on a session


class StrandedSessions:
    def __init__(self, db: Database, drains: SessionDrains, *, interval: float = INTERVAL,
                 grace: float | None = None, lease: float = LEASE) -> None:
        self._db, self._drains = db, drains
        self._interval, self._lease = interval, lease
        self._grace = GRACE if grace is None else grace
        self.drained: list[str] = []  # client ids drained by this process, oldest first

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        outage = False
        while True:
            await trio.sleep(self._interval)
            try:
                taken = await self._db.run(take_stranded, self._grace, self._lease)
            except DatabaseUnavailable as exc:
                if not outage:
                    log.warning("stranded MQTT sessions not looked for, database "
                                "unavailable: %s", exc)
                outage = True
                continue
            outage = False
            if taken is None:
                continue
            client_id, attempt = taken
            log.info("draining the MQTT session %r of a gone gateway process (attempt %d)",
                     client_id, attempt)
            try:
                await self._drains.drain(client_id)
            except DrainFailed:
                continue  # logged by the drain; the lease lets a later pass try again
            try:
                await self._db.run(drained, client_id)
            except DatabaseUnavailable as exc:
                log.warning("MQTT session %r drained but not yet forgotten: %s", client_id, exc)
                continue  # drained again later: an empty session, deleted again
            self.drained.append(client_id)
