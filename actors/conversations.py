"""Conversation actors: one per mesh node, spawned on demand, reaped when idle, at most
``max_nodes`` at once.

Rules:
- The router owns the table of node actors; nobody else touches it. It receives stored messages
  (``dispatch``) and idle notices from node actors on ONE bounded channel, in order.
- The database is the queue; node channels are only a fast path. The router never waits for a
  node: when a node's channel is full, the node is marked *behind* and further messages for it
  are not queued in memory. Once its channel is drained, the node actor reads its pending
  messages from the database, oldest first, after the last one it handed out. So a broker
  outage or a burst never blocks senders, never grows memory, and keeps each node's order.
- A node actor hands its node's messages to the MQTT actor in creation order, a window of up
  to ``WINDOW`` in flight at once (one connection keeps their order), and reports each
  ``queued`` to the ledger once the broker acknowledged it (PUBACK). While the broker is
  unreachable it waits for the connection and publishes again from the first message not
  acknowledged, so order holds across reconnects. A message already past its deadline is
  reported ``expired`` instead.
- A message id waiting in a node's channel, or handed out recently, is not handed out again;
  a message published twice anyway (by two processes, or after a crash) is fine: consumers
  dedupe by ``message_id``.
- A node actor is *quiescent* when its channel is empty, it hands nothing out and it is not
  behind; the router keeps the quiescent ones in the order they became so. Only a quiescent
  node actor is ever stopped (its channel closed), so no message is ever stranded, and a
  stopped one never publishes again, so a node never has two actors publishing at once.
- Reaping: after ``idle`` seconds without work a node actor tells the router; the router stops
  it if it is still quiescent.
- Bound: the router holds at most ``max_nodes`` node actors. A message for a node without one,
  when at the bound, first stops the quiescent node actor that has been so the longest
  (eviction). If none is quiescent, no actor is started: the message stays ``pending`` in the
  database and the node joins the *waiting* nodes, first come first served. The next node
  actor to become quiescent is stopped and hands its place to the first waiting node (the
  outbox, which hands pending messages out again, is the backstop). A waiting node's actor
  starts by reading its pending messages from the database, oldest first, before any newer
  message: order holds. So does the next actor of a node whose actor failed. Memory beyond
  the actors: one entry per waiting node.
- A node record (channel, waiting ids, behind flag) and the quiescent order belong to the router
  and to the node tasks the router spawned, as its children; all run in the Trio thread and
  update them without an await in between, so no lock is needed and no other actor sees them.
- Supervision: a node actor contains and logs its own failure (the router forgets it and the
  outbox hands its messages out again); the router itself failing brings the gateway down.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from uuid import UUID

import trio

from actors.mqtt import MqttUnavailable
from kosmo.clock import utcnow
from kosmo.db import DatabaseUnavailable
from kosmo.delivery import Report, Status
from kosmo.messages import NewMessage, StatusReport
from kosmo.wire import outbound_payload, outbound_topic

log = logging.getLogger(__name__)

NODE_QUEUE = 64
WINDOW = 16  # a node's messages in flight to the broker at once
RECENT = 4 * NODE_QUEUE


class Publication(Protocol):
    """A publish handed to the MQTT connection (``MqttActor.start_publish``)."""

    async def wait(self) -> None: ...

LoadPending = Callable[[str, datetime, int], Awaitable[list[NewMessage]]]


@dataclass(frozen=True)
class _Idle:
    node_id: str
    generation: int


@dataclass
class _Node:
    send: trio.MemorySendChannel[NewMessage]
    generation: int
    waiting: set[UUID] = field(default_factory=set)
    behind: bool = False


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
        self._send, self._receive = trio.open_memory_channel[list[NewMessage] | _Idle](
            NODE_QUEUE)
        self._nodes: dict[str, _Node] = {}
        self._quiescent: OrderedDict[str, _Node] = OrderedDict()  # longest quiescent first
        # Nodes whose next actor must start from the database, first come first served.
        self._from_database: OrderedDict[str, None] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._max_nodes = max_nodes
        self._generation = 0
        self._at_bound = False
        self.published = 0
        self.evicted = 0  # quiescent node actors stopped to make room for another node
        self.refused = 0  # messages left in the database because no actor could be started

    async def dispatch(self, messages: list[NewMessage]) -> None:
        """Hand over stored messages, oldest first; returns without waiting for any node."""
        await self._send.send(messages)

    def active_nodes(self) -> int:
        return len(self._nodes)

    def node_ids(self) -> list[str]:
        return list(self._nodes)

    def waiting_nodes(self) -> int:
        """Nodes without an actor whose messages wait in the database for one."""
        return len(self._from_database)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            async with self._receive:
                async for item in self._receive:
                    if isinstance(item, _Idle):
                        self._reap(item)
                    else:
                        for message in item:
                            self._route(nursery, message)
            nursery.cancel_scope.cancel()

    def _route(self, nursery: trio.Nursery, message: NewMessage) -> None:
        node = self._nodes.get(message.node_id)
        if node is None:
            node = self._spawn(nursery, message.node_id)
            if node is None:
                return  # it waits in the database; the outbox hands it out again
        if node.behind or message.message_id in node.waiting:
            return  # the node actor will read it from the database, or has it already
        try:
            node.send.send_nowait(message)
            node.waiting.add(message.message_id)
            self._quiescent.pop(message.node_id, None)
        except trio.WouldBlock:
            log.info("node %s is behind: its next messages wait in the database",
                     message.node_id)
            node.behind = True

    def _spawn(self, nursery: trio.Nursery, node_id: str) -> _Node | None:
        """Start an actor for ``node_id``, making room by eviction if at the bound; None when
        there is no room (the node is remembered: its next actor starts from the database)."""
        if len(self._nodes) >= self._max_nodes:
            if not self._quiescent:
                self.refused += 1
                self._from_database.setdefault(node_id)
                if not self._at_bound:
                    self._at_bound = True
                    log.warning("%d conversation actors, none quiescent: messages for further "
                                "nodes wait in the database", len(self._nodes))
                return None
            evicted_id, evicted = self._quiescent.popitem(last=False)
            self._stop(evicted_id, evicted)
            self.evicted += 1
        self._generation += 1
        send, receive = trio.open_memory_channel[NewMessage](NODE_QUEUE)
        # A node some of whose messages may be in the database only (refused at the bound, or
        # its actor failed) starts behind: it reads them first, oldest first.
        behind = node_id in self._from_database
        self._from_database.pop(node_id, None)
        if self._at_bound and not self._from_database:
            self._at_bound = False
            log.info("every waiting node has a conversation actor again (%d messages waited "
                     "in the database so far)", self.refused)
        node = self._nodes[node_id] = _Node(send, self._generation, behind=behind)
        nursery.start_soon(self._node_actor, node_id, node, receive)
        return node

    def _stop(self, node_id: str, node: _Node) -> None:
        del self._nodes[node_id]
        self._quiescent.pop(node_id, None)
        node.send.close()

    def _reap(self, idle: _Idle) -> None:
        node = self._quiescent.get(idle.node_id)
        if node is not None and node.generation == idle.generation:
            self._stop(idle.node_id, node)

    def _mark_quiescent(self, node_id: str, node: _Node) -> None:
        """Called by a node actor about to wait on its channel: it joins the quiescent ones, or,
        at the bound, hands its place to the first waiting node (and finds its channel closed).
        Below the bound a waiting node gets an actor with its next message."""
        if self._nodes.get(node_id) is not node or node.behind or node.waiting:
            return
        if (self._from_database and len(self._nodes) >= self._max_nodes
                and self._nursery is not None):
            self._stop(node_id, node)
            self.evicted += 1
            self._spawn(self._nursery, next(iter(self._from_database)))
        elif node_id not in self._quiescent:
            self._quiescent[node_id] = node

    async def _node_actor(self, node_id: str, node: _Node,
                          receive: trio.MemoryReceiveChannel[NewMessage]) -> None:
        recent: OrderedDict[UUID, None] = OrderedDict()
        cursor = datetime.min.replace(tzinfo=self._clock().tzinfo)

        async def hand_out(messages: list[NewMessage]) -> None:
            nonlocal cursor
            fresh = [m for m in messages if m.message_id not in recent]
            if fresh:
                await self._deliver(fresh)
            for message in fresh:
                recent[message.message_id] = None
                if len(recent) > RECENT:
                    recent.popitem(last=False)
            cursor = max([cursor, *(m.created_at for m in messages)])

        try:
            async with receive:
                while True:
                    if node.behind and receive.statistics().current_buffer_used == 0:
                        cursor = await self._catch_up(node_id, node, cursor, hand_out)
                        continue
                    self._mark_quiescent(node_id, node)  # no await until receive()
                    with trio.move_on_after(self._idle) as idle:
                        try:
                            window = [await receive.receive()]
                        except trio.EndOfChannel:
                            return
                    if idle.cancelled_caught:
                        await self._send.send(_Idle(node_id, node.generation))
                        continue
                    while len(window) < WINDOW:
                        try:
                            window.append(receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await hand_out(window)
                    node.waiting.difference_update(m.message_id for m in window)
        except Exception:
            log.exception("conversation actor for node %s failed", node_id)
            if self._nodes.get(node_id) is node:
                self._stop(node_id, node)
                self._from_database[node_id] = None  # what it held is in the database

    async def _catch_up(self, node_id: str, node: _Node, cursor: datetime,
                        hand_out: Callable[[list[NewMessage]], Awaitable[None]]) -> datetime:
        """Hand out the node's pending messages stored after ``cursor``, oldest first."""
        node.behind = False  # from here on the router queues new messages again
        while True:
            try:
                pending = await self._load_pending(node_id, cursor, NODE_QUEUE)
            except DatabaseUnavailable as exc:
                log.warning("node %s cannot catch up yet: %s", node_id, exc)
                node.behind = True
                await trio.sleep(1 + random.random())
                return cursor
            for start in range(0, len(pending), WINDOW):
                await hand_out(pending[start:start + WINDOW])
            if pending:
                cursor = max(cursor, pending[-1].created_at)
            if len(pending) < NODE_QUEUE:
                return cursor

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
                try:
                    started.append(self._start_publish(
                        outbound_topic(self._root, message.node_id), outbound_payload(message)))
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
