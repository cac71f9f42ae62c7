"""The membership actor: this process among the gateway processes sharing the database.

Rules:
- At start it registers this process (kosmo/process_store.py) under a new id with its MQTT
  client id, host and pid, and reports ready only then: the dispatcher claims for this id.
  Earlier rows of the same client id (this process's earlier lives: a restart after a crash)
  are deleted then, so their nodes are adopted at once instead of after the lease.
  The gateway gives it a database pool of its own (one connection), so its beats never queue
  behind other work for a connection.
- Heartbeat: every ``heartbeat`` seconds it sets its row's ``seen_at`` to the database's
  ``now()``. A process is dead when its row is older than ``lease`` (or gone). Only database
  time is compared with database time, so the hosts' clocks do not matter.
- Fencing: a heartbeat that finds this process's row gone means another process declared it
  dead and may already publish its nodes. This one must publish nothing more: it logs one
  ERROR line and fails with ``Fenced``, which brings the gateway down (the process manager or
  the workers' supervisor starts it again, with a new id).
- False deaths: after an outage every row is stale, the live processes' too. So a process
  declares others dead only once its own heartbeats have succeeded without a break for
  ``lease`` seconds: a failed heartbeat, or more than ``lease / 2`` seconds between two
  successful ones (a stalled process), starts that count again. In ``lease`` seconds of a
  reachable database every live process has beaten at least once (heartbeat < lease / 2).
- Burial: every ``heartbeat / 2`` seconds (while the guard allows) each dead process's row is
  deleted if still stale; that notifies every dispatcher, which adopts its nodes
  (actors/dispatcher.py), and leaves its MQTT session to be drained (actors/stranded.py).
- Leaving: ``leave`` (called by the gateway once every other actor stopped, so nothing
  publishes anymore) deletes the row, shielded, within ``LEAVE_TIMEOUT`` seconds; the others
  adopt its nodes at once instead of after the lease.
- Supervision: a database outage only skips beats (logged once as a warning); the actor
  fails (the gateway goes down) only when fenced.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from uuid import UUID

import trio

from kosmo.db import Database, DatabaseUnavailable
from kosmo.process_store import Fenced, beat, bury, leave, register, stale

log = logging.getLogger(__name__)

HEARTBEAT = 1.0  # seconds between two heartbeats
LEASE = 3.0  # seconds without a heartbeat after which a process is dead
LEAVE_TIMEOUT = 2.0


class Membership:
    def __init__(self, db: Database, *, client_id: str,
                 heartbeat: float = HEARTBEAT, lease: float = LEASE) -> None:
        self._db = db
        self._client_id = client_id
        self._heartbeat = heartbeat
        self._lease = lease
        self.process_id: UUID = uuid.uuid4()
        self._steady_since: float | None = None  # start of the unbroken run of heartbeats
        self._last_beat = -float("inf")
        self._registered = False
        self.beats = 0
        self.sweeps = 0  # looks for dead processes (only while steady)
        self.buried: list[UUID] = []

    def steady(self) -> bool:
        """Whether its heartbeats succeeded without a break for the lease: it may judge."""
        return (self._steady_since is not None
                and trio.current_time() - self._steady_since >= self._lease
                and trio.current_time() - self._last_beat <= self._lease / 2)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        registered = await self._db.run(register, self.process_id, self._client_id,
                                        socket.gethostname(), os.getpid())
        for earlier in registered.replaced:
            log.info("gateway process %s replaces %s, an earlier life of client id %s: its "
                     "nodes are adopted now", self.process_id, earlier, self._client_id)
        self._registered = True
        self._steady_since = self._last_beat = trio.current_time()
        log.info("gateway process %s registered (client id %s)", self.process_id,
                 self._client_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._bury_the_dead)
            task_status.started()
            await self._beat()

    async def _beat(self) -> None:
        outage = False
        while True:
            await trio.sleep(self._heartbeat)
            try:
                alive = await self._db.run(beat, self.process_id)
            except DatabaseUnavailable as exc:
                if not outage:
                    log.warning("heartbeat of gateway process %s failed: %s", self.process_id,
                                exc)
                outage = True
                self._steady_since = None
                continue
            now = trio.current_time()
            if not alive:
                self._registered = False
                log.error("gateway process %s was declared dead by another process: it stops "
                          "publishing and exits", self.process_id)
                raise Fenced(f"gateway process {self.process_id} was declared dead")
            if outage:
                log.info("heartbeat of gateway process %s is back", self.process_id)
                outage = False
            if self._steady_since is None or now - self._last_beat > self._lease / 2:
                self._steady_since = now
            self._last_beat = now
            self.beats += 1

    async def _bury_the_dead(self) -> None:
        while True:
            await trio.sleep(self._heartbeat / 2)  # a death is seen within lease + this
            if not self.steady():
                continue
            self.sweeps += 1
            try:
                dead = await self._db.run(stale, self.process_id, self._lease)
            except DatabaseUnavailable:
                continue  # the heartbeat says so
            for process in dead:
                if not self.steady():
                    break  # the database left meanwhile: judge again later
                try:
                    buried = await self._db.run(bury, process.process_id, self._lease)
                except DatabaseUnavailable:
                    break
                if buried:
                    self.buried.append(process.process_id)
                    log.info("gateway process %s (client id %s) is dead: last seen %s; its "
                             "nodes are adopted", process.process_id, process.client_id,
                             process.seen_at.isoformat())

    async def leave(self) -> None:
        """Delete this process's row (shielded, bounded): the others adopt its nodes now."""
        if not self._registered:
            return
        with trio.move_on_after(LEAVE_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self._db.run(leave, self.process_id)
                self._registered = False
            except DatabaseUnavailable as exc:
                log.warning("gateway process %s could not leave (%s): the others adopt its "
                            "nodes after the lease", self.process_id, exc)
        if scope.cancelled_caught:
            log.warning("gateway process %s did not leave within %.0f s: the others adopt its "
                        "nodes after the lease", self.process_id, LEAVE_TIMEOUT)
