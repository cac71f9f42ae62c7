"""Firmware 2.7 refuses a direct message to a node whose public key it lacks: end to end, the
gateway, the broker, a bridge with the real meshtastic library and a simulated radio that lacks
the node's key. The message ends ``failed`` / ``no_public_key`` and is refunded exactly once:
it never reached the air."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from bridge.sim import make_nodes
from tests.conftest import WANDERER, db_value
from tests.mesh import FakeBridgeLink
from tests.test_bridge import NODE, BridgeRunner, SimRunner, make_settings

KEYLESS = "!cafe0003"


def used(sql: Any) -> int:
    return int(db_value(sql, "SELECT coalesce(sum(used), 0) FROM quota_usage WHERE user_id = %s",
                        WANDERER))


async def test_a_node_without_a_public_key_fails_unsent_and_is_refunded_once(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, gateway: Any,
        sql: Any) -> None:
    sim = await SimRunner(nodes=make_nodes(3, no_key=[0xCAFE0003])).start(nursery)
    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim))
    bridge = await runner.start(nursery)
    sent = await gateway.send(WANDERER, KEYLESS, "hello keyless")
    assert sent.status_code == 201, sent.text
    assert sent.json()["quota"]["used"] == used(sql) == 1
    mid = sent.json()["message_id"]

    async def message() -> dict[str, Any]:
        return dict((await gateway.get(f"/api/v1/messages/{mid}", WANDERER)).json())

    with trio.fail_after(15):
        while (body := await message())["status"] != "failed":
            await trio.sleep(0.05)
    assert body["reason"] == "no_public_key"
    assert [(e["status"], e["reason"]) for e in body["status_history"]] == [
        ("pending", None), ("queued", None), ("failed", "no_public_key")]  # never transmitted
    assert used(sql) == 0
    assert db_value(sql, "SELECT charged FROM messages WHERE id = %s", mid) is False
    assert sim.texts_on_air("hello keyless") == 0
    assert sim.radio.stats.naks == {"PKI_SEND_FAIL_PUBLIC_KEY": 1}

    # The same report again (a bridge may publish one twice), then a text that goes out.
    link = FakeBridgeLink(mqtt_url, topic_root, bridge_id=bridge.bridge_id)
    try:
        await trio.to_thread.run_sync(
            lambda: link.status(mid, "failed", reason="no_public_key"))
    finally:
        link.close()
    after = await gateway.send(WANDERER, NODE, "and hello again")
    later = after.json()["message_id"]
    with trio.fail_after(15):
        while (await gateway.get(f"/api/v1/messages/{later}", WANDERER)).json()[
                "status"] != "delivered":
            await trio.sleep(0.05)
    assert used(sql) == 1  # the delivered one; the refusal was given back once
    assert sim.texts_on_air("and hello again") == 1
    await runner.stop()
