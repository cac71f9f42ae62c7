"""The quota ledger actor: the only writer of quota usage and of message status.

Rules:
- Requests arrive on three bounded channels, one lane each: sends (from the HTTP front),
  delivery reports (from the conversation and MQTT paths) and cancels (from the HTTP front).
  Each lane takes everything waiting, up to ``max_batch``, and applies it in ONE transaction
  (group commit): throughput is not bounded by one commit per request, and while a batch
  commits the next one gathers.
- Cancels have a lane of their own rather than sharing the reports lane: a user waits on each
  one, so it must not wait behind the linger of ``queued`` marks nor behind a burst of reports,
  and a report batch stays one kind of request. A cancel changes status and quota like a report
  does, so it stays here, with the only writer of both.
- The lanes run concurrently; PostgreSQL row locks keep them exact (the debit is a conditional
  upsert, a refund is guarded by ``messages.charged``, a cancel and a report lock the message's
  row, and so does the dispatcher's claim: see ``kosmo.ledger_store``).
- Replies are set only after the commit, so a 201 always means "stored and debited".
- If the database is unreachable, every request of the batch fails with DatabaseUnavailable.
  Any other database error fails the batch, which is then retried one request at a time, so a
  bad request never takes its neighbours down with it.
- Each batch commits and publishes its events to the event bus inside the bus's
  ``in_commit_order``, so the live stream receives events in event-id order whatever lane or
  actor wrote them. With the event feed attached (as the gateway runs) the feed orders them,
  and a sends batch commits without waiting for the other lanes: it locks no existing message
  row, and its quota rows in user order, as refunds do. Reports and cancels take turns.
- Then the accepted messages go to the conversations actor as one batch (``dispatch``), in
  creation order. ``created_at`` is strictly increasing within this process. The ids a cancel
  batch canceled go to ``canceled`` after its commit, so the dispatcher drops them from its
  queue.
- What each committed batch did is counted in ``metrics`` (actors/metrics.py), after the
  commit, once per request: a batch that failed counts nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

import psycopg
import trio

from actors.events import EventBus
from actors.metrics import GatewayMetrics
from actors.reply import Reply
from kosmo.channels import put, take_waiting
from kosmo.clock import utcnow
from kosmo.db import Database, DatabaseUnavailable
from kosmo.delivery import Status
from kosmo.events import Event
from kosmo.idempotency import Claim
from kosmo.ledger_store import (
    Accepted,
    Applied,
    Canceled,
    CancelRefusal,
    CancelRequest,
    Refused,
    accept_sends,
    apply_reports,
    cancel_messages,
)
from kosmo.messages import NewMessage, StatusReport

log = logging.getLogger(__name__)
QUEUED_LINGER = 0.01  # seconds a batch of only ``queued`` marks waits for more
T = TypeVar("T")
R = TypeVar("R", "SendRequest", "ReportRequest", "CancelMessage")


@dataclass(frozen=True)
class SendRequest:
    user_id: UUID
    node_id: str
    text: str
    reply: Reply[Accepted | Refused] = field(compare=False)
    queue_position: int | None = None
    estimated_transmit_at: datetime | None = None
    idempotency: Claim | None = None  # stored with its answer, in the same transaction


@dataclass(frozen=True)
class ReportRequest:
    report: StatusReport
    reply: Reply[Applied] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CancelMessage:
    cancel: CancelRequest
    reply: Reply[Canceled | CancelRefusal] = field(compare=False)


Request = SendRequest | ReportRequest | CancelMessage


async def _none_canceled(ids: list[UUID]) -> None:
    pass


class Ledger:
    def __init__(self, db: Database, *,
                 dispatch: Callable[[list[NewMessage]], Awaitable[None]],
                 message_ttl: float, events: EventBus | None = None,
                 max_batch: int = 256,
                 clock: Callable[[], datetime] = utcnow,
                 canceled: Callable[[list[UUID]], Awaitable[None]] = _none_canceled,
                 metrics: GatewayMetrics | None = None) -> None:
        self._db = db
        self.metrics = metrics or GatewayMetrics()  # counts what each committed batch did
        self._dispatch = dispatch
        self._canceled = canceled
        self._events = events
        self._ttl = timedelta(seconds=message_ttl)
        self._max_batch = max_batch
        self._clock = clock
        self._last_created = datetime.min.replace(tzinfo=clock().tzinfo)
        self._sends = trio.open_memory_channel[SendRequest](max_batch)
        self._reports = trio.open_memory_channel[ReportRequest](max_batch)
        self._cancels = trio.open_memory_channel[CancelMessage](max_batch)
        self.batches = 0

    async def send(self, user_id: UUID, node_id: str, text: str, *,
                   queue_position: int | None = None,
                   estimated_transmit_at: datetime | None = None,
                   idempotency: Claim | None = None) -> Accepted | Refused:
        """Check, debit and store one outbound message, with its admission's estimate (and,
        with an Idempotency-Key claim, its answer); the reply comes after the commit."""
        reply: Reply[Accepted | Refused] = Reply()
        await put(self._sends[0], SendRequest(user_id, node_id, text, reply, queue_position,
                                              estimated_transmit_at, idempotency))
        return await reply.wait()

    async def cancel(self, user_id: UUID, message_id: UUID) -> Canceled | CancelRefusal:
        """Cancel the user's message if it still waits; the reply comes after the commit."""
        reply: Reply[Canceled | CancelRefusal] = Reply()
        await put(self._cancels[0], CancelMessage(CancelRequest(user_id, message_id), reply))
        return await reply.wait()

    async def report(self, report: StatusReport, *, wait: bool = False) -> Applied | None:
        """Apply a delivery report; with ``wait``, return what it did once committed."""
        reply: Reply[Applied] | None = Reply() if wait else None
        await put(self._reports[0], ReportRequest(report, reply))
        return await reply.wait() if reply is not None else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Two lanes, each a group-commit loop of its own. Sends wait on the conversations
        # actor after their commit (backpressure); reports must never wait behind that, since
        # conversation actors report ``queued`` here: one lane would close a cycle
        # ledger -> conversations -> ledger that deadlocks under load.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._lane, self._sends[1], self._process_sends)
            nursery.start_soon(self._lane, self._reports[1], self._process_reports)
            nursery.start_soon(self._lane, self._cancels[1], self._process_cancels)
            task_status.started()

    async def _lane(self, receive: trio.MemoryReceiveChannel[R],
                    process: Callable[[list[R]], Awaitable[None]]) -> None:
        async with receive:
            async for first in receive:
                batch = take_waiting(receive, [first], self._max_batch)
                if all(_lingers(r) for r in batch):
                    # Nobody waits on ``queued`` marks: gather a few ms of them into one
                    # transaction instead of one small transaction per published message.
                    await trio.sleep(QUEUED_LINGER)
                    batch = take_waiting(receive, batch, self._max_batch)
                await process(batch)

    async def _process_sends(self, batch: list[SendRequest]) -> None:
        new = [self._new_message(s) for s in batch]
        claims = [s.idempotency for s in batch]
        results = await self._commit(batch, self._process_sends, _committing(accept_sends), new,
                                     self._clock(), claims if any(claims) else [], alone=False)
        if results is None:
            return
        self.metrics.sends(results)
        for send, result in zip(batch, results, strict=True):
            send.reply.set(result)
        accepted = [r.message for r in results if isinstance(r, Accepted)]
        if accepted:
            await self._dispatch(accepted)  # one hand-over for the whole batch

    async def _process_reports(self, batch: list[ReportRequest]) -> None:
        results = await self._commit(batch, self._process_reports, _committing(apply_reports),
                                     [r.report for r in batch])
        if results is None:
            return
        self.metrics.reports(results)
        for report, outcome in zip(batch, results, strict=True):
            if report.reply is not None:
                report.reply.set(outcome)

    async def _process_cancels(self, batch: list[CancelMessage]) -> None:
        results = await self._commit(batch, self._process_cancels, cancel_messages,
                                     [c.cancel for c in batch], self._clock())
        if results is None:
            return
        for request, outcome in zip(batch, results, strict=True):
            request.reply.set(outcome)
        canceled = [r.message.message_id for r in results if isinstance(r, Canceled)]
        self.metrics.canceled(len(canceled))
        if canceled:
            await self._canceled(canceled)

    async def _commit(self, batch: Sequence[R], retry: Callable[[list[R]], Awaitable[None]],
                      fn: Callable[..., tuple[list[T], Any]], *args: Any,
                      alone: bool = True) -> list[T] | None:
        """Run ``fn`` over the batch in one transaction and publish its events, in commit
        order (``alone``: see ``EventBus.in_commit_order``). On failure, fail the batch's
        replies (database down) or retry its requests one by one (any other database error).
        None: the replies are already settled."""
        ordered = self._events.in_commit_order(alone=alone) if self._events else _no_events()
        async with ordered as publish:
            try:
                results, events = await self._db.run(fn, *args)
            except DatabaseUnavailable as exc:
                log.warning("database unavailable; %d requests refused: %s", len(batch), exc)
                for request in batch:
                    _fail(request, exc)
                return None
            except psycopg.Error:
                if len(batch) == 1:
                    log.exception("ledger request failed: %r", batch[0])
                    _fail(batch[0], DatabaseUnavailable("the request could not be stored"))
                    return None
                results = None
            else:
                self.batches += 1
                await publish(events)
                return results
        for request in batch:  # outside the ordering lock: each takes it again
            await retry([request])
        return None

    def _new_message(self, send: SendRequest) -> NewMessage:
        created = max(self._clock(), self._last_created + timedelta(microseconds=1))
        self._last_created = created
        return NewMessage(uuid.uuid4(), send.user_id, send.node_id, send.text, created,
                          created + self._ttl, queue_position=send.queue_position,
                          estimated_transmit_at=send.estimated_transmit_at)


@asynccontextmanager
async def _no_events() -> AsyncIterator[Callable[[Sequence[Event]], Awaitable[None]]]:
    async def discard(events: Sequence[Event]) -> None:
        pass

    yield discard


def _committing(fn: Callable[..., tuple[list[T], Any]]) -> Callable[..., tuple[list[T], Any]]:
    """``fn`` committing its transaction in the round trip of its last writes."""
    return partial(fn, commit=True)


def _lingers(request: Request) -> bool:
    return (isinstance(request, ReportRequest) and request.reply is None
            and request.report.report.status is Status.QUEUED)


def _fail(request: Request, error: Exception) -> None:
    if request.reply is not None:
        request.reply.fail(error)
