"""Replies from the mesh: threading rule, no cross-user leak, dedupe across bridges."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import trio

from tests.conftest import GUARDIAN, SANCTUARY, WANDERER, Gateway, db_value
from tests.mesh import FakeBridgeLink
from tests.test_reports import queued_message, status_of, wait_for

# Messages are handed to a bridge only while one is online: this one takes them all.
pytestmark = pytest.mark.usefixtures("online_bridge")

NODE = "!a1b2c3d4"


@pytest.fixture
async def bridge(mqtt_url: str, topic_root: str) -> AsyncIterator[FakeBridgeLink]:
    link = FakeBridgeLink(mqtt_url, topic_root)
    yield link
    link.close()


async def sent(gateway: Gateway, sql, user, packet_id: int | None = None,
               node: str = NODE) -> str:
    mid = (await gateway.send(user, node, "question")).json()["message_id"]
    await wait_for(lambda: status_of(sql, mid) == "queued")
    if packet_id is not None:
        sql.execute("UPDATE messages SET packet_id = %s WHERE id = %s", (packet_id, mid))
    return mid


async def reply_owner(bridge: FakeBridgeLink, sql, packet_id: int, **kw) -> object:
    bridge.reply(kw.pop("node", NODE), "answer", packet_id, **kw)
    await wait_for(lambda: db_value(sql, "SELECT count(*) FROM messages WHERE direction ="
                                         " 'inbound' AND packet_id = %s", packet_id) == 1)
    return db_value(sql, "SELECT user_id FROM messages WHERE direction = 'inbound'"
                         " AND packet_id = %s", packet_id)


async def inbox(gateway: Gateway, user) -> list[dict]:
    page = (await gateway.get(f"/api/v1/messages/conversations/{NODE}", user)).json()
    return [m for m in page["messages"] if m["direction"] == "inbound"]


async def test_reply_to_our_packet_goes_to_that_messages_user(gateway: Gateway, bridge, sql):
    await sent(gateway, sql, WANDERER, packet_id=1001)
    await sent(gateway, sql, GUARDIAN)  # more recent, but the reply names wanderer's packet
    assert await reply_owner(bridge, sql, 5001, reply_to=1001) == WANDERER
    [reply] = await inbox(gateway, WANDERER)
    assert reply["text"] == "answer"
    assert reply["status"] == "received"
    assert await inbox(gateway, GUARDIAN) == []
    detail = (await gateway.get(f"/api/v1/messages/{reply['message_id']}", WANDERER)).json()
    assert detail["direction"] == "inbound"
    assert [h["status"] for h in detail["status_history"]] == ["received"]
    other = await gateway.get(f"/api/v1/messages/{reply['message_id']}", GUARDIAN)
    assert other.status_code == 404


async def test_reply_to_a_packet_sent_to_another_node_falls_back(gateway: Gateway, bridge, sql):
    await sent(gateway, sql, WANDERER, packet_id=1002, node="!deadbeef")
    await sent(gateway, sql, SANCTUARY)
    assert await reply_owner(bridge, sql, 5002, reply_to=1002) == SANCTUARY


async def test_plain_reply_goes_to_the_most_recent_sender_only(gateway: Gateway, bridge, sql):
    await sent(gateway, sql, WANDERER)
    await sent(gateway, sql, GUARDIAN)
    assert await reply_owner(bridge, sql, 5003) == GUARDIAN
    assert len(await inbox(gateway, GUARDIAN)) == 1
    assert await inbox(gateway, WANDERER) == []


async def test_most_recent_counts_any_status(gateway: Gateway, bridge, sql):
    await sent(gateway, sql, WANDERER)
    failed = await sent(gateway, sql, GUARDIAN)
    bridge.status(failed, "failed", reason="NO_CHANNEL")
    await wait_for(lambda: status_of(sql, failed) == "failed")
    assert await reply_owner(bridge, sql, 5004) == GUARDIAN


async def test_reply_outside_the_window_is_unassigned(gateway: Gateway, bridge, sql):
    await sent(gateway, sql, WANDERER)
    sql.execute("UPDATE messages SET created_at = %s",
                (datetime.now(UTC) - timedelta(days=8),))
    assert await reply_owner(bridge, sql, 5005) is None
    assert await inbox(gateway, WANDERER) == []


async def test_reply_from_a_node_nobody_messaged_is_unassigned(gateway: Gateway, bridge, sql):
    await sent(gateway, sql, WANDERER)
    assert await reply_owner(bridge, sql, 5006, node="!0badf00d") is None
    listing = (await gateway.get("/api/v1/messages/conversations", WANDERER)).json()
    assert [c["node_id"] for c in listing["conversations"]] == [NODE]


async def test_free_plan_receives_replies(gateway: Gateway, bridge, sql):
    await sent(gateway, sql, WANDERER)
    sql.execute("UPDATE subscriptions SET plan_code = 'free' WHERE user_id = %s", (WANDERER,))
    assert await reply_owner(bridge, sql, 5007) == WANDERER
    assert len(await inbox(gateway, WANDERER)) == 1


async def test_same_packet_from_two_bridges_is_stored_once(gateway: Gateway, bridge, sql):
    await sent(gateway, sql, WANDERER)
    bridge.reply(NODE, "answer", 5008, bridge_id="!b0000001")
    bridge.reply(NODE, "answer", 5008, bridge_id="!b0000002")
    marker = await queued_message(gateway, sql, "marker")
    bridge.status(marker, "transmitted")  # handled after both copies
    await wait_for(lambda: status_of(sql, marker) == "transmitted")
    assert db_value(sql, "SELECT count(*) FROM messages WHERE direction = 'inbound'") == 1
    assert len(await inbox(gateway, WANDERER)) == 1
    assert gateway.running.consumer.stored == 1


async def test_bridge_states_show_in_healthz(gateway: Gateway, bridge, topic_root):
    bridge.state("online", {"queue_depth": 0}, bridge_id="!b0000001")
    bridge.state("offline", bridge_id="!b0000002")

    async def states() -> list:
        return (await gateway.client.get("/healthz")).json()["bridges"]

    with trio.fail_after(10):
        while len(found := await states()) < 2:
            await trio.sleep(0.02)
    assert [(b["bridge_id"], b["state"]) for b in found] == [("!b0000001", "online"),
                                                             ("!b0000002", "offline")]
    assert found[0]["queue_depth"] == 0
    assert found[0]["last_seen"].endswith("Z")
    # Clearing a retained state makes the gateway forget that bridge.
    bridge.publish(f"{topic_root}/bridge/!b0000002/state", b"", retain=True)
    with trio.fail_after(10):
        while len(found := await states()) > 1:
            await trio.sleep(0.02)
    bridge.publish(f"{topic_root}/bridge/!b0000001/state", b"", retain=True)


def test_two_copies_of_a_packet_in_one_batch_are_stored_once(sql):
    from kosmo.inbound_store import store_inbound
    from kosmo.wire import InboundPacket

    now = datetime.now(UTC)
    packet = InboundPacket(NODE, "answer", 6001, "!b0000001", now, None)
    copy = InboundPacket(NODE, "answer", 6001, "!b0000002", now, None)
    stored, events = store_inbound(sql, [packet, copy], [], now, 3600)
    assert [s.message_id is not None for s in stored] == [True, False]
    assert events == []  # nobody messaged that node: unassigned, no event
    assert db_value(sql, "SELECT count(*) FROM messages WHERE direction = 'inbound'") == 1
