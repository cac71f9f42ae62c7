"""The bridge's retained state says its pace and credit as the gateway reads them
(``kosmo.wire.parse_pace``), for a US radio (one text per 2 s) and an EU_868 radio (10 % of
each hour), in real seconds of a radio that runs TS times faster; and it says at once what the
bridge holds, each time that changes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.sender import GAP_MARGIN, GAP_MARGIN_REAL, MIN_GAP
from kosmo import airtime, wire
from tests.test_bridge import (
    TS,
    BridgeRunner,
    Mesh,
    Observer,
    SimRunner,
    make_settings,
    outbound,
    wait_for,
)


@pytest.fixture
async def mesh(mqtt_url: str, topic_root: str) -> AsyncIterator[Mesh]:
    view = Mesh(mqtt_url, topic_root)
    with trio.fail_after(10):
        await view.seen.subscribed.wait()
    yield view
    view.close()


async def retained_state(url: str, topic: str) -> wire.BridgeState:
    late = Observer(url, [topic])  # subscribes after the fact: gets the retained one
    try:
        await wait_for(lambda: late.messages)
        _topic, body = late.messages[-1]
    finally:
        late.close()
    return wire.parse_bridge_state(topic, json.dumps(body).encode())


@pytest.mark.parametrize(("region", "duty"), [("US", None), ("EU_868", 0.1)])
async def test_the_retained_state_says_the_pace(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, mesh: Mesh,
        region: str, duty: float | None) -> None:
    sim = await SimRunner(region=region).start(nursery)
    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim, credit=3))
    bridge = await runner.start(nursery)
    topic = wire.bridge_state_topic(topic_root, bridge.bridge_id)
    await wait_for(lambda: any("node_id" in s for s in mesh.states()))

    state = await retained_state(mqtt_url, topic)
    assert state.state == "online"
    pace = wire.parse_pace(state.info)
    gap = (MIN_GAP + GAP_MARGIN + GAP_MARGIN_REAL * TS) / TS  # real seconds
    assert pace == wire.Pace(credit=3, min_gap_s=round(gap, 3), duty_cycle=duty,
                             window_s=airtime.DUTY_WINDOW / TS, airtime_used_s=0.0, busy_s=0.0,
                             region=region, modem_preset="LONG_FAST", time_scale=TS)
    assert state.info["time_scale"] == TS
    assert state.info["duty_cycle_percent"] == (None if duty is None else 10.0)

    # One text on air: its airtime (radio seconds by kosmo.airtime) is spent, in real seconds.
    message = outbound(text="pace")
    await mesh.send(message)
    await wait_for(lambda: "delivered" in mesh.status_names(message["message_id"]))
    await wait_for(lambda: any(s.get("airtime_used_s") for s in mesh.states()))
    spent = wire.parse_pace((await retained_state(mqtt_url, topic)).info).airtime_used_s
    params = airtime.preset_params("LONG_FAST")
    assert spent == pytest.approx(airtime.text_airtime(params, len(b"pace")) / TS, abs=1e-3)
    assert await runner.stop() < 5


async def test_every_change_of_what_the_bridge_holds_is_said_at_once(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str,
        mesh: Mesh) -> None:
    """Texts leave the queue one per 2 radio seconds, a tenth of a real second at TS 20: the
    state follows each of them, not once a second."""
    sim = await SimRunner().start(nursery)
    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim))
    await runner.start(nursery)
    await wait_for(lambda: any("node_id" in s for s in mesh.states()))
    messages = [outbound(text=f"held {i}") for i in range(5)]
    for message in messages:
        await mesh.send(message)
    for message in messages:
        await wait_for(lambda m=message: "delivered" in mesh.status_names(m["message_id"]))

    def depths() -> list[Any]:
        return [s.get("queue_depth") for s in mesh.states() if s.get("state") == "online"]

    await wait_for(lambda: depths()[-1] == 0)
    seen = depths()
    peak = seen.index(max(seen))
    # On the way down from the peak every depth was said, in order.
    assert [d for i, d in enumerate(seen[peak:]) if i == 0 or d != seen[peak + i - 1]] == \
        list(range(max(seen), -1, -1))
    assert max(seen) >= 3, seen
    assert all(sim.texts_on_air(m["text"]) == 1 for m in messages)
    assert await runner.stop() < 5
