"""Coverage: which nodes each bridge's radio hears, kept in PostgreSQL.

End to end: a bridge attached to the simulated radio (through the real meshtastic library)
reports the radio's node database and the senders of the packets it receives; the gateway stores
one row per (bridge, node), the newest observation winning. Through a real broker: an older
observation never overwrites a newer one, a bad payload is a dead letter. The store's rules on
PostgreSQL, and the bridge's own parts (what it reads from the library, its batching) alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from bridge.coverage import CoverageReporter, node_db_heard, packet_heard
from bridge.sim import make_nodes
from kosmo import wire
from kosmo.coverage_store import coverage_of, nodes_heard, store_coverage
from tests.conftest import WANDERER, Gateway, db_value
from tests.mesh import FakeBridgeLink
from tests.test_bridge import NODE, BridgeRunner, SimRunner, make_settings

T0 = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)
SIM_NODES = make_nodes(3)  # !a1b2c3d4 (1 hop), !a2b3c4d5 (a neighbour), !a3b4c5d6 (2 hops)


def rows(sql: psycopg.Connection[Any], bridge_id: str) -> dict[str, tuple[Any, ...]]:
    return {node: (at, snr, hops) for node, at, snr, hops in coverage_of(sql, bridge_id)}


async def until(check: Any, timeout: float = 15) -> Any:
    with trio.fail_after(timeout):
        while not (found := check()):
            await trio.sleep(0.05)
    return found


# --- end to end -------------------------------------------------------------------------------

async def test_the_gateway_keeps_what_a_bridges_radio_hears(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str,
        gateway: Gateway, sql: psycopg.Connection[Any]) -> None:
    sim = await SimRunner(nodes=SIM_NODES).start(nursery)
    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim))
    bridge = await runner.start(nursery)
    bridge_id = bridge.bridge_id

    # The node database, as the radio gave it to the library at connect: every remote node,
    # with its last_heard (the sim: a minute apart), SNR and hops; never the radio's own node.
    found = await until(lambda: len(rows(sql, bridge_id)) == 3 and rows(sql, bridge_id))
    sim_db = {n.id: n for n in SIM_NODES}
    assert set(found) == set(sim_db)
    for node_id, (at, snr, hops) in found.items():
        assert hops == sim_db[node_id].hops_away
        assert snr == pytest.approx(9.5 - 4.0 * hops)
        assert at < datetime.now(UTC)
    health = (await gateway.client.get("/healthz")).json()
    assert [(b["bridge_id"], b["nodes_heard"]) for b in health["bridges"]] == [(bridge_id, 3)]

    # A message to NODE: its ACK and its reply are packets heard from it, so its row moves to
    # now (the bridge's clock); the other nodes' rows stay as the node database said.
    before = found[NODE][0]
    sent = await gateway.send(WANDERER, NODE, "are you there")
    assert sent.status_code == 201, sent.text
    after = await until(lambda: (r := rows(sql, bridge_id))[NODE][0] > before and r)
    assert after[NODE][0] > datetime.now(UTC) - timedelta(seconds=30)
    assert after[NODE][2] == sim_db[NODE].hops_away  # hop_start - hop_limit of its packets
    assert {k: v for k, v in after.items() if k != NODE} == \
        {k: v for k, v in found.items() if k != NODE}
    await runner.stop()


# --- the gateway's rules, through a real broker -----------------------------------------------

async def test_an_older_observation_never_overwrites_a_newer_one(
        gateway: Gateway, mqtt_url: str, topic_root: str, sql: psycopg.Connection[Any]) -> None:
    link = FakeBridgeLink(mqtt_url, topic_root, "pi-north")
    topic = wire.heard_topic(topic_root, "pi-north")
    try:
        async def publish(*nodes: wire.Heard) -> None:
            for payload in wire.heard_payloads(nodes):
                await trio.to_thread.run_sync(link.publish, topic, payload)

        await publish(wire.Heard("!a1b2c3d4", T0, 5.5, 1), wire.Heard("!00000001", T0))
        await until(lambda: len(rows(sql, "pi-north")) == 2)
        later = T0 + timedelta(minutes=5)
        await publish(wire.Heard("!A1B2C3D4", later, -3.25, 2))
        await until(lambda: rows(sql, "pi-north")["!a1b2c3d4"][0] == later)
        await publish(wire.Heard("!a1b2c3d4", T0 + timedelta(minutes=1), 9.0, 0),
                      wire.Heard("!00000001", T0 + timedelta(minutes=1)))
        await until(lambda: rows(sql, "pi-north")["!00000001"][0] > T0)
        assert rows(sql, "pi-north") == {"!a1b2c3d4": (later, -3.25, 2),
                                         "!00000001": (T0 + timedelta(minutes=1), None, None)}
    finally:
        link.close()


@pytest.mark.parametrize(("payload", "reason"), [
    (b'{"nodes":[{"node_id":"!a1b2c3d4"}]}', "nodes[0].last_heard must be"),
    (b'{"nodes":[{"node_id":"a1b2c3d4","last_heard":0}]}', "nodes[0].node_id must be"),
    (b'{"nodes":[{"node_id":"!a1b2c3d4","last_heard":0,"hops_away":8}]}',
     "nodes[0].hops_away must be an integer 0..7"),
    (b'{"nodes":{}}', "nodes must be a list"),
    (b"[]", "payload is not a JSON object"),
])
async def test_an_unusable_report_is_a_dead_letter(
        gateway: Gateway, mqtt_url: str, topic_root: str, sql: psycopg.Connection[Any],
        payload: bytes, reason: str) -> None:
    link = FakeBridgeLink(mqtt_url, topic_root, "pi-north")
    topic = wire.heard_topic(topic_root, "pi-north")
    try:
        await trio.to_thread.run_sync(link.publish, topic, payload)
        good = wire.heard_payloads([wire.Heard("!a1b2c3d4", T0)])[0]
        await trio.to_thread.run_sync(link.publish, topic, good)
        await until(lambda: rows(sql, "pi-north"))
    finally:
        link.close()
    assert db_value(sql, "SELECT topic FROM dead_letters") == topic
    assert db_value(sql, "SELECT reason FROM dead_letters").startswith(reason)
    assert gateway.running.consumer.dead_letters == 1


# --- the store ----------------------------------------------------------------------------------

def report(bridge_id: str, *nodes: wire.Heard) -> wire.HeardReport:
    return wire.HeardReport(bridge_id, nodes)


def test_the_newest_observation_in_a_batch_wins_and_missing_values_are_kept(
        sql: psycopg.Connection[Any]) -> None:
    a, b = "!a1b2c3d4", "!a2b3c4d5"
    later = T0 + timedelta(seconds=1)
    assert store_coverage(sql, [report("n", wire.Heard(a, later, 1.0, 1)),
                                report("n", wire.Heard(a, T0, 2.0, 2)),
                                report("s", wire.Heard(a, T0, 3.0, 3))], T0) == 2
    assert rows(sql, "n") == {a: (later, 1.0, 1)}
    assert store_coverage(sql, [report("n", wire.Heard(a, later, 7.0, 0))], T0) == 0  # as old
    assert store_coverage(sql, [report("n", wire.Heard(a, later + timedelta(1)),
                                       wire.Heard(b, T0))], T0) == 2
    assert rows(sql, "n") == {a: (later + timedelta(1), 1.0, 1), b: (T0, None, None)}
    assert nodes_heard(sql, ["n", "s", "x"]) == {"n": 2, "s": 1}
    assert store_coverage(sql, [], T0) == 0


# --- the bridge's parts -------------------------------------------------------------------------

def test_the_node_database_as_the_library_keeps_it() -> None:
    nodes: list[Mapping[str, Any]] = [
        {"num": 0xA1B2C3D4, "lastHeard": 1_764_000_000, "snr": 5.5, "hopsAway": 1},
        {"num": 0x0A0A0A0A, "lastHeard": 1_764_000_001},  # kept: the caller knows its own node
        {"num": 0xA2B3C4D5, "lastHeard": 1_764_000_002, "snr": 7},  # hopsAway 0 left out
        {"num": 0xA3B4C5D6, "snr": 1.0},  # never heard
        {"num": 0xA4B5C6D7, "lastHeard": 0},
        {"num": "x", "lastHeard": 1},
        {"num": 0xA5B6C7D8, "lastHeard": 1_764_000_003, "snr": 1e9, "hopsAway": 99},
    ]
    at = [datetime.fromtimestamp(1_764_000_000 + i, UTC) for i in range(4)]
    assert node_db_heard(nodes) == [
        wire.Heard("!a1b2c3d4", at[0], 5.5, 1), wire.Heard("!0a0a0a0a", at[1]),
        wire.Heard("!a2b3c4d5", at[2], 7.0), wire.Heard("!a5b6c7d8", at[3])]


def test_a_packet_says_who_sent_it_how_well_and_how_far() -> None:
    assert packet_heard({"from": 0xA1B2C3D4, "rxSnr": -2.75, "hopStart": 3, "hopLimit": 1},
                        T0) == wire.Heard("!a1b2c3d4", T0, -2.75, 2)
    assert packet_heard({"from": 1, "hopStart": 3}, T0) == wire.Heard("!00000001", T0, None, 3)
    assert packet_heard({"from": 1, "hopLimit": 3}, T0) == wire.Heard("!00000001", T0)
    assert packet_heard({"from": 1, "hopStart": 1, "hopLimit": 3}, T0) == \
        wire.Heard("!00000001", T0)  # a relay that raised the hop limit: hops unknown
    assert packet_heard({"from": 1, "viaMqtt": True}, T0) is None
    assert packet_heard({"from": 0}, T0) is None


class FakeMqtt:
    """What the reporter needs of the MQTT actor: it records each publish."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.up = trio.Event()
        self.up.set()

    async def wait_connected(self) -> None:
        await self.up.wait()

    async def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        self.published.append((topic, payload))


async def test_the_reporter_publishes_at_most_once_a_second_the_newest_per_node(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    mqtt = FakeMqtt()
    reporter = CoverageReporter(mqtt, "kosmo/bridge/b/heard", max_pending=3)  # type: ignore[arg-type]
    reporter.own_node_id = "!0a0a0a0a"
    nursery.start_soon(reporter.run)
    reporter.observe(wire.Heard("!00000001", T0))
    await trio.testing.wait_all_tasks_blocked()
    assert len(mqtt.published) == 1
    start = trio.current_time()
    for i in range(100):  # a busy mesh: 100 packets within half a second, three nodes
        reporter.observe(wire.Heard(f"!0000000{i % 3 + 1}", T0 + timedelta(seconds=i)))
        await trio.sleep(0.005)
    reporter.observe(wire.Heard("!0a0a0a0a", T0 + timedelta(hours=1)))  # our own radio
    while len(mqtt.published) < 2:
        await trio.sleep(0.1)
    assert trio.current_time() - start >= 0.95
    sent = wire.parse_heard("kosmo/bridge/b/heard", mqtt.published[1][1]).nodes
    assert {(h.node_id, h.last_heard) for h in sent} == {
        (f"!0000000{n}", T0 + timedelta(seconds=i)) for i, n in [(97, 2), (98, 3), (99, 1)]}
    # Full (three nodes wait): a fourth node's newer observation pushes out the oldest one.
    reporter.observe_all([wire.Heard(f"!0000001{n}", T0 + timedelta(seconds=n))
                          for n in range(4)])
    assert {h.node_id for h in reporter.pending()} == {"!00000011", "!00000012", "!00000013"}
    assert reporter.dropped == 1
