"""The inbound consumer: delivery reports, replies, nodes heard and bridge states, from MQTT.

Rules:
- It takes every MQTT message waiting (up to ``max_batch``) and handles them together:
  delivery reports go through the ledger (state machine, refunds), replies are stored and
  threaded, and nodes heard stored in coverage (kosmo/coverage_store.py), in one transaction
  with the batch's dead letters.
- A message is acknowledged to the broker only after what it carried is committed, so a crash
  or a database outage loses nothing: unacknowledged QoS 1 messages come again. While the
  database is down the batch is retried with backoff, and nothing further is consumed.
- Bad input (over 4 KiB, not UTF-8 JSON, wrong fields, an unknown message id) never stops the
  actor: it is logged once with its reason, counted and kept in ``dead_letters``. Its good
  neighbours in the batch are stored as usual.
- Bridge states (retained) are kept in memory, latest per bridge; ``bridges()`` returns a copy,
  with the number of nodes each has heard read from the database (left out while it is down).
  Each state, each report that moved a message and each batch of nodes heard is told to the
  dispatcher (``bridge_changed``, ``settled``, ``heard``), after the commit.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import trio

from actors.events import EventBus
from actors.ledger import Ledger
from actors.metrics import GatewayMetrics
from actors.mqtt import MqttInbound
from kosmo import wire
from kosmo.channels import take_waiting
from kosmo.clock import iso, utcnow
from kosmo.coverage_store import nodes_heard, store_coverage
from kosmo.db import Database, DatabaseUnavailable
from kosmo.events import Event
from kosmo.inbound_store import DeadLetter, Stored, store_inbound
from kosmo.ledger_store import Applied
from kosmo.messages import StatusReport

log = logging.getLogger(__name__)


async def _ignore_bridge(bridge_id: str, state: wire.BridgeState | None) -> None:
    pass


async def _ignore() -> None:
    pass


@dataclass(frozen=True)
class _Bridge:
    state: str
    info: dict[str, Any]
    last_seen: datetime


class InboundConsumer:
    def __init__(self, db: Database, ledger: Ledger, *, topic_root: str, thread_window: float,
                 ack: Callable[[MqttInbound], Awaitable[None]], events: EventBus,
                 bridge_changed: Callable[[str, wire.BridgeState | None], Awaitable[None]]
                 = _ignore_bridge, settled: Callable[[], Awaitable[None]] = _ignore,
                 heard: Callable[[], Awaitable[None]] = _ignore,
                 max_batch: int = 256, clock: Callable[[], datetime] = utcnow,
                 metrics: GatewayMetrics | None = None) -> None:
        self._db = db
        self._metrics = metrics or GatewayMetrics()
        self._ledger = ledger
        self._status_topic = wire.status_topic(topic_root)
        self._inbound_topic = wire.inbound_topic(topic_root)
        self._window = thread_window
        self._ack = ack
        self._events = events
        self._max_batch = max_batch
        self._clock = clock
        self._bridges: dict[str, _Bridge] = {}
        self._bridge_changed = bridge_changed
        self._settled = settled
        self._heard = heard
        self.dead_letters = 0
        self.stored = 0

    async def bridges(self) -> list[dict[str, Any]]:
        known = sorted(self._bridges.items())
        try:
            heard = await self._db.run(nodes_heard, [bridge_id for bridge_id, _ in known])
        except DatabaseUnavailable:
            heard = None
        return [{**b.info, "bridge_id": bridge_id, "state": b.state,
                 "last_seen": iso(b.last_seen)}
                | ({} if heard is None else {"nodes_heard": heard.get(bridge_id, 0)})
                for bridge_id, b in known]

    def states(self) -> dict[str, str]:
        """Each known bridge's latest state (``online``, ``offline``)."""
        return {bridge_id: b.state for bridge_id, b in self._bridges.items()}

    async def run(self, receive: trio.MemoryReceiveChannel[MqttInbound], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with receive:
            async for first in receive:
                batch = take_waiting(receive, [first], self._max_batch)
                await self._until_stored(batch)
                for message in batch:
                    await self._ack(message)

    async def _until_stored(self, batch: list[MqttInbound]) -> None:
        delay = 0.1
        while True:
            try:
                await self._handle(batch)
                return
            except DatabaseUnavailable as exc:
                log.warning("%d MQTT messages wait for the database: %s", len(batch), exc)
                await trio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def _handle(self, batch: list[MqttInbound]) -> None:
        reports: list[tuple[MqttInbound, StatusReport]] = []
        packets: list[wire.InboundPacket] = []
        heard: list[wire.HeardReport] = []
        dead: list[DeadLetter] = []
        states: list[tuple[str, wire.BridgeState | None]] = []
        for message in batch:
            try:
                if message.topic == self._status_topic:
                    reports.append((message, wire.parse_status(message.payload)))
                elif message.topic == self._inbound_topic:
                    packets.append(wire.parse_inbound(message.payload))
                elif wire.is_heard_topic(message.topic):
                    heard.append(wire.parse_heard(message.topic, message.payload))
                else:
                    states.append(self._bridge_state(message))
            except wire.BadPayload as exc:
                dead.append(self._dead(message, str(exc)))

        applied: list[Applied | None] = [None] * len(reports)
        unavailable: list[DatabaseUnavailable] = []

        async def report(i: int, item: StatusReport) -> None:
            try:
                applied[i] = await self._ledger.report(item, wait=True)
            except DatabaseUnavailable as exc:
                unavailable.append(exc)

        async with trio.open_nursery() as nursery:
            for i, (_, item) in enumerate(reports):
                nursery.start_soon(report, i, item)
        if unavailable:
            raise unavailable[0]
        moved = False
        for (message, item), outcome in zip(reports, applied, strict=True):
            if outcome is not None and outcome.transition is not None \
                    and outcome.transition.changed:
                moved = True
            if outcome is not None and outcome.transition is None:
                dead.append(self._dead(message, f"unknown message id {item.message_id}"))
            elif outcome is not None:
                log.info("message %s to node %s: %s report from bridge %s", item.message_id,
                         outcome.node_id, item.report.status, item.bridge_id,
                         extra={"message_id": str(item.message_id), "node_id": outcome.node_id,
                                "bridge_id": item.bridge_id})

        if packets or dead or heard:
            async with self._events.in_commit_order() as publish:
                stored, events = await self._db.run(_store, packets, heard, dead,
                                                    self._clock(), self._window)
                await publish(events)
            for reply in stored:
                if reply.message_id is not None:
                    self.stored += 1
                    log.info("reply %s from node %s (packet %d) for user %s", reply.message_id,
                             reply.packet.from_node_id, reply.packet.packet_id, reply.user_id,
                             extra={"message_id": str(reply.message_id),
                                    "node_id": reply.packet.from_node_id,
                                    "bridge_id": reply.packet.bridge_id})
        self.dead_letters += len(dead)
        for letter in dead:
            self._metrics.dead_letter(letter.reason)
        for bridge_id, state in states:
            await self._bridge_changed(bridge_id, state)
        if moved:
            await self._settled()
        if heard:
            await self._heard()

    def _bridge_state(self, message: MqttInbound) -> tuple[str, wire.BridgeState | None]:
        if not message.payload:  # a retained state cleared: forget the bridge
            bridge_id = wire.parse_bridge_id(message.topic)
            self._bridges.pop(bridge_id, None)
            return bridge_id, None
        state = wire.parse_bridge_state(message.topic, message.payload)
        known = self._bridges.get(state.bridge_id)
        self._bridges[state.bridge_id] = _Bridge(state.state, state.info, self._clock())
        if known is None or known.state != state.state:
            log.info("bridge %s is %s", state.bridge_id, state.state)
        return state.bridge_id, state

    @staticmethod
    def _dead(message: MqttInbound, reason: str) -> DeadLetter:
        log.warning("dead letter on %s: %s", message.topic, reason)
        # Kept for inspection, but never more than the largest payload we would have read.
        return DeadLetter(message.topic, message.payload[:wire.MAX_PAYLOAD], reason)


def _store(conn: Any, packets: list[wire.InboundPacket], heard: list[wire.HeardReport],
           dead: list[DeadLetter], now: datetime, window: float
           ) -> tuple[list[Stored], list[Event]]:
    """One transaction for what a batch carried: coverage, then replies and dead letters."""
    store_coverage(conn, heard, now)
    return store_inbound(conn, packets, dead, now, window)
