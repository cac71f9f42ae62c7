"""``kosmo up``: the whole stack on embedded defaults, for a newcomer's first run.

Rules: an embedded PostgreSQL and an MQTT broker process are started under ``--data-dir``
(kept between runs), the schema is migrated and the demo data loaded, then the gateway serves
in header auth mode, and a simulated radio with demo nodes starts with a bridge attached, so a
message goes all the way to ``delivered`` and gets a reply. Whatever happens, the embedded
services are stopped on the way out.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping

import trio

from kosmo import config, migrate
from kosmo.embedded import start_broker, start_postgres

log = logging.getLogger(__name__)

BANNER = """
KosmoConnect Gateway is up: {url}
  database: embedded PostgreSQL in {data}/postgres
  broker:   {broker} ({impl})
  auth:     header mode (X-User-ID), for development only
  mesh:     a simulated radio on 127.0.0.1:{radio} with demo nodes (!a1b2c3d4 replies),
            and a bridge attached to it

Try it (demo user on the wanderer plan, 50 messages a month):

  curl -s -X POST {url}/api/v1/messages \\
    -H 'Content-Type: application/json' \\
    -H 'X-User-ID: 11111111-1111-1111-1111-111111111111' \\
    -d '{{"target_node_id": "!a1b2c3d4", "text": "Hello mesh"}}'

  curl -s {url}/api/v1/messages/conversations \\
    -H 'X-User-ID: 11111111-1111-1111-1111-111111111111'

  curl -s {url}/api/v1/messages/MESSAGE_ID \\
    -H 'X-User-ID: 11111111-1111-1111-1111-111111111111'

API description: {url}/openapi.json   Press Ctrl-C to stop.
"""


async def run_up(args: argparse.Namespace, environ: Mapping[str, str],
                 shutdown: trio.Event) -> None:
    # The composition root: the upper layers are imported here, where they are wired together.
    from actors.gateway import Running, run_gateway
    from bridge.config import BridgeSettings
    from bridge.daemon import run_bridge
    from bridge.radio import Device
    from bridge.sim.server import serve_sim_radio

    data = args.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL in %s", data / "postgres")
    postgres = await trio.to_thread.run_sync(start_postgres, data / "postgres")
    try:
        broker = await trio.to_thread.run_sync(start_broker, data / "mqtt")
        try:
            log.info("MQTT broker (%s) on %s", broker.implementation, broker.url)
            await trio.to_thread.run_sync(migrate.migrate, postgres.url)
            await trio.to_thread.run_sync(migrate.seed, postgres.url)
            settings = config.load(
                {**environ, "KOSMO_DATABASE_URL": postgres.url, "KOSMO_MQTT_URL": broker.url,
                 "KOSMO_AUTH_MODE": "header"}, args, serving=True)
            async with trio.open_nursery() as nursery:
                running: Running = await nursery.start(run_gateway, settings, shutdown)
                async with trio.open_nursery() as radio:
                    radio_port = await radio.start(serve_sim_radio, 0)
                    bridge = BridgeSettings(
                        device=Device.parse(f"tcp:127.0.0.1:{radio_port}"),
                        mqtt_url=settings.mqtt_url, mqtt_topic_root=settings.mqtt_topic_root,
                        state_dir=data / "bridge")
                    async with trio.open_nursery() as bridges:
                        await bridges.start(run_bridge, bridge, shutdown)
                        host, port = settings.http_bind
                        url = running.binds[0] if port == 0 else f"http://{host}:{port}"
                        print(BANNER.format(url=url, data=data, broker=broker.url,
                                            impl=broker.implementation, radio=radio_port),
                              flush=True)
                    # The bridge has stopped (it watches ``shutdown``); the radio may go.
                    radio.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(broker.stop)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(postgres.stop)
        log.info("embedded services stopped")
