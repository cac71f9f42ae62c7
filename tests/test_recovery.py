"""Nothing accepted is lost: a crash between commit and publish, and a broker restart."""

from __future__ import annotations

import trio

from actors.ledger import Ledger
from kosmo import wire
from kosmo.config import MqttEndpoint, Settings
from kosmo.db import Database
from kosmo.ledger_store import Accepted
from tests.conftest import (
    FAKE_BRIDGE,
    ONLINE,
    SANCTUARY,
    WANDERER,
    Subscriber,
    db_value,
    start_gateway,
    subscribed,
)
from tests.mesh import FakeBridgeLink


async def _status(sql, message_id) -> str:
    return db_value(sql, "SELECT status FROM messages WHERE id = %s", message_id)


async def _wait_status(sql, message_id, status: str, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while await _status(sql, message_id) != status:
            await trio.sleep(0.02)


async def test_outbox_publishes_what_a_crashed_process_committed(
        nursery, settings: Settings, subscriber: Subscriber, sql):
    # A "process" that commits sends and dies before handing them to MQTT: its dispatch
    # never reaches the broker.
    async def crash_before_publish(message: object) -> None:
        pass

    db = Database(settings.database_url, size=2)
    await db.open()
    accepted = []
    async with trio.open_nursery() as dying:
        ledger = Ledger(db, dispatch=crash_before_publish, message_ttl=3600)
        await dying.start(ledger.run)
        for text in ["one", "two", "three"]:
            result = await ledger.send(WANDERER, "!a1b2c3d4", text)
            assert isinstance(result, Accepted)
            accepted.append(result.message)
        dying.cancel_scope.cancel()
    await db.close()
    for message in accepted:
        assert await _status(sql, message.message_id) == "pending"
    assert subscriber.messages == []

    # The next gateway start hands them out, in creation order.
    async with start_gateway(nursery, settings) as _gateway:
        received = await subscriber.wait_for(3)
        assert [p["text"] for _, p in received] == ["one", "two", "three"]
        assert [p["message_id"] for _, p in received] == [str(m.message_id) for m in accepted]
        for message in accepted:
            await _wait_status(sql, message.message_id, "queued")
        assert db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s", WANDERER) == 3


async def test_broker_restart_loses_nothing(nursery, settings: Settings, private_broker, sql):
    settings = settings.replace(mqtt_url=MqttEndpoint.from_url(private_broker.url))
    topic = wire.outbound_filter(settings.mqtt_topic_root, FAKE_BRIDGE)
    bridge = FakeBridgeLink(private_broker.url, settings.mqtt_topic_root, FAKE_BRIDGE)
    bridge.state("online", ONLINE)
    bridge.close()
    async with subscribed(private_broker.url, topic) as subscriber:
        async with start_gateway(nursery, settings) as gateway:
            first = (await gateway.send(WANDERER, text="before")).json()
            await subscriber.wait_for(1)
            await _wait_status(sql, first["message_id"], "queued")

            private_broker.stop()
            with trio.fail_after(10):
                while gateway.running.mqtt.connected:
                    await trio.sleep(0.01)
            during = await gateway.send(WANDERER, text="during")
            assert during.status_code == 201  # accepted and stored while the broker is down
            assert (await gateway.client.get("/readyz")).status_code == 503

            subscriber.subscribed = trio.Event()
            private_broker.start()
            received = await subscriber.wait_for(2, timeout=20)
            assert [p["text"] for _, p in received][-1] == "during"
            await _wait_status(sql, during.json()["message_id"], "queued")
            assert gateway.running.mqtt.statistics().reconnects >= 1
            assert (await gateway.client.get("/readyz")).status_code == 200


async def test_sends_never_hang_while_the_broker_is_away(nursery, settings: Settings,
                                                         private_broker, sql):
    settings = settings.replace(mqtt_url=MqttEndpoint.from_url(private_broker.url))
    topic = wire.outbound_filter(settings.mqtt_topic_root, FAKE_BRIDGE)
    bridge = FakeBridgeLink(private_broker.url, settings.mqtt_topic_root, FAKE_BRIDGE)
    bridge.state("online", ONLINE)
    bridge.close()
    async with subscribed(private_broker.url, topic) as subscriber:
        async with start_gateway(nursery, settings) as gateway:
            private_broker.stop()
            with trio.fail_after(10):
                while gateway.running.mqtt.connected:
                    await trio.sleep(0.01)
            sent = []
            with trio.fail_after(30):  # far more than every in-memory queue holds
                for i in range(300):
                    response = await gateway.send(SANCTUARY, "!a1b2c3d4", f"m{i}")
                    assert response.status_code == 201
                    sent.append(response.json()["message_id"])
            private_broker.start()
            received = await subscriber.wait_for(300, timeout=60)
            ids = [p["message_id"] for _, p in received]
            assert sorted(set(ids)) == sorted(sent)
            assert [i for i in dict.fromkeys(ids)] == sent  # first copies in creation order
