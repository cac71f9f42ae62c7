"""The quota ledger actor: the only writer of quota usage and of message status.

Rules:
- Requests (sends from the HTTP front, delivery reports from the conversation and MQTT paths)
  arrive on one bounded channel. The actor takes everything waiting, up to ``max_batch``, and
  applies it in ONE transaction (group commit): throughput is not bounded by one commit per
  request, and while a batch commits the next one gathers.
- Replies are set only after the commit, so a 201 always means "stored and debited".
- If the database is unreachable, every request of the batch fails with DatabaseUnavailable.
  Any other database error fails the batch, which is then retried one request at a time, so a
  bad request never takes its neighbours down with it.
- After the commit, accepted messages go to the conversations actor (``dispatch``), in
  creation order. ``created_at`` is strictly increasing within this process.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import trio

from actors.reply import Reply
from kosmo.clock import utcnow
from kosmo.db import Database, DatabaseUnavailable
from kosmo.ledger_store import (
    Accepted,
    Applied,
    NewMessage,
    Refused,
    StatusReport,
    accept_sends,
    apply_reports,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Send:
    user_id: UUID
    node_id: str
    text: str
    reply: Reply[Accepted | Refused] = field(compare=False)


@dataclass(frozen=True)
class Report:
    report: StatusReport
    reply: Reply[Applied] | None = field(default=None, compare=False)


Request = Send | Report


class Ledger:
    def __init__(self, db: Database, *, dispatch: Callable[[NewMessage], Awaitable[None]],
                 message_ttl: float, max_batch: int = 256,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._dispatch = dispatch
        self._ttl = timedelta(seconds=message_ttl)
        self._max_batch = max_batch
        self._clock = clock
        self._last_created = datetime.min.replace(tzinfo=clock().tzinfo)
        self._send, self._receive = trio.open_memory_channel[Request](max_batch)
        self.batches = 0

    async def send(self, user_id: UUID, node_id: str, text: str) -> Accepted | Refused:
        """Check, debit and store one outbound message; the reply comes after the commit."""
        reply: Reply[Accepted | Refused] = Reply()
        await self._send.send(Send(user_id, node_id, text, reply))
        return await reply.wait()

    async def report(self, report: StatusReport, *, wait: bool = False) -> Applied | None:
        """Apply a delivery report; with ``wait``, return what it did once committed."""
        reply: Reply[Applied] | None = Reply() if wait else None
        await self._send.send(Report(report, reply))
        return await reply.wait() if reply is not None else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._process(batch)

    async def _process(self, batch: list[Request]) -> None:
        sends = [r for r in batch if isinstance(r, Send)]
        reports = [r for r in batch if isinstance(r, Report)]
        new = [self._new_message(s) for s in sends]
        try:
            accepted, applied = await self._db.run(
                _apply, new, [r.report for r in reports], self._clock())
        except DatabaseUnavailable as exc:
            log.warning("database unavailable; %d requests refused: %s", len(batch), exc)
            for request in batch:
                _fail(request, exc)
            return
        except psycopg.Error:
            if len(batch) == 1:
                log.exception("ledger request failed: %r", batch[0])
                _fail(batch[0], DatabaseUnavailable("the request could not be stored"))
                return
            for request in batch:
                await self._process([request])
            return
        self.batches += 1
        for send, result in zip(sends, accepted, strict=True):
            send.reply.set(result)
        for report, outcome in zip(reports, applied, strict=True):
            if report.reply is not None:
                report.reply.set(outcome)
        for result in accepted:
            if isinstance(result, Accepted):
                await self._dispatch(result.message)

    def _new_message(self, send: Send) -> NewMessage:
        created = max(self._clock(), self._last_created + timedelta(microseconds=1))
        self._last_created = created
        return NewMessage(uuid.uuid4(), send.user_id, send.node_id, send.text, created,
                          created + self._ttl)


def _apply(conn: psycopg.Connection[Any], sends: list[NewMessage], reports: list[StatusReport],
           now: datetime) -> tuple[list[Accepted | Refused], list[Applied]]:
    return accept_sends(conn, sends, now), apply_reports(conn, reports)


def _fail(request: Request, error: Exception) -> None:
    if request.reply is not None:
        request.reply.fail(error)
