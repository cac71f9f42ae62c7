"""Reports and received texts that matched no subscription (MQTT 5 PUBACK reason code 16) wait
in the bridge's outbox, in order, until a gateway subscribes: none is lost."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

import bridge.daemon
from bridge.store import DB_NAME
from kosmo.config import MqttEndpoint, Settings
from kosmo.embedded import Broker
from kosmo.wire import outbound_topic
from tests.mesh import FakeBridgeLink
from tests.test_bridge import (
    NODE,
    SILENT,
    BridgeRunner,
    Observer,
    SimRunner,
    make_settings,
    outbound,
    wait_for,
)

MESSAGES = 3
ITEMS = 3 * MESSAGES  # each: transmitted, delivered, and the node's reply


def outbox(state_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    with sqlite3.connect(state_dir / DB_NAME) as db:
        return [(r[0], json.loads(r[1]))
                for r in db.execute("SELECT topic, payload FROM outbox ORDER BY id")]


def group(root: str) -> list[str]:
    """The gateways' shared subscriptions (actors/gateway.py)."""
    return [f"$share/gw/{root}/mesh/status", f"$share/gw/{root}/mesh/inbound"]


def logged(caplog: pytest.LogCaptureFixture, start: str) -> int:
    return sum(r.getMessage().startswith(start) for r in caplog.records
               if r.name == "bridge.daemon")


@pytest.fixture
async def sim(nursery: trio.Nursery) -> SimRunner:
    return await SimRunner().start(nursery)


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge.daemon, "NO_SUBSCRIBERS_BACKOFF", (0.05, 0.2))


async def test_reports_nobody_subscribed_to_wait_in_order_for_a_subscriber(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, sim: SimRunner,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, mqtt_url, topic_root, sim)
    runner, link = BridgeRunner(settings), FakeBridgeLink(mqtt_url, topic_root)
    await runner.start(nursery)
    for i in range(MESSAGES):
        await trio.to_thread.run_sync(link.publish, outbound_topic(
            topic_root, settings.bridge_id, NODE), outbound(text=f"unheard {i}"))
    await wait_for(lambda: len(outbox(settings.state_dir)) == ITEMS, timeout=20)
    kept = outbox(settings.state_dir)
    assert logged(caplog, "outbox waits for a subscriber") == 1

    gateway = Observer(mqtt_url, group(topic_root))
    await wait_for(lambda: len(gateway.messages) == ITEMS, timeout=20)
    assert gateway.messages == kept  # all of them, once each, in order
    await wait_for(lambda: not outbox(settings.state_dir))
    assert logged(caplog, "outbox waits for a subscriber") == 1
    assert logged(caplog, "outbox resumes") == 1
    await runner.stop()
    gateway.close()
    link.close()


async def test_a_broker_restart_without_the_shared_subscriptions_loses_no_report(
        nursery: trio.Nursery, tmp_path: Path, private_broker: Broker, topic_root: str,
        sim: SimRunner, caplog: pytest.LogCaptureFixture) -> None:
    if not private_broker.durable:
        pytest.skip("this broker keeps no sessions across a restart")
    url, gateway_id = private_broker.url, f"gw-{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, url, topic_root, sim)
    runner, link = BridgeRunner(settings), FakeBridgeLink(url, topic_root)
    gateway = Observer(url, group(topic_root), client_id=gateway_id)
    with trio.fail_after(10):
        await gateway.subscribed.wait()
    await runner.start(nursery)
    topic = outbound_topic(topic_root, settings.bridge_id, NODE)
    await trio.to_thread.run_sync(link.publish, topic, outbound(text="before"))
    await wait_for(lambda: len(gateway.messages) == 3, timeout=20)

    # The broker restarts; the gateway is slower to come back than the bridge.
    gateway.close()
    link.close()
    await trio.to_thread.run_sync(private_broker.stop)
    await trio.to_thread.run_sync(private_broker.start)
    await runner.bridge.mqtt.wait_connected()
    link = FakeBridgeLink(url, topic_root)
    await trio.to_thread.run_sync(link.publish, topic, outbound(text="after"))
    await wait_for(lambda: len(outbox(settings.state_dir)) == 3, timeout=20)
    kept = outbox(settings.state_dir)
    # mosquitto (2.0.11 measured) restores the gateway's session but not its shared
    # subscriptions: what the bridge published matched nobody.
    assert logged(caplog, "outbox waits for a subscriber") == 1

    gateway = Observer(url, group(topic_root), client_id=gateway_id)  # its session, if kept
    await wait_for(lambda: len(gateway.messages) == 3, timeout=20)
    assert gateway.messages == kept
    await wait_for(lambda: logged(caplog, "outbox resumes") == 1)
    await runner.stop()
    gateway.close()
    link.close()


async def test_two_gateways_store_a_report_published_before_they_subscribed_again(
        nursery: trio.Nursery, tmp_path: Path, private_broker: Broker, database_url: str,
        topic_root: str, sim: SimRunner, caplog: pytest.LogCaptureFixture,
        sql: psycopg.Connection[Any]) -> None:
    """Both gateways stopped, the broker restarted (without their shared subscriptions); the
    bridge's report comes meanwhile and waits; the gateways come back and store it."""
    from tests.conftest import WANDERER, start_gateway

    if not private_broker.durable:
        pytest.skip("this broker keeps no sessions across a restart")
    base = Settings(
        database_url=database_url, mqtt_url=MqttEndpoint.from_url(private_broker.url),
        mqtt_topic_root=topic_root, http_bind=("127.0.0.1", 0), auth_mode="header",
        db_pool_size=4, mqtt_shared_group="gw")
    gateways = [base.replace(mqtt_client_id=f"gw-{topic_root}-{i}") for i in (1, 2)]
    # A silent node: the bridge reports `failed` at its result timeout (10 real seconds),
    # long after the broker's restart.
    runner = BridgeRunner(make_settings(tmp_path, private_broker.url, topic_root, sim,
                                        result_timeout=200.0))
    await runner.start(nursery)

    def status(message_id: str) -> str:
        row = sql.execute("SELECT status FROM messages WHERE id = %s", (message_id,)).fetchone()
        return str(row[0]) if row else ""

    async with trio.open_nursery() as both:  # stops them both on the way out
        async with start_gateway(both, gateways[0]) as first, start_gateway(both, gateways[1]):
            sent = await first.send(WANDERER, f"!{SILENT:08x}", "hello silence")
            assert sent.status_code == 201, sent.text
            message_id = sent.json()["message_id"]
            await wait_for(lambda: status(message_id) == "transmitted", timeout=20)
    await trio.to_thread.run_sync(private_broker.stop)
    await trio.to_thread.run_sync(private_broker.start)
    await wait_for(lambda: logged(caplog, "outbox waits for a subscriber") == 1, timeout=30)
    assert status(message_id) == "transmitted"

    async with trio.open_nursery() as both:
        async with start_gateway(both, gateways[0]), start_gateway(both, gateways[1]):
            await wait_for(lambda: status(message_id) == "failed", timeout=20)
    await runner.stop()
