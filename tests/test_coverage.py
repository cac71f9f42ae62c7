"""Coverage: which nodes each bridge's radio hears, kept in PostgreSQL.

Through a real broker: the gateway stores one row per (bridge, node), the newest observation
winning; an older observation never overwrites a newer one, a bad payload is a dead letter.
The store's rules on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import trio

from kosmo import wire
from kosmo.coverage_store import coverage_of, nodes_heard, store_coverage
from tests.conftest import Gateway, db_value
from tests.mesh import FakeBridgeLink

T0 = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)


def rows(sql: psycopg.Connection[Any], bridge_id: str) -> dict[str, tuple[Any, ...]]:
    return {node: (at, snr, hops) for node, at, snr, hops in coverage_of(sql, bridge_id)}


async def until(check: Any, timeout: float = 15) -> Any:
    with trio.fail_after(timeout):
        while not (found := check()):
            await trio.sleep(0.05)
    return found


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
