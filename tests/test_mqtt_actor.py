"""The MQTT actor against a real broker: delivery, acks, sessions, reconnects, shutdown."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import trio
import trio.testing
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion

from actors.mqtt import MqttActor, MqttInbound, MqttUnavailable
from kosmo.config import MqttEndpoint
from kosmo.embedded import Broker, free_port

WATCHDOG = 10.0


def unique(kind: str) -> str:
    """A topic no other test (or earlier run) uses."""
    return f"kosmo/test/{kind}/{uuid.uuid4().hex[:12]}"


def unique_id(kind: str) -> str:
    """A client id, so a fresh persistent session."""
    return f"kosmo-test-{kind}-{uuid.uuid4().hex[:12]}"


def make_actor(url: str, client_id: str, subscriptions: Sequence[tuple[str, int]] = (),
               **options: Any) -> tuple[MqttActor, trio.MemoryReceiveChannel[MqttInbound]]:
    send, receive = trio.open_memory_channel[MqttInbound](options.pop("buffer", 0))
    actor = MqttActor(MqttEndpoint.from_url(url), client_id=client_id,
                      subscriptions=subscriptions, inbound=send,
                      backoff_min=0.02, backoff_max=0.2, **options)
    return actor, receive


async def start_actor(nursery: trio.Nursery, url: str, client_id: str,
                      subscriptions: Sequence[tuple[str, int]] = (),
                      **options: Any) -> tuple[MqttActor, trio.MemoryReceiveChannel[MqttInbound]]:
    actor, receive = make_actor(url, client_id, subscriptions, **options)
    await nursery.start(actor.run)
    return actor, receive


@pytest.fixture
def shared_ids(mqtt_url: str) -> Iterator[Callable[[str], str]]:
    """Client ids for the shared broker; their persistent sessions are removed afterwards."""
    made: list[str] = []

    def make(kind: str) -> str:
        made.append(unique_id(kind))
        return made[-1]

    yield make
    endpoint = MqttEndpoint.from_url(mqtt_url)
    for client_id in made:  # CONNECT with clean_session=True discards the stored session
        client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        client.username_pw_set(endpoint.username, endpoint.password)
        client.connect(endpoint.host, endpoint.port)  # no event loop: paho writes at once
        client.disconnect()


async def until(condition: Callable[[], bool]) -> None:
    """Poll a condition the actor exposes no event for (the test's watchdog bounds it)."""
    while not condition():
        await trio.sleep(0.01)


async def receive_until(receive: trio.MemoryReceiveChannel[MqttInbound],
                        last: bytes) -> list[bytes]:
    payloads: list[bytes] = []
    while not payloads or payloads[-1] != last:
        payloads.append((await receive.receive()).payload)
    return payloads


def open_sockets() -> set[str]:
    """The sockets this process holds open (Linux), as ``fd=socket:[inode]``.

    Compare with ``<=``: threads left by other tests may close their own sockets meanwhile,
    but no socket opened during a test may stay open after it."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if (link := os.readlink(f"/proc/self/fd/{fd}")).startswith("socket:"):
                found.add(f"{fd}={link}")
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            pass
    return found


# -- endpoint ------------------------------------------------------------------------------


def test_endpoint_from_url_and_redacted() -> None:
    plain = MqttEndpoint.from_url("mqtt://broker.local")
    assert plain == MqttEndpoint("broker.local", 1883)
    assert plain.redacted() == "mqtt://broker.local:1883"
    secure = MqttEndpoint.from_url("mqtts://gw%40site:p%3Ass@10.0.0.5:9883/")
    assert secure == MqttEndpoint("10.0.0.5", 9883, "gw@site", "p:ss", tls=True)
    assert secure.redacted() == "mqtts://gw@site:***@10.0.0.5:9883"
    assert MqttEndpoint.from_url("mqtts://[::1]").redacted() == "mqtts://[::1]:8883"
    MqttActor(secure, client_id="kosmo-test")  # TLS settings are applied per connection


@pytest.mark.parametrize("url", [
    "http://u:hunter2@host", "mqtt://u:hunter2@host:99999", "mqtt://u:hunter2@:1883",
    "mqtt://u:hunter2@host/topic", "mqtt://u:hunt@er2@host/topic", "broker:1883",
])
def test_endpoint_rejects_bad_urls_without_leaking_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="bad MQTT URL") as info:
        MqttEndpoint.from_url(url)
    assert "hunter2" not in str(info.value)
    assert "er2" not in str(info.value)
    assert "\n" not in str(info.value)


# -- delivery ------------------------------------------------------------------------------


async def test_publish_and_receive_qos1(
        mqtt_url: str, shared_ids: Callable[[str], str]) -> None:
    topic = unique("roundtrip")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            sub, inbox = await start_actor(nursery, mqtt_url, shared_ids("sub"), [(topic, 1)])
            pub, _ = await start_actor(nursery, mqtt_url, shared_ids("pub"))
            for i in range(3):
                await pub.publish(topic, b"hello %d" % i)
            for i in range(3):
                message = await inbox.receive()
                assert (message.topic, message.payload, message.qos) == (topic, b"hello %d" % i, 1)
                assert message.epoch == sub.statistics().epoch == 1
                await sub.ack(message)
            assert pub.statistics().published == 3
            assert pub.statistics().publishes_in_flight == 0
            assert sub.statistics().received == 3
            await pub.publish(topic, b"fire and forget", qos=0)
            assert (await inbox.receive()).payload == b"fire and forget"
            nursery.cancel_scope.cancel()


async def test_consumer_that_publishes_does_not_stall_the_reader(private_broker: Broker) -> None:
    """The consumer awaits its own PUBACKs while more messages arrive on an unbuffered channel."""
    inbound, outbound = unique("in"), unique("out")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            worker, inbox = await start_actor(nursery, private_broker.url, unique_id("worker"),
                                              [(inbound, 1)], buffer=0)
            feeder, _ = await start_actor(nursery, private_broker.url, unique_id("feeder"))

            async def answer_all(count: int) -> None:
                for i in range(count):
                    message = await inbox.receive()
                    assert message.payload == b"%d" % i
                    await worker.publish(outbound, message.payload)
                    await worker.ack(message)

            async def feed() -> None:
                for i in range(100):
                    await feeder.publish(inbound, b"%d" % i)

            nursery.start_soon(feed)
            # Generous, but catches Nagle's algorithm left on (~40 ms per round trip).
            with trio.fail_after(2.5):
                await answer_all(100)
            nursery.cancel_scope.cancel()


async def test_a_backlog_beyond_the_pending_queue_pauses_reading_without_reconnecting(
        private_broker: Broker) -> None:
    """A consumer far behind: the broker keeps what we have not read; no connection is dropped
    (dropping it made the broker send the whole backlog again, over and over)."""
    topic = unique("backlog")
    total = 2500  # well over the actor's pending queue of 1000
    with trio.fail_after(WATCHDOG * 3):
        async with trio.open_nursery() as nursery:
            slow, inbox = await start_actor(nursery, private_broker.url, unique_id("slow"),
                                            [(topic, 1)], buffer=0)
            feeder, _ = await start_actor(nursery, private_broker.url, unique_id("feeder"))
            async with trio.open_nursery() as feeding:
                for i in range(total):
                    feeding.start_soon(feeder.publish, topic, b"%d" % i)
            await trio.sleep(0.5)  # the consumer has not read anything yet: the queue fills
            seen = set()
            while len(seen) < total:
                message = await inbox.receive()
                seen.add(message.payload)
                await slow.ack(message)
            assert slow.statistics().reconnects == 0
            nursery.cancel_scope.cancel()


# -- failures --------------------------------------------------------------------------------


async def test_refused_connection_retries_with_warnings_only(
        caplog: pytest.LogCaptureFixture) -> None:
    endpoint = MqttEndpoint("127.0.0.1", free_port(), "gateway", "hunter2")
    actor = MqttActor(endpoint, client_id=unique_id("refused"), backoff_min=0.01, backoff_max=0.02)
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor.run)
            await until(lambda: actor.statistics().epoch >= 4)
            with trio.fail_after(0.5), pytest.raises(MqttUnavailable):
                await actor.publish("kosmo/test/refused", b"x")
            nursery.cancel_scope.cancel()
    records = [r for r in caplog.records if r.name == "actors.mqtt"]
    assert len(records) >= 3
    assert {r.levelno for r in records} == {logging.WARNING}
    assert "mqtt://gateway:***@127.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text


async def test_tls_against_a_plain_listener_fails_and_retries(
        private_broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    actor = MqttActor(MqttEndpoint("127.0.0.1", private_broker.port, tls=True),
                      client_id=unique_id("tls"), backoff_min=0.01, backoff_max=0.02)
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor.run)
            await until(lambda: actor.statistics().epoch >= 3)
            assert not actor.connected
            nursery.cancel_scope.cancel()
    assert {r.levelno for r in caplog.records if r.name == "actors.mqtt"} == {logging.WARNING}


async def test_publish_fails_promptly_when_the_broker_goes_away(private_broker: Broker) -> None:
    topic = unique("down")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            actor, _ = await start_actor(nursery, private_broker.url, unique_id("pub"))
            await actor.publish(topic, b"up")
            # Publish while the broker stops: whether the actor has noticed yet or not,
            # publish() must fail (at once, or when the connection drops before the PUBACK).
            async def publish_forever() -> None:
                while True:
                    await actor.publish(topic, b"racing")

            async def stop_broker() -> None:
                await trio.to_thread.run_sync(private_broker.stop)

            async with trio.open_nursery() as racing:
                racing.start_soon(stop_broker)
                with trio.fail_after(3), pytest.raises(MqttUnavailable):
                    await publish_forever()
            with trio.fail_after(0.5), pytest.raises(MqttUnavailable, match="not connected"):
                await actor.publish(topic, b"down")
            assert actor.statistics().publishes_in_flight == 0
            nursery.cancel_scope.cancel()


async def test_reconnects_after_broker_restart(private_broker: Broker) -> None:
    topic = unique("restart")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            actor, inbox = await start_actor(nursery, private_broker.url, unique_id("sub"),
                                              [(topic, 1)])
            await actor.publish(topic, b"before")
            before = await inbox.receive()  # deliberately not acked
            await trio.to_thread.run_sync(private_broker.stop)
            await until(lambda: not actor.connected)
            await trio.to_thread.run_sync(private_broker.start)
            await actor.wait_connected()
            await actor.publish(topic, b"after")
            payloads = await receive_until(inbox, b"after")
            if private_broker.durable:  # the session, with the unacked message, survived
                assert payloads == [b"before", b"after"]
            stats = actor.statistics()
            assert stats.connected
            assert stats.reconnects == 1
            assert stats.epoch > before.epoch
            await actor.ack(before)  # from an old connection: dropped, the broker redelivered it
            nursery.cancel_scope.cancel()


# -- sessions and acknowledgements -----------------------------------------------------------


async def test_message_published_while_away_is_delivered_on_return(
        private_broker: Broker) -> None:
    topic, client_id = unique("away"), unique_id("sub")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            pub, _ = await start_actor(nursery, private_broker.url, unique_id("pub"))
            async with trio.open_nursery() as visit:
                await start_actor(visit, private_broker.url, client_id, [(topic, 1)])
                visit.cancel_scope.cancel()
            await pub.publish(topic, b"while you were away")
            async with trio.open_nursery() as visit:
                sub, inbox = await start_actor(visit, private_broker.url, client_id, [(topic, 1)])
                message = await inbox.receive()
                assert message.payload == b"while you were away"
                await sub.ack(message)
                visit.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def test_unacked_message_is_redelivered_and_acked_one_is_not(
        private_broker: Broker) -> None:
    topic, client_id = unique("ack"), unique_id("sub")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            pub, _ = await start_actor(nursery, private_broker.url, unique_id("pub"))
            async with trio.open_nursery() as visit:
                sub, inbox = await start_actor(visit, private_broker.url, client_id, [(topic, 1)])
                await pub.publish(topic, b"stored")
                await pub.publish(topic, b"not stored")
                stored, not_stored = await inbox.receive(), await inbox.receive()
                assert (stored.payload, not_stored.payload) == (b"stored", b"not stored")
                await sub.ack(stored)
                visit.cancel_scope.cancel()
            async with trio.open_nursery() as visit:
                sub, inbox = await start_actor(visit, private_broker.url, client_id, [(topic, 1)])
                await pub.publish(topic, b"marker")
                assert await receive_until(inbox, b"marker") == [b"not stored", b"marker"]
                visit.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def test_ack_acts_only_on_messages_that_came_to_its_own_client_id(
        private_broker: Broker) -> None:
    """Two sessions get the same message under the same mid and epoch; one actor acking the
    other's message must not acknowledge its own (several actors feed one consumer)."""
    topic, mine_id = unique("whose"), unique_id("mine")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            pub, _ = await start_actor(nursery, private_broker.url, unique_id("pub"))
            other, others = await start_actor(nursery, private_broker.url, unique_id("other"),
                                              [(topic, 1)])
            async with trio.open_nursery() as visit:
                mine, inbox = await start_actor(visit, private_broker.url, mine_id, [(topic, 1)])
                await pub.publish(topic, b"for both")
                own, theirs = await inbox.receive(), await others.receive()
                assert (own.mid, own.epoch) == (theirs.mid, theirs.epoch)
                assert (own.client_id, theirs.client_id) == (mine_id, other.client_id)
                await mine.ack(theirs)  # not ours: dropped, ours stays unacknowledged
                await other.ack(theirs)
                visit.cancel_scope.cancel()
            async with trio.open_nursery() as visit:
                mine, inbox = await start_actor(visit, private_broker.url, mine_id, [(topic, 1)])
                await pub.publish(topic, b"marker")
                assert await receive_until(inbox, b"marker") == [b"for both", b"marker"]
                visit.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def test_unsubscribe_stops_delivery_and_is_not_renewed_at_reconnect(
        private_broker: Broker) -> None:
    kept, dropped = unique("kept"), unique("dropped")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            pub, _ = await start_actor(nursery, private_broker.url, unique_id("pub"))
            sub, inbox = await start_actor(nursery, private_broker.url, unique_id("sub"),
                                           [(kept, 1), (dropped, 1)])
            await sub.unsubscribe([dropped])
            await pub.publish(dropped, b"not for us")
            await pub.publish(kept, b"one")
            assert (await inbox.receive()).payload == b"one"  # not acked: it may come again
            await trio.to_thread.run_sync(private_broker.stop)
            await until(lambda: not sub.connected)
            with pytest.raises(MqttUnavailable, match="not connected"):
                await sub.unsubscribe([kept])
            await trio.to_thread.run_sync(private_broker.start)
            await sub.wait_connected()
            await pub.wait_connected()
            await pub.publish(dropped, b"still not for us")
            await pub.publish(kept, b"two")
            assert set(await receive_until(inbox, b"two")) <= {b"one", b"two"}
            nursery.cancel_scope.cancel()


async def test_clean_session_connect_deletes_a_stored_session(private_broker: Broker) -> None:
    topic, client_id = unique("clean"), unique_id("stored")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            pub, _ = await start_actor(nursery, private_broker.url, unique_id("pub"))
            async with trio.open_nursery() as visit:
                await start_actor(visit, private_broker.url, client_id, [(topic, 1)])
                visit.cancel_scope.cancel()
            await pub.publish(topic, b"queued in the stored session")
            async with trio.open_nursery() as visit:
                await start_actor(visit, private_broker.url, client_id, clean_session=True)
                visit.cancel_scope.cancel()
            async with trio.open_nursery() as visit:  # persistent again: a new, empty session
                _, inbox = await start_actor(visit, private_broker.url, client_id,
                                               [(topic, 1)])
                await pub.publish(topic, b"marker")
                assert await receive_until(inbox, b"marker") == [b"marker"]
                visit.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


# -- shutdown --------------------------------------------------------------------------------


async def test_cancel_closes_the_socket_politely_and_the_inbound_channel(
        mqtt_url: str, shared_ids: Callable[[str], str]) -> None:
    will_topic = unique("will")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            watcher, wills = await start_actor(nursery, mqtt_url, shared_ids("watch"),
                                               [(will_topic, 1)])
            sockets_before = open_sockets()
            async with trio.open_nursery() as life:
                actor, inbox = await start_actor(life, mqtt_url, shared_ids("mortal"),
                                                 will=(will_topic, b"died", 1, False))
                assert open_sockets() - sockets_before  # our socket is open
                life.cancel_scope.cancel()
            assert open_sockets() <= sockets_before
            assert not actor.connected
            with pytest.raises(trio.EndOfChannel):
                await inbox.receive()
            # A clean DISCONNECT discards the will: the watcher sees only its own marker.
            await watcher.publish(will_topic, b"marker")
            assert await receive_until(wills, b"marker") == [b"marker"]
            nursery.cancel_scope.cancel()


@contextmanager
def silent_listener(*, backlog_full: bool) -> Iterator[int]:
    """A local port that completes TCP handshakes but never speaks MQTT; with `backlog_full`
    it does not even complete the handshake, so connect() itself hangs."""
    with socket.socket() as listener, ExitStack() as fillers:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for _ in range(3 if backlog_full else 0):
            filler = fillers.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
        yield listener.getsockname()[1]


async def test_cancel_during_a_hanging_connect_returns_at_once() -> None:
    with silent_listener(backlog_full=True) as port:
        actor, inbox = make_actor(f"mqtt://127.0.0.1:{port}", unique_id("hang"))
        with trio.fail_after(WATCHDOG):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(actor.run)
                await trio.testing.wait_all_tasks_blocked()  # run() waits for connect()
                cancelled_at = trio.current_time()
                nursery.cancel_scope.cancel()
        assert trio.current_time() - cancelled_at < 0.5  # paho's connect timeout is 5 s
        with pytest.raises(trio.EndOfChannel):
            await inbox.receive()


async def test_cancel_while_waiting_for_connack_closes_the_socket() -> None:
    with silent_listener(backlog_full=False) as port:
        sockets_before = open_sockets()
        actor, inbox = make_actor(f"mqtt://127.0.0.1:{port}", unique_id("mute"))
        with trio.fail_after(WATCHDOG):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(actor.run)
                await until(lambda: bool(open_sockets() - sockets_before))
                assert not actor.connected
                nursery.cancel_scope.cancel()
        assert open_sockets() <= sockets_before
        with pytest.raises(trio.EndOfChannel):
            await inbox.receive()
