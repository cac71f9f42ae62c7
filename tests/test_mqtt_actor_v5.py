"""The MQTT actor speaking MQTT 5: a persistent session, and NoSubscribers when a publish
matched no subscription (PUBACK reason code 16)."""

from __future__ import annotations

import socket

import pytest
import trio

from actors.mqtt import MqttUnavailable, NoSubscribers
from kosmo.embedded import Broker
from tests.test_mqtt_actor import WATCHDOG, receive_until, start_actor, unique, unique_id, until


async def test_a_session_persists_across_reconnects(private_broker: Broker) -> None:
    topic, client_id = unique("away5"), unique_id("sub5")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            pub, _ = await start_actor(nursery, private_broker.url, unique_id("pub"))
            async with trio.open_nursery() as visit:
                _, inbox = await start_actor(visit, private_broker.url, client_id,
                                             [(topic, 1)], protocol="5")
                await pub.publish(topic, b"not acked")
                assert (await inbox.receive()).payload == b"not acked"
                visit.cancel_scope.cancel()
            await pub.publish(topic, b"while away")
            async with trio.open_nursery() as visit:
                _, inbox = await start_actor(visit, private_broker.url, client_id,
                                             [(topic, 1)], protocol="5")
                await pub.publish(topic, b"marker")
                payloads = await receive_until(inbox, b"marker")
                assert payloads == [b"not acked", b"while away", b"marker"]
                visit.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def test_a_clean_connect_deletes_the_session(private_broker: Broker) -> None:
    topic, client_id = unique("clean5"), unique_id("stored5")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            pub, _ = await start_actor(nursery, private_broker.url, unique_id("pub"))
            async with trio.open_nursery() as visit:
                await start_actor(visit, private_broker.url, client_id, [(topic, 1)],
                                  protocol="5")
                visit.cancel_scope.cancel()
            await pub.publish(topic, b"queued in the stored session")
            async with trio.open_nursery() as visit:
                await start_actor(visit, private_broker.url, client_id, clean_session=True,
                                  protocol="5")
                visit.cancel_scope.cancel()
            async with trio.open_nursery() as visit:
                _, inbox = await start_actor(visit, private_broker.url, client_id, [(topic, 1)],
                                             protocol="5")
                await pub.publish(topic, b"marker")
                assert await receive_until(inbox, b"marker") == [b"marker"]
                visit.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def test_a_publish_that_matched_no_subscription_raises_no_subscribers(
        private_broker: Broker) -> None:
    topic = unique("nosub")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            v5, _ = await start_actor(nursery, private_broker.url, unique_id("pub5"),
                                      protocol="5")
            v311, _ = await start_actor(nursery, private_broker.url, unique_id("pub311"))
            with pytest.raises(NoSubscribers, match=topic):
                await v5.publish(topic, b"to nobody")
            assert not isinstance(NoSubscribers(), MqttUnavailable)
            await v5.publish(topic, b"retained", retain=True)  # kept by the broker
            await v5.publish(topic, b"", retain=True)  # (and cleared)
            await v5.publish(topic, b"at most once", qos=0)  # no PUBACK, no answer
            await v311.publish(topic, b"to nobody, unknowingly")  # MQTT 3.1.1 cannot tell
            publication = v5.start_publish(topic, b"started")
            with pytest.raises(NoSubscribers):
                await publication.wait()
            assert v5.statistics().publishes_in_flight == 0

            _, inbox = await start_actor(nursery, private_broker.url, unique_id("sub"),
                                         [(f"$share/group/{topic}", 1)])
            await v5.publish(topic, b"to the group")
            assert (await inbox.receive()).payload == b"to the group"
            nursery.cancel_scope.cancel()


async def test_a_will_is_published_when_the_connection_dies(private_broker: Broker) -> None:
    topic = unique("will5")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            _, inbox = await start_actor(nursery, private_broker.url, unique_id("sub"),
                                         [(topic, 1)])
            async with trio.open_nursery() as visit:
                dying, _ = await start_actor(visit, private_broker.url, unique_id("dying"),
                                             will=(topic, b"gone", 1, False), protocol="5")
                link = dying._link
                assert link is not None
                # The connection ends without a DISCONNECT: the broker publishes the will.
                link.sock.shutdown(socket.SHUT_RDWR)
                await until(lambda: not dying.connected)
                assert (await inbox.receive()).payload == b"gone"
                visit.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def test_an_mqtt_311_session_is_taken_over_by_mqtt_5(private_broker: Broker) -> None:
    """A bridge upgraded in place keeps the session, with what was queued in it."""
    topic, client_id = unique("upgrade"), unique_id("sub")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            pub, _ = await start_actor(nursery, private_broker.url, unique_id("pub"))
            async with trio.open_nursery() as visit:
                await start_actor(visit, private_broker.url, client_id, [(topic, 1)])
                visit.cancel_scope.cancel()
            await pub.publish(topic, b"queued for 3.1.1")
            async with trio.open_nursery() as visit:
                _, inbox = await start_actor(visit, private_broker.url, client_id, [(topic, 1)],
                                             protocol="5")
                await pub.publish(topic, b"marker")
                assert await receive_until(inbox, b"marker") == [b"queued for 3.1.1", b"marker"]
                visit.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
