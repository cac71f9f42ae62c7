"""Draining the MQTT session of a gateway process that is gone for good, on the real broker
and database: what the session held is stored once, the session is deleted, and nothing is
lost when the broker is away during a drain."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from functools import partial

import paho.mqtt.client as paho
import pytest
import trio

from actors.gateway import subscriptions
from actors.session_drain import DrainFailed
from kosmo.config import MqttEndpoint, Settings
from kosmo.embedded import Broker
from tests.conftest import Gateway, db_value, start_gateway
from tests.mesh import FakeBridgeLink
from tests.test_reports import queued_message, status_of, wait_for

# Messages are handed to a bridge only while one is online: this one takes them all.
pytestmark = pytest.mark.usefixtures("online_bridge")

NODE = "!a1b2c3d4"
QUIET = 0.2  # the drain's quiet period here: loopback answers within milliseconds


def _client(endpoint: MqttEndpoint, client_id: str, *, clean: bool) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=clean, protocol=paho.MQTTv311)
    client.username_pw_set(endpoint.username, endpoint.password)
    return client


def _run_until(client: paho.Client, done: Callable[[], bool]) -> None:
    for _ in range(100):  # 10 s at most
        if done():
            return
        client.loop(timeout=0.1)
    raise TimeoutError("no answer from the broker")


def strand_session(endpoint: MqttEndpoint, client_id: str,
                   topics: list[tuple[str, int]]) -> None:
    """What a gateway process leaves when it dies: a persistent session with its
    subscriptions, and no client."""
    client = _client(endpoint, client_id, clean=False)
    subscribed: list[int] = []
    client.on_subscribe = lambda *args: subscribed.append(1)
    client.connect(endpoint.host, endpoint.port)
    client.subscribe(topics)
    _run_until(client, lambda: bool(subscribed))
    client.disconnect()


def session_present(endpoint: MqttEndpoint, client_id: str) -> bool:
    """Whether the broker holds a session for ``client_id`` (asking with clean_session=False
    creates one: delete it afterwards)."""
    client = _client(endpoint, client_id, clean=False)
    present: list[bool] = []
    client.on_connect = lambda c, u, flags, *rest: present.append(flags.session_present)
    client.connect(endpoint.host, endpoint.port)
    _run_until(client, lambda: bool(present))
    client.disconnect()
    return present[0]


def delete_session(endpoint: MqttEndpoint, client_id: str) -> None:
    client = _client(endpoint, client_id, clean=True)
    client.connect(endpoint.host, endpoint.port)  # no event loop: paho writes at once
    client.disconnect()


@pytest.fixture
def dead_id(mqtt_url: str, topic_root: str) -> Iterator[str]:
    """The client id of a gateway process that died; its session is removed afterwards."""
    client_id = f"dead-{topic_root}"
    yield client_id
    delete_session(MqttEndpoint.from_url(mqtt_url), client_id)


@pytest.fixture
def shared(settings: Settings) -> Settings:
    return settings.replace(mqtt_shared_group=f"g{uuid.uuid4().hex[:8]}")


def replies_stored(sql, packet_ids: list[int]) -> dict[int, int]:
    rows = sql.execute("SELECT packet_id, count(*) FROM messages WHERE direction = 'inbound'"
                       " AND packet_id = ANY(%s) GROUP BY packet_id", (packet_ids,)).fetchall()
    return {packet_id: count for packet_id, count in rows}


def delivered_rows(sql, message_id: str) -> int:
    return db_value(sql, "SELECT count(*) FROM message_status_history"
                         " WHERE message_id = %s AND status = 'delivered'", message_id)


async def test_a_dead_process_session_is_drained_once_and_deleted(
        nursery: trio.Nursery, shared: Settings, dead_id: str, sql, mqtt_url: str,
        topic_root: str, caplog: pytest.LogCaptureFixture):
    endpoint = MqttEndpoint.from_url(mqtt_url)
    await trio.to_thread.run_sync(strand_session, endpoint, dead_id, subscriptions(shared))
    bridge = FakeBridgeLink(mqtt_url, topic_root)
    try:
        async with start_gateway(nursery, shared) as gateway:
            ids = [await queued_message(gateway, sql, f"m{i}") for i in range(12)]
            packets = [7000 + i for i in range(12)]
            # The group has two sessions, the live gateway's and the dead one's: the broker
            # hands them the reports and replies in turn, so about half wait in the dead one.
            for mid, packet in zip(ids, packets, strict=True):
                bridge.status(mid, "delivered", packet_id=packet)
                bridge.reply(NODE, "answer", packet)
            # A bridge state: every session gets one, the dead one's waits (stale by now).
            other = "!b0000002"
            bridge.state("offline", bridge_id=other)
            bridge.state("online", bridge_id=other)
            await wait_for(lambda: gateway.running.consumer.states().get(other) == "online")

            handed = await gateway.running.drains.drain(dead_id, quiet=QUIET, within=10)

            assert handed > 0  # some reports and replies were in the dead session
            await wait_for(lambda: all(status_of(sql, m) == "delivered" for m in ids))
            assert [delivered_rows(sql, m) for m in ids] == [1] * len(ids)
            assert replies_stored(sql, packets) == dict.fromkeys(packets, 1)
            # The states in the dead session were acknowledged unread: the gateway had them
            # already, and replaying them would flap the bridge offline and online again.
            assert gateway.running.consumer.states()[other] == "online"
            assert caplog.text.count(f"bridge {other} is offline") == 1
            [skipped] = re.findall(r"messages handed over, (\d+) skipped", caplog.text)
            assert int(skipped) >= 2  # and the retained state it may have had in flight
            assert not await trio.to_thread.run_sync(session_present, endpoint, dead_id)

            # Nothing is routed to the dead process any more: the live gateway gets it all.
            later = [await queued_message(gateway, sql, f"later{i}") for i in range(6)]
            for mid in later:
                bridge.status(mid, "delivered")
            await wait_for(lambda: all(status_of(sql, m) == "delivered" for m in later))
    finally:
        bridge.close()


async def test_an_empty_or_absent_session_drains_at_once(
        nursery: trio.Nursery, shared: Settings, dead_id: str, mqtt_url: str):
    endpoint = MqttEndpoint.from_url(mqtt_url)
    async with start_gateway(nursery, shared) as gateway:
        assert await gateway.running.drains.drain(dead_id, quiet=QUIET, within=10) == 0
        assert not await trio.to_thread.run_sync(session_present, endpoint, dead_id)


async def test_own_client_id_is_refused(gateway: Gateway, settings: Settings):
    with pytest.raises(ValueError, match="own MQTT session"):
        await gateway.running.drains.drain(settings.mqtt_client_id)


async def test_a_second_drain_of_one_session_meanwhile_is_refused(
        gateway: Gateway, dead_id: str, caplog: pytest.LogCaptureFixture):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(gateway.running.drains.drain, dead_id, quiet=QUIET, within=10))
        await wait_for(lambda: f"as '{dead_id}' (epoch 1)" in caplog.text)
        with pytest.raises(DrainFailed, match="being drained already"):
            await gateway.running.drains.drain(dead_id)


async def test_broker_away_during_a_drain_fails_clearly_and_loses_nothing(
        nursery: trio.Nursery, shared: Settings, private_broker: Broker, sql, topic_root: str,
        caplog: pytest.LogCaptureFixture):
    if not private_broker.durable:
        pytest.skip("the session must survive the broker's restart (mosquitto persists it)")
    endpoint = MqttEndpoint.from_url(private_broker.url)
    settings = shared.replace(mqtt_url=endpoint)
    dead = f"dead-{topic_root}"
    await trio.to_thread.run_sync(strand_session, endpoint, dead, subscriptions(settings))
    bridge = FakeBridgeLink(private_broker.url, topic_root)
    try:
        bridge.state("online", {"credit": 100_000, "min_gap_s": 0.0})
        async with start_gateway(nursery, settings) as gateway:
            ids = [await queued_message(gateway, sql, f"m{i}") for i in range(8)]
            for mid in ids:
                bridge.status(mid, "delivered")
            await trio.to_thread.run_sync(private_broker.stop)

            with pytest.raises(DrainFailed, match=r"did not finish within 1 s \(connecting; "
                                                  r"0 messages handed over") as failed:
                await gateway.running.drains.drain(dead, quiet=QUIET, within=1)
            assert "the session is kept" in str(failed.value)
            assert str(failed.value) in caplog.text  # logged once, as a warning

            await trio.to_thread.run_sync(private_broker.start)
            await gateway.running.mqtt.wait_connected()
            assert await gateway.running.drains.drain(dead, quiet=QUIET, within=10) > 0
            await wait_for(lambda: all(status_of(sql, m) == "delivered" for m in ids))
            assert not await trio.to_thread.run_sync(session_present, endpoint, dead)
    finally:
        bridge.close()


async def test_a_broker_restart_in_the_middle_of_a_drain_is_waited_for(
        nursery: trio.Nursery, shared: Settings, private_broker: Broker, sql, topic_root: str,
        caplog: pytest.LogCaptureFixture):
    if not private_broker.durable:
        pytest.skip("the session must survive the broker's restart (mosquitto persists it)")
    endpoint = MqttEndpoint.from_url(private_broker.url)
    settings = shared.replace(mqtt_url=endpoint)
    dead = f"dead-{topic_root}"
    await trio.to_thread.run_sync(strand_session, endpoint, dead, subscriptions(settings))
    bridge = FakeBridgeLink(private_broker.url, topic_root)
    try:
        bridge.state("online", {"credit": 100_000, "min_gap_s": 0.0})
        async with start_gateway(nursery, settings) as gateway:
            ids = [await queued_message(gateway, sql, f"m{i}") for i in range(8)]
            for mid in ids:
                bridge.status(mid, "delivered")
            handed: list[int] = []

            async def drain() -> None:
                handed.append(await gateway.running.drains.drain(dead, quiet=0.5, within=30))

            async with trio.open_nursery() as draining:
                draining.start_soon(drain)
                await wait_for(lambda: f"as '{dead}' (epoch 1)" in caplog.text)
                await trio.to_thread.run_sync(private_broker.stop)
                await trio.to_thread.run_sync(private_broker.start)
            assert handed[0] > 0
            await wait_for(lambda: all(status_of(sql, m) == "delivered" for m in ids))
            assert [delivered_rows(sql, m) for m in ids] == [1] * len(ids)
            assert not await trio.to_thread.run_sync(session_present, endpoint, dead)
    finally:
        bridge.close()


async def test_a_dead_process_found_by_the_membership_has_its_session_drained(
        nursery: trio.Nursery, shared: Settings, dead_id: str, sql, mqtt_url: str,
        topic_root: str, monkeypatch: pytest.MonkeyPatch):
    """The whole path: a process row goes stale, a live gateway buries it, and its own
    stranded-sessions actor drains what the dead process's session held."""
    monkeypatch.setattr("actors.stranded.GRACE", 0.2)
    endpoint = MqttEndpoint.from_url(mqtt_url)
    await trio.to_thread.run_sync(strand_session, endpoint, dead_id, subscriptions(shared))
    sql.execute("INSERT INTO gateway_processes VALUES (%s, %s, 'h', 1, now(),"
                " now() - interval '1 hour')", (uuid.uuid4(), dead_id))
    bridge = FakeBridgeLink(mqtt_url, topic_root)
    try:
        async with start_gateway(nursery, shared) as gateway:
            ids = [await queued_message(gateway, sql, f"m{i}") for i in range(10)]
            for mid in ids:  # about half of them wait in the dead session
                bridge.status(mid, "delivered")
            await wait_for(lambda: gateway.running.stranded.drained == [dead_id], timeout=20)
            await wait_for(lambda: all(status_of(sql, m) == "delivered" for m in ids))
            assert [delivered_rows(sql, m) for m in ids] == [1] * len(ids)
            assert db_value(sql, "SELECT count(*) FROM stranded_sessions") == 0
            assert not await trio.to_thread.run_sync(session_present, endpoint, dead_id)
    finally:
        bridge.close()


async def test_a_session_whose_process_came_back_is_not_drained(
        nursery: trio.Nursery, settings: Settings, sql, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("actors.stranded.GRACE", 0.0)
    async with start_gateway(nursery, settings) as gateway:
        sql.execute("INSERT INTO stranded_sessions (client_id, since)"
                    " VALUES (%s, now() - interval '1 hour')", (settings.mqtt_client_id,))
        await wait_for(lambda: db_value(sql, "SELECT count(*) FROM stranded_sessions") == 0)
        assert gateway.running.stranded.drained == []
