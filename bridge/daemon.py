"""The bridge daemon: one Trio nursery supervising the radio, the broker link and the queue.

Supervision policy:
- Start order: the SQLite store (and its lock), the radio actor (it reconnects by itself), the
  bridge id (given, kept in the store, or else the radio's node id once it answers), the
  restore of an earlier run's flights, the MQTT actor (MQTT 5, persistent session, manual
  acks, an ``offline`` will), then the tasks. Each part is built in that order inside the daemon's
  nursery, each from the ones before it, and the ``Bridge`` that joins them is made only once
  all exist. ``started(bridge)`` once the broker accepted the subscription and the radio is
  connected. A shutdown before that abandons the start (kosmo/supervise.py).
- The radio and the broker reconnect with backoff forever; the queue and the outbox wait in
  SQLite meanwhile. Any other failure (SQLite, a bug) brings the daemon down loudly: the
  process manager restarts it, and the at-most-once rule (bridge/sender.py) holds across that.
- Intake: an outbound MQTT message is acknowledged to the broker only after it is committed
  to the store (or found to be a duplicate, or unreadable: logged, reported ``failed`` when
  its ``message_id`` could be read, and acknowledged; or outside our topic root, left over in
  the session from an earlier configuration: logged and acknowledged).
- Outbox: status reports and received texts are published in order, QoS 1, each deleted only
  after its PUBACK; a lost connection leaves them for the next one (a report may then go out
  twice: the gateway takes reports and replies idempotently). A PUBACK saying no subscription
  matched (MQTT 5 reason code 16: no gateway subscribed, e.g. a broker that restarted without
  the gateways' shared subscriptions) leaves the item and all after it in the outbox; the
  outbox tries it again after a backoff (``NO_SUBSCRIBERS_BACKOFF``), one log line when it
  starts waiting and one when it resumes.
- State: ``{root}/bridge/{id}/state`` is published retained on every (re)connect, at once
  when what the bridge holds changes, on any other change (radio link, pace, estimated wait)
  at most once a second (bridge/state.py).
- Coverage: the radio's node database at each connect of the radio, and the sender of every
  packet it receives, go to ``{root}/bridge/{id}/heard`` at most once a second
  (bridge/coverage.py).
- Stop by deadline (well within 5 s): stop handing texts to the radio and let a hand-over in
  progress finish (<= 1.5 s), publish the retained ``offline`` state (<= 1 s), then cancel;
  the MQTT actor closes in <= 1 s and the radio link in <= 2 s, side by side.
"""

from __future__ import annotations

import logging
import time
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from actors.mqtt import MqttActor, MqttInbound, MqttUnavailable, NoSubscribers
from bridge.config import BridgeSettings
from bridge.coverage import CoverageReporter, node_db_heard
from bridge.metrics import BridgeMetrics
from bridge.radio import Radio, RadioEvent
from bridge.sender import AsyncStore, Sender
from bridge.state import RetainedState
from bridge.store import OutboxItem, Store
from bridge.timing import RadioClock, Wakeup
from kosmo import wire
from kosmo.channels import take_waiting
from kosmo.clock import utcnow
from kosmo.metrics_server import serve_metrics
from kosmo.supervise import start_or_abandon

log = logging.getLogger(__name__)

VERSION = "0.1"
INTAKE_BATCH = 256
OUTBOX_BATCH = 64
EVENTS_BUFFER = 256
STOP_SENDING_WITHIN = 1.5
OFFLINE_WITHIN = 1.0
NO_SUBSCRIBERS_BACKOFF = (0.5, 5.0)  # real seconds: first retry, doubling up to the last


@dataclass(frozen=True)
class StatusReports:
    """This bridge's status reports, as outbox items: the store's and the sender's reporter."""

    settings: BridgeSettings
    bridge_id: str

    def __call__(self, message_id: str, status: str, reason: str | None,
                 packet_id: int | None) -> OutboxItem:
        return (wire.status_topic(self.settings.mqtt_topic_root),
                wire.status_payload(message_id, status, bridge_id=self.bridge_id,
                                        at=utcnow(), packet_id=packet_id, reason=reason))


@dataclass(frozen=True)
class Wakeups:
    """What wakes the bridge's outbox and retained-state tasks."""

    outbox: Wakeup = field(default_factory=Wakeup)
    state: Wakeup = field(default_factory=Wakeup)

    def changed(self) -> None:
        """The outbox or the state may have something new."""
        self.outbox.set()
        self.state.set()


class Bridge:
    """A serving bridge: the parts ``run_bridge`` built inside its nursery, and the tasks that
    join them (intake, outbox, retained state, stop). Handed out by ``started()``."""

    def __init__(self, settings: BridgeSettings, bridge_id: str, *, radio: Radio,
                 sender: Sender, mqtt: MqttActor, report: StatusReports,
                 wake: Wakeups, coverage: CoverageReporter, state_topic: str) -> None:
        self.settings = settings
        self.bridge_id = bridge_id
        self.ready = False  # True once it serves (the radio connected, the broker subscribed)
        self.radio = radio
        self.sender = sender
        self.mqtt = mqtt
        self._report = report
        self._wake = wake
        self.coverage = coverage
        self.retained = RetainedState(mqtt, state_topic, describe=self.state,
                                      held=sender.held, wake=wake.state)
        self.metrics = BridgeMetrics(sender, radio)
        self.metrics_binds: list[str] = []  # set once served (``--metrics-bind``)

    def radio_changed(self) -> None:
        """The radio link came or went: the sender, the retained state and coverage follow."""
        self.sender.wake()
        self._wake.state.set()
        link = self.radio.link
        if link is not None:  # a new link: the library has just downloaded the node database
            self.coverage.own_node_id = link.info.node_id
            nodes = getattr(link.iface, "nodesByNum", None) or {}  # None before a config
            self.coverage.observe_all(node_db_heard(list(nodes.values())))

    async def stop(self) -> None:
        log.info("bridge %s stopping", self.bridge_id)
        self.sender.stop_sending()
        with trio.move_on_after(STOP_SENDING_WITHIN):
            await self.sender.wait_idle()
        if self.mqtt.connected:
            with trio.move_on_after(OFFLINE_WITHIN):
                await self.retained.publish_offline()

    # --- intake: broker -> store ------------------------------------------------------------

    async def run_intake(self, db: AsyncStore,
                         received: trio.MemoryReceiveChannel[MqttInbound]) -> None:
        prefix = wire.outbound_filter(self.settings.mqtt_topic_root, self.bridge_id).rstrip("+")
        async with received:
            async for first in received:
                batch = take_waiting(received, [first], INTAKE_BATCH)
                good: list[wire.Outbound] = []
                rejected: list[tuple[str, str]] = []
                for message in batch:
                    if not message.topic.startswith(prefix):
                        # An old subscription kept in the session (the topic root changed).
                        log.warning("message on %s dropped: not under %s", message.topic, prefix)
                        continue
                    try:
                        good.append(wire.parse_outbound(message.topic, message.payload))
                    except wire.BadOutbound as exc:
                        log.warning("unusable message on %s dropped: %s", message.topic, exc)
                        if exc.message_id is not None:
                            rejected.append((exc.message_id, str(exc)))
                queued = await db.call(db.store.accept, good, rejected, time.time(),
                                       self._report)
                for message in batch:
                    await self.mqtt.ack(message)
                if queued < len(good):
                    log.info("%d new messages queued, %d duplicates or answered at once",
                             queued, len(good) - queued)
                elif queued:
                    log.debug("%d new messages queued", queued)
                self.sender.wake()
                self._wake.changed()

    # --- outbox: store -> broker ------------------------------------------------------------

    async def run_outbox(self, db: AsyncStore) -> None:
        unheard: str | None = None  # the topic nobody subscribed to, while waiting
        backoff = NO_SUBSCRIBERS_BACKOFF[0]
        while True:
            items = await db.call(db.store.outbox_head, OUTBOX_BATCH)
            if not items:
                await self._wake.outbox.wait()
                continue
            await self.mqtt.wait_connected()
            done: list[int] = []
            try:
                for item_id, topic, payload in items:
                    await self.mqtt.publish(topic, payload, qos=1)
                    done.append(item_id)
                    if unheard is not None:
                        log.info("outbox resumes: %s has a subscriber", topic)
                        unheard, backoff = None, NO_SUBSCRIBERS_BACKOFF[0]
            except MqttUnavailable as exc:
                log.info("outbox waits for the broker: %s", exc)
            except NoSubscribers:
                if unheard is None:
                    log.warning("outbox waits for a subscriber to %s: the broker dropped what "
                                "matched nobody; keeping it (outbox item %d) and what follows",
                                topic, item_id)
                    unheard = topic
            if done:
                await db.call(db.store.outbox_done, done)
            if unheard is not None:
                await trio.sleep(backoff)
                backoff = min(NO_SUBSCRIBERS_BACKOFF[1], backoff * 2)

    # --- retained state ---------------------------------------------------------------------

    async def state(self) -> dict[str, Any]:
        link = self.radio.link
        info: dict[str, Any] = {"version": VERSION, "bridge_id": self.bridge_id,
                                "radio": "connected" if link is not None else "disconnected",
                                "device": str(self.settings.device)}
        if link is not None:
            info.update(link.info.describe())
        info.update(await self.sender.queue_state())
        return info


async def run_bridge(settings: BridgeSettings, shutdown: trio.Event, *,
                     task_status: trio.TaskStatus[Bridge] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until ``shutdown`` is set; started(bridge) once serving. A shutdown while still
    starting (no radio, no broker yet) abandons the start at once."""
    await start_or_abandon(shutdown, partial(_serve, settings, shutdown), what="bridge", log=log,
                           task_status=task_status)


async def _serve(settings: BridgeSettings, shutdown: trio.Event,
                 task_status: trio.TaskStatus[Bridge]) -> None:
    s = settings
    with closing(Store(s.state_dir)) as store:
        db = AsyncStore(store)
        async with trio.open_nursery() as nursery:
            events_send, events = trio.open_memory_channel[RadioEvent](EVENTS_BUFFER)
            radio = Radio(s.device, events_send, close_timeout=2.0)
            nursery.start_soon(radio.run)
            bridge_id = await _learn_bridge_id(s, db, radio)
            report, wake = StatusReports(s, bridge_id), Wakeups()
            sender = Sender(
                db, radio, report, topic_root=s.mqtt_topic_root, bridge_id=bridge_id,
                clock=RadioClock(s.time_scale), result_timeout=s.result_timeout,
                region=s.region, credit=s.credit, changed=wake.changed)
            await sender.restore()

            received_send, received = trio.open_memory_channel[MqttInbound](INTAKE_BATCH)
            state_topic = wire.bridge_state_topic(s.mqtt_topic_root, bridge_id)
            mqtt = MqttActor(
                s.mqtt_url, client_id=f"kosmo-bridge-{bridge_id}",
                subscriptions=[(wire.outbound_filter(s.mqtt_topic_root, bridge_id), 1)],
                inbound=received_send,
                will=(state_topic, wire.state_payload("offline"), 1, True),
                protocol=s.mqtt_protocol)
            coverage = CoverageReporter(mqtt, wire.heard_topic(s.mqtt_topic_root, bridge_id))
            bridge = Bridge(s, bridge_id, radio=radio, sender=sender, mqtt=mqtt, report=report,
                            wake=wake, coverage=coverage, state_topic=state_topic)
            radio.changed = bridge.radio_changed  # no task waited on a link change before
            radio.heard = coverage.observe
            bridge.radio_changed()  # the node database of a link that came before
            await nursery.start(mqtt.run)
            nursery.start_soon(coverage.run)
            nursery.start_soon(bridge.run_intake, db, received)
            nursery.start_soon(bridge.run_outbox, db)
            nursery.start_soon(bridge.retained.run)
            nursery.start_soon(sender.run_results, events)
            nursery.start_soon(sender.run_deadlines)
            nursery.start_soon(sender.run_sender)
            if s.metrics_bind is not None:
                bridge.metrics_binds = await nursery.start(partial(
                    serve_metrics, bridge.metrics.registry, s.metrics_bind,
                    refresh=bridge.metrics.refresh))
            await radio.wait_link()
            bridge.ready = True
            log.info("bridge %s serving: radio %s, broker %s, topic root %r", bridge_id,
                     s.device, s.mqtt_url.redacted(), s.mqtt_topic_root)
            task_status.started(bridge)
            await shutdown.wait()
            await bridge.stop()
            nursery.cancel_scope.cancel()


async def _learn_bridge_id(settings: BridgeSettings, db: AsyncStore, radio: Radio) -> str:
    """The bridge id: given, kept in the store, or else the radio's node id once it answers;
    kept in the store for the next start."""
    kept = await db.call(db.store.get_meta, "bridge_id")
    bridge_id = settings.bridge_id or kept
    if bridge_id is None:
        log.info("waiting for the radio %s to learn the bridge id", settings.device)
        bridge_id = (await radio.wait_link()).info.node_id
    if bridge_id != kept:
        await db.call(db.store.set_meta, "bridge_id", bridge_id)
    return bridge_id
