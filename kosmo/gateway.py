"""The gateway daemon: one Trio nursery supervising its actors.

Supervision policy:
- Start order is dependency order: database pool, MQTT, event bus, ledger, conversations,
  outbox, HTTP.
  Each actor is started with ``nursery.start`` and the next starts only once it is ready.
- Infrastructure actors (MQTT, ledger, conversations router, outbox) failing bring the whole
  daemon down loudly: the nursery cancels the rest and the error propagates to the CLI, which
  exits non-zero so the process manager restarts it. The MQTT actor itself reconnects with
  backoff; a conversation actor contains its own failure.
- Stop is by deadline, in reverse: ``shutdown`` makes the HTTP front stop accepting and finish
  requests in progress (graceful timeout), then the other actors are cancelled. Work already
  committed but not yet published is recovered by the outbox at the next start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from actors.conversations import Conversations
from actors.events import EventBus
from actors.http import HttpFront
from actors.ledger import Ledger
from actors.mqtt import MqttActor
from actors.outbox import Outbox
from kosmo.api.app import Services, create_app
from kosmo.config import Settings
from kosmo.db import Database
from kosmo.ledger_store import StatusReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Running:
    """Handles of a running gateway, for tests and benchmarks."""

    binds: list[str]
    db: Database
    mqtt: MqttActor
    ledger: Ledger
    conversations: Conversations
    outbox: Outbox
    events: EventBus


async def run_gateway(settings: Settings, shutdown: trio.Event, *,
                      task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> None:
    if settings.auth_mode == "header":
        log.warning("auth mode is 'header': any caller can claim any X-User-ID; "
                    "use it for development only")
    db = Database(settings.database_url, size=settings.db_pool_size)
    await db.open()
    try:
        async with trio.open_nursery() as infra:
            mqtt = MqttActor(settings.mqtt_url, client_id=settings.mqtt_client_id)
            await infra.start(mqtt.run)
            events = EventBus()
            await infra.start(events.run)

            async def report(item: StatusReport) -> object:
                return await ledger.report(item)

            conversations = Conversations(
                publish=mqtt.publish, broker_ready=mqtt.wait_connected, report=report,
                topic_root=settings.mqtt_topic_root,                idle=settings.conversation_idle)
            ledger = Ledger(db, dispatch=conversations.dispatch,
                            message_ttl=settings.message_ttl, publish_events=events.publish)
            await infra.start(ledger.run)
            await infra.start(conversations.run)
            outbox = Outbox(db, dispatch=conversations.dispatch,
                            interval=settings.outbox_interval)
            await infra.start(outbox.run)

            app = create_app(settings, Services(db, ledger, lambda: mqtt.connected, events,
                                                shutdown))
            front = HttpFront(app, settings.http_bind, shutdown=shutdown)
            async with trio.open_nursery() as http:
                binds = await http.start(front.run)
                log.info("gateway listening on %s", ", ".join(binds))
                task_status.started(Running(binds, db, mqtt, ledger, conversations, outbox, events))
            log.info("HTTP front stopped; stopping actors")
            infra.cancel_scope.cancel()
    finally:
        await db.close()
