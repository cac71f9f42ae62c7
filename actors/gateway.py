"""The gateway daemon: one Trio nursery supervising its actors.

Supervision policy:
- Start order is dependency order: database pool, membership (this process registered among
  the gateway processes, on a connection of its own: the dispatcher, outbox and conversations
  work for its id), MQTT, event bus, event feed, ledger, webhooks, inbound consumer, stranded
  sessions, conversations, dispatcher, outbox, expiry, metrics (``KOSMO_METRICS_BIND``), HTTP.
  Each actor is started with ``nursery.start`` and the next starts only once it is ready.
- Infrastructure actors (membership, MQTT, event bus, ledger, webhooks, inbound consumer,
  conversations router, dispatcher, outbox, expiry) failing bring the whole
  daemon down loudly: the nursery cancels the rest and the error propagates to the CLI, which
  exits non-zero so the process manager restarts it. The MQTT actor itself reconnects with
  backoff; a conversation actor contains its own failure. The membership fails when another
  process declared this one dead (``Fenced``): it must publish nothing more.
- Stop is by deadline: ``shutdown`` makes the HTTP front stop accepting and finish requests
  in progress (graceful timeout), then the other actors are cancelled together (the CLI gives
  the whole stop a deadline). A shutdown before the gateway is ready abandons the start.
  Once every actor stopped (nothing publishes anymore), the process leaves the membership, so
  another process adopts its nodes at once and publishes what was claimed but not yet
  acknowledged; after a crash, that happens once the process is declared dead (its lease).
- The MQTT sessions of gateway processes that are gone (dead or stopped, and not back within
  a grace) are drained by one live process (actors/stranded.py, through ``Running.drains``,
  actors/session_drain.py): what such a session held goes to the inbound consumer, whose acks
  go through ``drains.ack``. The drainer starts after the consumer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from uuid import UUID

import trio

from actors.conversations import Conversations
from actors.dispatcher import Dispatcher
from actors.event_feed import EventFeed
from actors.events import EventBus
from actors.expiry import Expiry
from actors.http.app import create_app
from actors.http.server import HttpFront
from actors.http.services import Services
from actors.inbound import InboundConsumer
from actors.ledger import Ledger
from actors.membership import Membership
from actors.metrics import GatewayMetrics, LiveGauges
from actors.mqtt import MqttActor, MqttInbound
from actors.outbox import Outbox
from actors.session_drain import SessionDrains
from actors.stranded import StrandedSessions
from actors.webhooks import WebhookActor
from kosmo import wire
from kosmo.config import Settings
from kosmo.db import Database
from kosmo.ledger_store import pending_for_node
from kosmo.messages import NewMessage, StatusReport
from kosmo.metrics_server import serve_metrics
from kosmo.migrate import check_schema
from kosmo.supervise import start_or_abandon

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Running:
    """Handles of a running gateway, for tests and benchmarks."""

    binds: list[str]
    db: Database
    mqtt: MqttActor
    ledger: Ledger
    conversations: Conversations
    dispatcher: Dispatcher
    outbox: Outbox
    events: EventBus
    consumer: InboundConsumer
    expiry: Expiry
    webhooks: WebhookActor
    metrics: GatewayMetrics
    metrics_binds: list[str]  # empty unless KOSMO_METRICS_BIND is set
    membership: Membership
    drains: SessionDrains  # the drains of gone processes' MQTT sessions
    stranded: StrandedSessions


def stored_topics(settings: Settings) -> list[str]:
    """The topic filters of reports, replies and nodes heard: each message is stored once in
    the database all gateway processes share, so any process may take it."""
    root = settings.mqtt_topic_root
    return [wire.status_topic(root), wire.inbound_topic(root), wire.heard_topic(root)]


def subscriptions(settings: Settings) -> list[tuple[str, int]]:
    """What the gateway consumes. Reports, replies and nodes heard may be shared among gateway
    processes (``stored_topics``); bridge states are retained messages, which shared
    subscriptions do not deliver."""
    group = settings.mqtt_shared_group
    shared = f"$share/{group}/" if group else ""
    return [(shared + topic, 1) for topic in stored_topics(settings)] + [
        (wire.bridge_state_topic(settings.mqtt_topic_root), 1)]


async def run_gateway(settings: Settings, shutdown: trio.Event, *,
                      task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until ``shutdown`` is set. A shutdown while still starting (say, waiting for the
    database or the broker) abandons the start at once instead of waiting for it."""
    await start_or_abandon(shutdown, partial(_serve, settings, shutdown), what="gateway",
                           log=log, task_status=task_status)


async def _serve(settings: Settings, shutdown: trio.Event,
                 task_status: trio.TaskStatus[Running]) -> None:
    if settings.auth_mode == "header":
        log.warning("auth mode is 'header': any caller can claim any X-User-ID; "
                    "use it for development only")
    db = Database(settings.database_url, size=settings.db_pool_size)
    await db.open(within=settings.start_timeout)
    metrics = GatewayMetrics()
    # The membership's own connection: its heartbeats never wait behind the pool's work (a
    # process too busy to beat for the lease would be declared dead).
    beats = Database(settings.database_url, size=1, name="kosmo-membership")
    membership = Membership(beats, client_id=settings.mqtt_client_id)
    me = membership.process_id
    beating = False
    try:
        await db.run(check_schema)  # SchemaNotCurrent: the CLI says to run kosmo migrate
        await beats.open(within=settings.start_timeout)
        beating = True
        async with trio.open_nursery() as infra:
            await infra.start(db.watch)
            await infra.start(membership.run)
            received_send, received = trio.open_memory_channel[MqttInbound](256)
            mqtt = MqttActor(settings.mqtt_url, client_id=settings.mqtt_client_id,
                             subscriptions=subscriptions(settings), inbound=received_send)
            await infra.start(mqtt.run)
            drains = SessionDrains(settings.mqtt_url, mqtt, received_send.clone(),
                                   stored=stored_topics(settings),
                                   subscriptions=[t for t, _ in subscriptions(settings)])
            events = EventBus()
            await infra.start(events.run)

            async def report(item: StatusReport) -> object:
                return await ledger.report(item)

            async def load_pending(node_id: str, after: tuple[datetime, UUID] | None,
                                   limit: int) -> list[NewMessage]:
                return await db.run(pending_for_node, node_id, after, limit, me)

            conversations = Conversations(
                start_publish=mqtt.start_publish, broker_ready=mqtt.wait_connected, report=report,
                load_pending=load_pending, topic_root=settings.mqtt_topic_root,
                idle=settings.conversation_idle, max_nodes=settings.max_conversations)
            dispatcher = Dispatcher(db, hand=conversations.dispatch,
                                    message_ttl=settings.message_ttl, process_id=me)

            def dispatch_notice(payload: str) -> None:  # from another process, or a death
                if payload in ("", str(me)):
                    dispatcher.wake()

            feed = EventFeed(db, events, settings.database_url, dispatch_notice=dispatch_notice)
            await infra.start(feed.run)
            ledger = Ledger(db, dispatch=dispatcher.accepted, canceled=dispatcher.canceled,
                            message_ttl=settings.message_ttl, events=events, metrics=metrics)
            await infra.start(ledger.run)
            webhooks = WebhookActor(db, schedule=settings.webhook_retry_schedule,
                                    allow_private=settings.webhook_allow_private,
                                    ca_file=settings.webhook_ca_file)
            events.on_written(webhooks.history_written)
            await infra.start(webhooks.run)
            consumer = InboundConsumer(
                db, ledger, topic_root=settings.mqtt_topic_root,
                thread_window=settings.thread_window, ack=drains.ack, events=events,
                bridge_changed=dispatcher.bridge_state, settled=dispatcher.settled,
                heard=dispatcher.heard, metrics=metrics)
            await infra.start(consumer.run, received)
            stranded = StrandedSessions(db, drains)
            await infra.start(stranded.run)
            await infra.start(conversations.run)
            await infra.start(dispatcher.run)
            outbox = Outbox(db, dispatch=conversations.dispatch, process_id=me,
                            interval=settings.outbox_interval)
            await infra.start(outbox.run)
            expiry = Expiry(db, ledger, interval=min(30.0, settings.message_ttl / 4),
                            settled=dispatcher.settled)
            await infra.start(expiry.run)

            app = create_app(settings, Services(db, ledger, lambda: mqtt.connected, events,
                                                shutdown, consumer.bridges,
                                                admit=dispatcher.admit, metrics=metrics))
            metrics.registry.register(LiveGauges(
                waiting=dispatcher.waiting, held=dispatcher.held,
                node_actors=conversations.active_nodes,
                streams=lambda: events.statistics().subscribers, bridges=consumer.states,
                mqtt_connected=lambda: mqtt.connected,
                mqtt_reconnects=lambda: mqtt.statistics().reconnects,
                database_up=lambda: not db.down))
            metrics_binds: list[str] = []
            if settings.metrics_bind is not None:
                metrics_binds = await infra.start(serve_metrics, metrics.registry,
                                                  settings.metrics_bind)
            front = HttpFront(app, settings.http_bind, shutdown=shutdown,
                              idle_timeout=settings.http_idle_timeout,
                              read_timeout=settings.http_read_timeout,
                              reuse_port=settings.reuse_port)
            async with trio.open_nursery() as http:
                binds = await http.start(front.run)
                log.info("gateway listening on %s", ", ".join(binds))
                task_status.started(Running(binds, db, mqtt, ledger, conversations, dispatcher,
                                            outbox, events, consumer, expiry, webhooks,
                                            metrics, metrics_binds, membership, drains,
                                            stranded))
            log.info("HTTP front stopped; stopping actors")
            infra.cancel_scope.cancel()
    finally:
        if beating:
            await membership.leave()  # every actor stopped: nothing of this process publishes
            await beats.close()
        await db.close()
