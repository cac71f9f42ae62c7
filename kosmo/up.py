"""``kosmo up``: the whole stack on embedded defaults, for a newcomer's first run.

Rules: an embedded PostgreSQL and an MQTT broker process are started under ``--data-dir``
(kept between runs), the schema is migrated and the demo data loaded, then the gateway serves
in header auth mode, and simulated radios with demo nodes start, each with a bridge attached,
so a message goes all the way to ``delivered`` and gets a reply. Whatever happens, the
embedded services are stopped on the way out.

Radios (``--radios N``, 1..8; ``demo_radios``): radio k has its own node id (``!0a0a0a0a``,
``!0b0b0b0b``, ...), which is also its bridge's id, and its bridge its own state directory
(``bridge`` for the first, ``bridge-k`` for the others). Coverage overlaps: every radio hears
``!a1b2c3d4`` (the demo's node, which all of them share) and two nodes of its own, so with one
radio the mesh is today's three nodes, and with several a message to ``!a1b2c3d4`` shows the
gateway choosing one bridge.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import trio

from kosmo import config, heap, migrate
from kosmo.embedded import start_broker, start_postgres

log = logging.getLogger(__name__)

MAX_RADIOS = 8
METRICS_BIND = "127.0.0.1:9464"  # Prometheus metrics, on unless KOSMO_METRICS_BIND=off
SHARED_NODE = 0xA1B2C3D4  # bridge/sim's first generated node: the demo's, heard by every radio
NODE_STEP = 0x01010101  # !a1b2c3d4, !a2b3c4d5, ... as bridge/sim generates them
FIRST_RADIO = 0x0A0A0A0A  # bridge/sim's own node by default

BANNER = """
KosmoConnect Gateway is up: {url}
  database: embedded PostgreSQL in {data}/postgres
  broker:   {broker} ({impl})
  auth:     header mode (X-User-ID), for development only
  mesh:     {mesh}
  metrics:  {metrics}
  console:  {url}/  (sign in as a demo user; API reference at {url}/docs)

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


@dataclass(frozen=True)
class DemoRadio:
    """One simulated radio of ``kosmo up``: its number, own node and the nodes it hears."""

    number: int  # 1..N
    node_num: int
    hears: tuple[int, ...]  # the shared node first

    @property
    def node_id(self) -> str:
        return f"!{self.node_num:08x}"


def demo_radios(count: int) -> list[DemoRadio]:
    """``count`` radios: each hears the shared node and two nodes no other radio hears."""
    if not 1 <= count <= MAX_RADIOS:
        raise ValueError(f"from 1 to {MAX_RADIOS} radios")

    def node(i: int) -> int:
        return (SHARED_NODE + i * NODE_STEP) & 0xFFFFFFFF

    return [DemoRadio(k + 1, FIRST_RADIO + k * NODE_STEP,
                      (SHARED_NODE, node(1 + 2 * k), node(2 + 2 * k))) for k in range(count)]


def parse_radios(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= count <= MAX_RADIOS:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to {MAX_RADIOS}")
    return count


def describe_mesh(radios: Sequence[DemoRadio], ports: Sequence[int]) -> str:
    """The banner's lines about the radios."""
    if len(radios) == 1:
        return (f"a simulated radio on 127.0.0.1:{ports[0]} with demo nodes (!a1b2c3d4 "
                "replies),\n            and a bridge attached to it")
    lines = [f"{len(radios)} simulated radios, each with a bridge attached (bridge id = the "
             "radio's node id);", "every radio hears !a1b2c3d4, the gateway picks one bridge "
             "for each message:"]
    for radio, port in zip(radios, ports, strict=True):
        heard = ", ".join(f"!{n:08x}" for n in radio.hears)
        lines.append(f"radio {radio.number} {radio.node_id} on 127.0.0.1:{port} hears {heard}")
    return "\n            ".join(lines)


async def run_up(args: argparse.Namespace, environ: Mapping[str, str],
                 shutdown: trio.Event) -> None:
    # The composition root: the upper layers are imported here, where they are wired together.
    from actors.gateway import Running, run_gateway
    from bridge.config import BridgeSettings
    from bridge.daemon import run_bridge
    from bridge.radio import Device
    from bridge.sim.server import serve_sim_radio

    heap.settle()
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
                {"KOSMO_METRICS_BIND": METRICS_BIND, **environ,
                 "KOSMO_DATABASE_URL": postgres.url, "KOSMO_MQTT_URL": broker.url,
                 "KOSMO_AUTH_MODE": "header", "KOSMO_WEBHOOK_ALLOW_PRIVATE": "true"}, args,
                serving=True)
            async with trio.open_nursery() as nursery:
                running: Running = await nursery.start(run_gateway, settings, shutdown)
                async with trio.open_nursery() as mesh:
                    radios = demo_radios(args.radios)
                    ports: list[int] = [
                        await mesh.start(partial(serve_sim_radio, 0, hears=r.hears,
                                                 node_id=r.node_num)) for r in radios]
                    bridges = [BridgeSettings(
                        device=Device.parse(f"tcp:127.0.0.1:{port}"), bridge_id=r.node_id,
                        mqtt_url=settings.mqtt_url, mqtt_topic_root=settings.mqtt_topic_root,
                        state_dir=data / ("bridge" if r.number == 1 else f"bridge-{r.number}"),
                        mqtt_protocol="3.1.1" if broker.implementation == "amqtt" else "5")
                        for r, port in zip(radios, ports, strict=True)]
                    async with trio.open_nursery() as serving:
                        async with trio.open_nursery() as starting:  # side by side
                            for bridge in bridges:
                                starting.start_soon(partial(
                                    serving.start, run_bridge, bridge, shutdown))
                        host, port = settings.http_bind
                        url = running.binds[0] if port == 0 else f"http://{host}:{port}"
                        print(BANNER.format(url=url, data=data, broker=broker.url,
                                            impl=broker.implementation,
                                            mesh=describe_mesh(radios, ports),
                                            metrics=" ".join(running.metrics_binds) or "off"),
                                      flush=True)
                    # The bridges have stopped (they watch ``shutdown``); the radios may go.
                    mesh.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(broker.stop)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(postgres.stop)
        log.info("embedded services stopped")
