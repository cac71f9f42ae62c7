"""Conversation actors: one per mesh node, spawned on demand, reaped when idle, at most
``max_nodes`` at once.

Rules:
- The router owns the node table (``kosmo.node_table``: the bound, eviction, quiescence, the
  nodes waiting in the database) and a link per node actor (its channel, the message ids it
  *holds*, its behind flag); nobody else touches them. Stored messages (``dispatch``) and the
  node actors' notices (frozen) reach it on ONE bounded channel, in order; it applies the
  table's decisions before its next item.
- The database is the queue; node channels are only a fast path. The router never waits for a
  node: once ``NODE_QUEUE`` messages wait in a node's channel it adds a catch-up mark and
  queues nothing more for the node (*behind*). The actor that takes the mark tells the router
  (``_Took``), then reads every message of its node handed to a bridge and not yet queued
  from the database, oldest first, and hands out those it has not handed out recently. Not
  only those created after the last one it handed out: messages are handed over in another
  order than they were created (another gateway process may have accepted older ones that
  this one, the node's publisher, claims later; the fair queue may give a user of a heavier
  plan a later message's turn first). A message the router left out was stored before that
  notice reached the router, so before the read: order holds, and a broker outage or a burst
  never blocks senders nor grows memory.
- A node actor hands its node's messages to the MQTT actor in creation order, a window of up
  to ``WINDOW`` in flight at once (one connection keeps their order), and reports each
  ``queued`` to the ledger at its PUBACK. While the broker is unreachable it waits for the
  connection and publishes again from the first message not acknowledged, so order holds
  across reconnects. A message past its deadline is reported ``expired`` instead.
- A message id a node actor holds (in its channel, or taken and not yet reported handed out),
  handed out recently, or handed out by its last two catch-ups is not handed out again; one
  published twice anyway (two processes, a crash) is fine: consumers dedupe by
  ``message_id``. Why the catch-ups' ids, however many: the router queues a node's messages
  in its channel again from the notice on, while the catch-up that follows the notice may
  read the same messages, and hand out far more than the recent ids remember before the
  actor gets back to its channel; and the next catch-up may read again what this one handed
  out while their ``queued`` marks are not yet committed.
- When a window leaves its channel empty (and at least every ``NODE_QUEUE`` items) a node
  actor tells the router how many items it took in all (``_Took``). When that is all the
  router put in and it is not behind, it is *quiescent* (its channel is empty, it waits on
  it). Only a quiescent one is stopped (its channel closed), so no message is ever stranded
  and a node never has two actors publishing. After ``idle`` seconds without work it tells
  the router (``_Idle``), which reaps it if it is still quiescent. The actor of a node that
  waited in the database, or whose actor failed, starts with the catch-up mark.
- Supervision: a node actor contains and logs its own failure (``_Failed``: the router forgets
  it and the outbox hands its messages out again); the router itself failing brings the
  gateway down.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Protocol
from uuid import UUID

import trio

from actors.mqtt import MqttUnavailable
from kosmo.channels import take_waiting
from kosmo.clock import utcnow
from kosmo.db import DatabaseUnavailable
from kosmo.delivery import Report, Status
from kosmo.messages import NewMessage, StatusReport
from kosmo.node_table import Actor, NodeTable, Start, WaitInDatabase
from kosmo.wire import outbound_payload, outbound_topic

log = logging.getLogger(__name__)

NODE_QUEUE = 64
WINDOW = 16  # a node's messages in flight to the broker at once
RECENT = 4 * NODE_QUEUE


class Publication(Protocol):
    """A publish handed to the MQTT connection (``MqttActor.start_publish``)."""

    async def wait(self) -> None: ...

# A node's messages handed to a bridge and not yet queued, in creation order, after the key
# (created_at, message_id) given (from the first when None), at most the count given.
LoadPending = Callable[[str, tuple[datetime, UUID] | None, int], Awaitable[list[NewMessage]]]


@dataclass(frozen=True)
class _CatchUp:
    """The last item in a behind node's channel: read the database next."""


CATCH_UP = _CatchUp()
Item = NewMessage | _CatchUp  # in a node's channel


def _is_catch_up(item: Item) -> bool:  # the mark ends a window: what follows waits for it
    return isinstance(item, _CatchUp)


@dataclass(frozen=True)
class _Took:
    """From a node actor: it took ``taken`` items from its channel in all and handed them out;
    next it waits on its channel or, if the last was the catch-up mark, reads the database."""

    actor: Actor
    taken: int


@dataclass(frozen=True)
class _Idle:
    actor: Actor  # no work for ``idle`` seconds


@dataclass(frozen=True)
class _Failed:
    actor: Actor  # it failed; it ends once the router closed its channel


Inbox = list[NewMessage] | _Took | _Idle | _Failed  # in the router's channel


@dataclass(slots=True)
class _Link:
    """The router's end of one node actor's channel."""

    actor: Actor
    send: trio.MemorySendChannel[Item]
    sent: int = 0  # items put in the channel
    held: dict[UUID, int] = field(default_factory=dict)  # id -> its item number
    behind: bool = False

    def put(self, item: Item) -> None:
        self.send.send_nowait(item)  # never full: at most NODE_QUEUE messages and the mark
        if isinstance(item, NewMessage):
            self.held[item.message_id] = self.sent
        else:
            self.behind = True
        self.sent += 1


class Conversations:
    def __init__(self, *, start_publish: Callable[[str, bytes], Publication],
                 broker_ready: Callable[[], Awaitable[None]],
                 report: Callable[[StatusReport], Awaitable[object]],
                 load_pending: LoadPending, topic_root: str,
                 idle: float = 300.0, max_nodes: int = 10_000, backoff_max: float = 5.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._start_publish = start_publish
        self._broker_ready = broker_ready
        self._report = report
        self._load_pending = load_pending
        self._root = topic_root
        self._idle = idle
        self._backoff_max = backoff_max
        self._clock = clock
        self._send, self._receive = trio.open_memory_channel[Inbox](NODE_QUEUE)
        self._table = NodeTable(max_nodes)
        self._links: dict[str, _Link] = {}
        self.published = 0

    @property
    def evicted(self) -> int:  # quiescent node actors stopped to make room for another node
        return self._table.evicted

    @property
    def refused(self) -> int:  # messages left in the database: no actor could be started
        return self._table.refused

    async def dispatch(self, messages: list[NewMessage]) -> None:
        """Hand over stored messages, oldest first; returns without waiting for any node."""
        await self._send.send(messages)

    def active_nodes(self) -> int:
        return len(self._links)

    def node_ids(self) -> list[str]:
        return list(self._links)

    def waiting_nodes(self) -> int:
        """Nodes without an actor whose messages wait in the database for one."""
        return len(self._table.waiting_nodes())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            async with self._receive:
                async for item in self._receive:
                    if isinstance(item, list):
                        for message in item:
                            self._route(nursery, message)
                    elif isinstance(item, _Took):
                        self._took(nursery, item)
                    else:
                        decide = self._table.idle if isinstance(item, _Idle) else self._table.failed
                        if stop := decide(item.actor):
                            self._close(stop.actor)
            nursery.cancel_scope.cancel()

    def _route(self, nursery: trio.Nursery, message: NewMessage) -> None:
        decision = self._table.dispatch(message.node_id)
        if isinstance(decision, WaitInDatabase):
            if decision.first:
                log.warning("%d conversation actors, none quiescent: messages for further "
                            "nodes wait in the database", len(self._links))
            return  # the outbox hands it out again
        if isinstance(decision, Start):
            self._spawn(nursery, decision)
        link = self._links[message.node_id]
        if link.behind or message.message_id in link.held:
            return  # the node actor will read it from the database, or has it already
        if link.send.statistics().current_buffer_used >= NODE_QUEUE:
            log.info("node %s is behind: its next messages wait in the database",
                     message.node_id)
            link.put(CATCH_UP)
            return
        link.put(message)
        self._table.busy(link.actor)

    def _spawn(self, nursery: trio.Nursery, start: Start) -> _Link:
        """Start a node actor as the table decided (after its eviction, if any)."""
        if start.evict is not None:
            self._close(start.evict)
        if start.all_served:
            log.info("every waiting node has a conversation actor again (%d messages waited "
                     "in the database so far)", self._table.refused)
        send, receive = trio.open_memory_channel[Item](NODE_QUEUE + 1)  # + the catch-up mark
        link = self._links[start.actor.node_id] = _Link(start.actor, send)
        if start.read_database_first:
            link.put(CATCH_UP)  # some of its messages may be in the database only
        # Its notices go on self._send, open while the router runs: no clone (memory) per actor.
        nursery.start_soon(self._node_actor, start.actor, receive)
        return link

    def _close(self, actor: Actor) -> None:
        """Stop ``actor``: it ends once it has taken what its channel holds (nothing, unless
        it failed)."""
        self._links.pop(actor.node_id).send.close()

    def _took(self, nursery: trio.Nursery, took: _Took) -> None:
        link = self._links.get(took.actor.node_id)
        if link is None or link.actor != took.actor:
            return  # from an actor already stopped
        while link.held and next(iter(link.held.values())) < took.taken:
            del link.held[next(iter(link.held))]
        if took.taken < link.sent:
            return  # more waits in its channel
        if link.behind:
            link.behind = False  # it reads the database now: newer messages go to its channel
            return
        handover = self._table.quiescent(took.actor)
        if handover is not None:
            self._close(handover.stop)
            self._spawn(nursery, handover.start)

    async def _node_actor(self, actor: Actor, receive: trio.MemoryReceiveChannel[Item]) -> None:
        recent: OrderedDict[UUID, None] = OrderedDict()
        caught_up: set[UUID] = set()  # handed out by the current or last catch-up
        earlier: set[UUID] = set()  # by the one before it (see rules)
        taken = reported = 0  # items taken from the channel; in the last _Took

        async def hand_out(messages: list[NewMessage], *, catching_up: bool = False) -> None:
            fresh = [m for m in messages if m.message_id not in recent
                     and m.message_id not in caught_up and m.message_id not in earlier]
            if fresh:
                await self._deliver(fresh)
            for message in fresh:
                recent[message.message_id] = None
                if len(recent) > RECENT:
                    recent.popitem(last=False)
            if catching_up:
                caught_up.update(m.message_id for m in fresh)

        async with receive:
            try:
                while True:
                    with trio.move_on_after(self._idle) as idle:
                        try:
                            window = [await receive.receive()]
                        except trio.EndOfChannel:
                            return
                    if idle.cancelled_caught:
                        await self._send.send(_Idle(actor))
                        continue
                    take_waiting(receive, window, WINDOW, ends_batch=_is_catch_up)
                    taken += len(window)
                    messages = [item for item in window if isinstance(item, NewMessage)]
                    await hand_out(messages)
                    if len(messages) < len(window):  # it ended with the catch-up mark
                        await self._send.send(_Took(actor, taken))  # before reading: see rules
                        earlier, caught_up = caught_up, set()
                        await self._catch_up(actor.node_id, partial(hand_out, catching_up=True))
                    drained = receive.statistics().current_buffer_used == 0
                    if drained or taken - reported >= NODE_QUEUE:
                        reported = taken
                        await self._send.send(_Took(actor, taken))
            except Exception:
                log.exception("conversation actor for node %s failed", actor.node_id)
                await self._send.send(_Failed(actor))
                async for _ in receive:
                    pass  # until the router closes it: it never puts into a closed channel

    async def _catch_up(self, node_id: str,
                        hand_out: Callable[[list[NewMessage]], Awaitable[None]]) -> None:
        """Hand out the node's messages handed to a bridge and not yet queued, oldest first,
        a page at a time (``hand_out`` skips those handed out recently)."""
        after: tuple[datetime, UUID] | None = None
        while True:
            try:
                pending = await self._load_pending(node_id, after, NODE_QUEUE)
            except DatabaseUnavailable as exc:
                log.warning("node %s cannot catch up yet: %s", node_id, exc)
                await trio.sleep(1 + random.random())
                continue
            for start in range(0, len(pending), WINDOW):
                await hand_out(pending[start:start + WINDOW])
            if len(pending) < NODE_QUEUE:
                return
            after = (pending[-1].created_at, pending[-1].message_id)

    async def _deliver(self, messages: list[NewMessage]) -> None:
        """Publish a window of one node's messages, all in flight at once, in order; report
        each ``queued`` at its PUBACK. After a lost connection, publish again from the first
        one not acknowledged, so order holds (a message may reach the broker twice)."""
        pending = list(messages)
        delay = 0.05
        while pending:
            now = self._clock()
            for message in [m for m in pending if m.expires_at <= now]:
                # Too late for the air: expire it here rather than hand the bridge dead mail.
                await self._report(StatusReport(message.message_id,
                                                Report(Status.EXPIRED, "ttl"), now))
            pending = [m for m in pending if m.expires_at > now]
            started: list[Publication] = []
            failure: MqttUnavailable | None = None
            for message in pending:
                assert message.bridge_id is not None, "only handed messages are published"
                try:
                    started.append(self._start_publish(
                        outbound_topic(self._root, message.bridge_id, message.node_id),
                        outbound_payload(message)))
                except MqttUnavailable as exc:
                    failure = exc
                    break
            acked = 0
            for message, publication in zip(pending, started, strict=False):
                try:
                    await publication.wait()
                except MqttUnavailable as exc:
                    failure = failure or exc
                    continue  # wait for the others too: they fail at once with the connection
                if failure is None:
                    acked += 1
                    self.published += 1
                    await self._report(StatusReport(message.message_id, Report(Status.QUEUED),
                                                    self._clock()))
            pending = pending[acked:]
            if failure is None or not pending:
                return
            log.info("%d messages to node %s wait for the broker (first %s): %s",
                     len(pending), pending[0].node_id, pending[0].message_id, failure)
            # Wait for the connection, then a short jittered pause so that many node actors
            # do not retry in lockstep; the pause grows if publishing keeps failing.
            await self._broker_ready()
            await trio.sleep(delay * random.random())
            delay = min(delay * 2, self._backoff_max)
