"""Delivery reports from bridges: every status path, refunds exactly once, expiry, dead letters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import trio

from kosmo import wire
from kosmo.config import Settings
from tests.conftest import WANDERER, Gateway, db_value, start_gateway
from tests.mesh import FakeBridgeLink

# Messages are handed to a bridge only while one is online: this one takes them all.
pytestmark = pytest.mark.usefixtures("online_bridge")


@pytest.fixture
async def bridge(mqtt_url: str, topic_root: str) -> AsyncIterator[FakeBridgeLink]:
    link = FakeBridgeLink(mqtt_url, topic_root)
    yield link
    link.close()


async def wait_for(condition, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


def status_of(sql, message_id: str) -> str:
    return db_value(sql, "SELECT status FROM messages WHERE id = %s", message_id)


def used(sql) -> int:
    return db_value(sql, "SELECT coalesce(sum(used), 0) FROM quota_usage WHERE user_id = %s",
                    WANDERER)


def history(sql, message_id: str) -> list[tuple[str, str | None, bool]]:
    return [tuple(r) for r in sql.execute(
        "SELECT status, reason, note FROM message_status_history WHERE message_id = %s"
        " ORDER BY id", (message_id,)).fetchall()]


async def queued_message(gateway: Gateway, sql, text: str = "hi") -> str:
    message_id = (await gateway.send(WANDERER, "!a1b2c3d4", text)).json()["message_id"]
    await wait_for(lambda: status_of(sql, message_id) == "queued")
    return message_id


async def test_transmitted_then_delivered(gateway: Gateway, bridge, sql):
    mid = await queued_message(gateway, sql)
    bridge.status(mid, "transmitted", packet_id=77)
    await wait_for(lambda: status_of(sql, mid) == "transmitted")
    bridge.status(mid, "delivered", packet_id=77)
    await wait_for(lambda: status_of(sql, mid) == "delivered")
    assert history(sql, mid) == [("pending", None, False), ("queued", None, False),
                                 ("transmitted", None, False), ("delivered", None, False)]
    row = sql.execute("SELECT packet_id, bridge_id FROM messages WHERE id = %s",
                      (mid,)).fetchone()
    assert tuple(row) == (77, "!b0000001")
    assert used(sql) == 1
    detail = (await gateway.get(f"/api/v1/messages/{mid}", WANDERER)).json()
    assert [h["status"] for h in detail["status_history"]] == [
        "pending", "queued", "transmitted", "delivered"]


async def test_delivered_before_transmitted_and_duplicates(gateway: Gateway, bridge, sql):
    mid = await queued_message(gateway, sql)
    bridge.status(mid, "delivered")
    bridge.status(mid, "delivered")
    bridge.status(mid, "transmitted")
    marker = await queued_message(gateway, sql, "marker")  # reports are handled in order
    bridge.status(marker, "transmitted")
    await wait_for(lambda: status_of(sql, marker) == "transmitted")
    assert status_of(sql, mid) == "delivered"
    assert history(sql, mid) == [("pending", None, False), ("queued", None, False),
                                 ("transmitted", "inferred", False), ("delivered", None, False)]


@pytest.mark.parametrize("reason", ["MAX_RETRANSMIT", "NO_CHANNEL", "TOO_LARGE",
                                    "PKI_UNKNOWN_PUBKEY", None])
async def test_failed_before_the_air_is_refunded_once(gateway: Gateway, bridge, sql, reason):
    mid = await queued_message(gateway, sql)
    assert used(sql) == 1
    bridge.status(mid, "failed", reason=reason)
    bridge.status(mid, "failed", reason=reason)  # a duplicate: refunded once only
    await wait_for(lambda: status_of(sql, mid) == "failed")
    marker = await queued_message(gateway, sql, "marker")
    bridge.status(marker, "transmitted")
    await wait_for(lambda: status_of(sql, marker) == "transmitted")
    assert used(sql) == 1  # the marker's debit; the failed one was given back
    assert db_value(sql, "SELECT reason FROM messages WHERE id = %s", mid) == (reason or "unknown")
    assert db_value(sql, "SELECT charged FROM messages WHERE id = %s", mid) is False


async def test_failed_after_transmission_is_not_refunded(gateway: Gateway, bridge, sql):
    mid = await queued_message(gateway, sql)
    bridge.status(mid, "transmitted")
    bridge.status(mid, "failed", reason="MAX_RETRANSMIT")
    await wait_for(lambda: status_of(sql, mid) == "failed")
    assert used(sql) == 1


async def test_unknown_message_id_and_bad_payloads_are_dead_letters(
        gateway: Gateway, bridge, sql, topic_root):
    status, inbound = f"{topic_root}/mesh/status", f"{topic_root}/mesh/inbound"
    bad = [
        (status, wire.status_payload("8a6e0804-2bd0-4672-b79d-d97358571b11", "delivered",
                                     bridge_id="b", at=datetime(2026, 11, 27, 10, tzinfo=UTC)),
         "unknown message id"),
        (status, b"{not json", "not JSON"),
        (status, b"\xff\xfe\x00", "not UTF-8"),
        (status, b"[1, 2]", "not a JSON object"),
        (status, json.dumps({"message_id": 5, "status": "delivered"}).encode(), "message_id"),
        (status, json.dumps({"message_id": "8a6e0804-2bd0-4672-b79d-d97358571b11",
                             "status": "pending", "bridge_id": "b", "at": 1}).encode(), "status"),
        (inbound, json.dumps({"from_node_id": "nobody", "text": "x"}).encode(), "from_node_id"),
        (inbound, json.dumps({"from_node_id": "!a1b2c3d4", "text": "x", "packet_id": "7",
                              "bridge_id": "b", "rx_time": 1}).encode(), "packet_id"),
        (inbound, b"x" * 5000, "over 4096"),
        (f"{topic_root}/bridge/b1/state", b'{"state": "confused"}', "state"),
    ]
    for topic, payload, _ in bad:
        bridge.publish(topic, payload)
    good = await queued_message(gateway, sql)  # the actor survived and still works
    bridge.status(good, "transmitted")
    await wait_for(lambda: status_of(sql, good) == "transmitted")
    await wait_for(lambda: db_value(sql, "SELECT count(*) FROM dead_letters") == len(bad))
    # One dead letter each, whatever batches the consumer took them in.
    reasons = [r[0] for r in sql.execute("SELECT reason FROM dead_letters ORDER BY id")]
    for _, _, expected in bad:
        match = next(r for r in reasons if expected in r)
        reasons.remove(match)
    assert reasons == []
    assert db_value(sql, "SELECT max(length(payload)) FROM dead_letters") <= 4096
    assert gateway.running.consumer.dead_letters == len(bad)


async def test_a_bad_report_does_not_take_its_batch_neighbours_down(gateway: Gateway, bridge, sql):
    mids = [await queued_message(gateway, sql, f"m{i}") for i in range(5)]
    for i, mid in enumerate(mids):
        bridge.publish(f"{bridge.root}/mesh/status", b"garbage")
        bridge.status(mid, "transmitted", packet_id=100 + i)
    await wait_for(lambda: all(status_of(sql, m) == "transmitted" for m in mids))


async def test_expiry_refunds_once_and_holds_across_a_restart(
        nursery, settings: Settings, bridge, sql):
    async with start_gateway(nursery, settings) as gateway:
        first = await queued_message(gateway, sql, "first")
        on_air = await queued_message(gateway, sql, "on air")
        bridge.status(on_air, "transmitted")
        await wait_for(lambda m=on_air: status_of(sql, m) == "transmitted")
        sql.execute("UPDATE messages SET expires_at = %s WHERE id = ANY(%s)",
                    (datetime.now(UTC) - timedelta(seconds=1), [first, on_air]))
        assert await gateway.running.expiry.sweep() == 1
        assert status_of(sql, first) == "expired"
        assert status_of(sql, on_air) == "transmitted"  # it reached the air in time
        assert used(sql) == 1
        # A late report for an expired message is kept as a note and changes nothing.
        bridge.status(first, "transmitted")
        await wait_for(lambda m=first: history(sql, m)[-1] == ("transmitted", None, True))
        assert status_of(sql, first) == "expired"
        assert used(sql) == 1
        second = await queued_message(gateway, sql, "second")
    # The gateway is down; the second message's deadline passes; the next start expires it.
    sql.execute("UPDATE messages SET expires_at = %s WHERE id = %s",
                (datetime.now(UTC) - timedelta(seconds=1), second))
    async with start_gateway(nursery, settings) as _restarted:
        await wait_for(lambda: status_of(sql, second) == "expired")
        assert used(sql) == 1
        assert db_value(sql, "SELECT reason FROM messages WHERE id = %s", second) == "ttl"
