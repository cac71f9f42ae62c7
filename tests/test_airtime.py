"""Airtime end to end: the gateway, the broker, bridges with the real meshtastic library and
simulated radios that overlap. Each message goes to the one bridge whose radio hears its node,
goes on air once however many radios hear the node, moves to another bridge when its bridge goes
offline before it was given the message (and only then), and waits its fair turn."""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from bridge.daemon import Bridge
from bridge.sim import make_nodes
from kosmo import airtime
from kosmo.config import Settings
from tests.conftest import GUARDIAN, SANCTUARY, WANDERER, Gateway, db_value, start_gateway
from tests.mesh import FakeBridgeLink
from tests.test_bridge import BridgeRunner, SimRunner, make_settings

NORTH, SOUTH = 0x0B0B0B0B, 0x0C0C0C0C
ONLY_NORTH, SHARED, ONLY_SOUTH = "!a1b2c3d4", "!cafe0001", "!cafe0002"


def num(node_id: str) -> int:
    return int(node_id[1:], 16)


async def until(check: Any, timeout: float = 20) -> Any:
    with trio.fail_after(timeout):
        while not (found := check()):
            await trio.sleep(0.05)
    return found


class Site:
    """A simulated radio with a bridge attached, under its own id."""

    def __init__(self, name: str, me: int, hears: list[str]) -> None:
        self.name = name
        self.sim = SimRunner(nodes=make_nodes(0, hears=[num(n) for n in hears]),
                             my_node_num=me)
        self.runner: BridgeRunner | None = None
        self.bridge_id = ""
        self.old_radios: list[Any] = []  # replaced by plug_in_new_radio

    async def start(self, nursery: trio.Nursery, tmp_path: Path, mqtt_url: str,
                    root: str) -> Bridge:
        if not self.sim.port:
            await self.sim.start(nursery)
        self.bridge_id = f"{self.name}-{root}"
        self.runner = BridgeRunner(make_settings(
            tmp_path, mqtt_url, root, self.sim, bridge_id=self.bridge_id,
            state_dir=tmp_path / self.name))
        self.bridge = await self.runner.start(nursery)
        return self.bridge

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.stop()

    async def replace_radio(self, nursery: trio.Nursery) -> None:
        self.old_radios.append(await self.sim.plug_in_new_radio(nursery))

    def on_air(self, text: str) -> int:
        return self.sim.texts_on_air(text) + sum(
            r.stats.transmissions_by_text[text] for r in self.old_radios)


async def two_sites(nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, root: str,
                    sql: psycopg.Connection[Any]) -> tuple[Site, Site]:
    north = Site("north", NORTH, [ONLY_NORTH, SHARED])
    south = Site("south", SOUTH, [SHARED, ONLY_SOUTH])
    for site in (north, south):
        await site.start(nursery, tmp_path, mqtt_url, root)
    # Both radios' node databases reached the gateway's coverage table.
    await until(lambda: db_value(sql, "SELECT count(*) FROM coverage") == 4)
    return north, south


def row(sql: psycopg.Connection[Any], message_id: str) -> tuple[Any, ...]:
    found = sql.execute("SELECT status, bridge_id, handed_at IS NOT NULL FROM messages"
                        " WHERE id = %s", (message_id,)).fetchone()
    assert found is not None
    return tuple(found)


async def send(gateway: Gateway, user: Any, node: str, text: str) -> str:
    response = await gateway.send(user, node, text)
    assert response.status_code == 201, response.text
    return str(response.json()["message_id"])


async def test_each_message_goes_to_the_one_bridge_that_hears_its_node_and_on_air_once(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str,
        gateway: Gateway, sql: psycopg.Connection[Any]) -> None:
    north, south = await two_sites(nursery, tmp_path, mqtt_url, topic_root, sql)
    sent = {}
    for i in range(3):
        for node in (ONLY_NORTH, SHARED, ONLY_SOUTH):
            text = f"to {node} #{i}"
            sent[text] = (node, await send(gateway, SANCTUARY, node, text))
    for _, message_id in sent.values():
        await until(lambda m=message_id: row(sql, m)[0] == "delivered", timeout=30)

    shared_bridges = set()
    for text, (node, message_id) in sent.items():
        _, bridge_id, handed = row(sql, message_id)
        assert handed
        assert north.on_air(text) + south.on_air(text) == 1, text  # once, by one radio
        if node == ONLY_NORTH:
            assert bridge_id == north.bridge_id
        elif node == ONLY_SOUTH:
            assert bridge_id == south.bridge_id
        else:
            shared_bridges.add(bridge_id)
            on = north if bridge_id == north.bridge_id else south
            assert on.on_air(text) == 1
    # One user's messages to one node stay with one bridge (they go on air in order).
    assert len(shared_bridges) == 1
    body = (await gateway.get(f"/api/v1/messages/{sent[f'to {SHARED} #0'][1]}",
                              SANCTUARY)).json()
    assert body["bridge_id"] in (north.bridge_id, south.bridge_id)
    for site in (north, south):
        await site.stop()


@pytest.mark.allow_error_logs  # the meshtastic library logs the unplugged radio as an ERROR
async def test_a_bridge_going_offline_hands_on_what_it_was_never_given_and_nothing_twice(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str,
        gateway: Gateway, sql: psycopg.Connection[Any]) -> None:
    north, south = await two_sites(nursery, tmp_path, mqtt_url, topic_root, sql)
    sql.execute("INSERT INTO node_whitelist (user_id, node_id) VALUES (%s, %s)",
                (GUARDIAN, SHARED))
    # Where does the shared node go? Find out with a first message, then take that radio
    # off the air (unplugged: its bridge stays online and holds what it is given).
    first = await send(gateway, SANCTUARY, SHARED, "probe")
    await until(lambda: row(sql, first)[0] == "delivered", timeout=30)
    chosen = north if row(sql, first)[1] == north.bridge_id else south
    other = south if chosen is north else north
    await chosen.sim.unplug()
    await until(lambda: chosen.bridge.radio.link is None)  # it knows: it sends nothing now

    held = [await send(gateway, SANCTUARY, SHARED, f"held {i}") for i in range(2)]
    await until(lambda: all(row(sql, m)[2] for m in held))  # given to the chosen bridge
    waiting = [await send(gateway, user, SHARED, f"waiting {i}")
               for i, user in enumerate([WANDERER, GUARDIAN])]
    await trio.sleep(0.5)
    # The chosen bridge holds its credit (2): the others wait in the gateway.
    assert [row(sql, m)[2] for m in waiting] == [False, False]
    assert {row(sql, m)[1] for m in held} == {chosen.bridge_id}

    await chosen.stop()  # offline: what it was never given moves to the other bridge
    for message_id in waiting:
        await until(lambda m=message_id: row(sql, m)[0] == "delivered", timeout=30)
        assert row(sql, message_id)[1] == other.bridge_id
    # ... but what it was given stays with it, and a newer message of the same user to the
    # same node waits behind it rather than overtake it on another radio.
    behind = await send(gateway, SANCTUARY, SHARED, "behind the held ones")
    await trio.sleep(0.5)
    assert row(sql, behind)[2] is False
    assert [row(sql, m)[1] for m in held] == [chosen.bridge_id] * 2

    await chosen.replace_radio(nursery)
    await chosen.start(nursery, tmp_path, mqtt_url, topic_root)  # back, same id and store
    for message_id in [*held, behind]:
        await until(lambda m=message_id: row(sql, m)[0] == "delivered", timeout=30)
    assert row(sql, behind)[1] == chosen.bridge_id
    for text in ["probe", "held 0", "held 1", "waiting 0", "waiting 1",
                 "behind the held ones"]:
        assert north.on_air(text) + south.on_air(text) == 1, text
    assert other.on_air("held 0") == other.on_air("held 1") == 0
    for site in (north, south):
        await site.stop()


def on_air_order(sql: psycopg.Connection[Any], ids: list[str]) -> list[str]:
    """The messages in the order they went on air (their ``transmitted`` history lines)."""
    return [str(r[0]) for r in sql.execute(
        "SELECT message_id FROM message_status_history WHERE message_id = ANY(%s::uuid[])"
        " AND status = 'transmitted' ORDER BY at, id", (ids,)).fetchall()]


async def test_a_light_user_waits_one_round_behind_a_heavy_backlog_with_estimates(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str,
        gateway: Gateway, sql: psycopg.Connection[Any]) -> None:
    site = Site("solo", NORTH, [ONLY_NORTH])
    await site.start(nursery, tmp_path, mqtt_url, topic_root)
    await until(lambda: db_value(sql, "SELECT count(*) FROM coverage") == 1)
    heavy = [await send(gateway, WANDERER, ONLY_NORTH, f"heavy {i}") for i in range(10)]
    light = await send(gateway, SANCTUARY, ONLY_NORTH, "light")

    # While they wait: each has its place in the fair order and a time, in that order.
    def waiting() -> list[tuple[Any, ...]]:
        return [tuple(r) for r in sql.execute(
            "SELECT id::text, queue_position, estimated_transmit_at FROM messages"
            " WHERE status = 'pending' AND handed_at IS NULL AND queue_position IS NOT NULL"
            " ORDER BY queue_position").fetchall()]

    # Places are rewritten as the queue moves: wait for a consistent reading of at least five.
    rows = await until(lambda: len(found := waiting()) >= 5 and [
        r[1] for r in found] == list(range(1, len(found) + 1)) and found)
    times = [r[2] for r in rows]
    assert times == sorted(times)
    assert all(t is not None for t in times)
    ids = [r[0] for r in rows]
    # A round gives each user a quantum of airtime (the longest text's) times its weight: the
    # heavy user's short texts fit several to a round.
    lora = airtime.preset_params("LONG_FAST")
    per_round = int(airtime.text_airtime(lora, airtime.MAX_TEXT_BYTES)
                    // airtime.text_airtime(lora, len("heavy 0")))
    if light in ids:  # still waiting: at most one round of the heavy user's ahead of it
        assert ids.index(light) <= per_round

    for message_id in [*heavy, light]:
        await until(lambda m=message_id: row(sql, m)[0] == "delivered", timeout=60)
    order = on_air_order(sql, [*heavy, light])
    assert [m for m in order if m != light] == heavy  # one user's texts in the order sent
    # The light text went out within one round of arriving: behind what the bridge already
    # held (its credit, 2) and at most one round of heavy texts, not behind all ten.
    assert order.index(light) <= 2 + per_round < len(heavy)
    after = sql.execute("SELECT queue_position, estimated_transmit_at FROM messages"
                        " WHERE id = %s", (light,)).fetchone()
    assert after is not None
    assert after[0] is None  # handed: no place in a queue any more
    await site.stop()


async def test_a_send_the_mesh_cannot_carry_in_time_is_refused_before_any_debit(
        nursery: trio.Nursery, settings: Settings, mqtt_url: str, topic_root: str,
        sql: psycopg.Connection[Any]) -> None:
    # One bridge that takes one text at a time and sends one every 2 s (it never reports, so
    # what it holds stays held); messages live 7 s.
    link = FakeBridgeLink(mqtt_url, topic_root, "slow")
    link.state("online", {"credit": 1, "min_gap_s": 2.0})
    try:
        async with start_gateway(nursery, settings.replace(message_ttl=7.0)) as gateway:
            await until(lambda: gateway.running.dispatcher.online() == ["slow"])
            answers = []
            for i in range(6):
                answers.append(await gateway.send(SANCTUARY, ONLY_NORTH, f"m{i}"))
                if answers[-1].status_code == 503:
                    break
            accepted = [a.json() for a in answers if a.status_code == 201]
            refused = answers[-1]
            assert refused.status_code == 503, [a.status_code for a in answers]
            assert refused.headers["Content-Type"] == "application/problem+json"
            assert refused.json()["type"] == "/problems/mesh-congested"
            assert int(refused.headers["Retry-After"]) >= 1
            assert db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s",
                            SANCTUARY) == len(accepted)  # nothing charged for the refusal
            assert db_value(sql, "SELECT count(*) FROM messages") == len(accepted)
            # The first is handed at once (the bridge's one credit); the others wait, each
            # one place and about 2 s further back, the next one first.
            waiting = accepted[1:]
            assert [a["queue_position"] for a in waiting] == list(range(1, len(waiting) + 1))
            times = [datetime.fromisoformat(a["estimated_transmit_at"]) for a in accepted]
            assert all(1.5 < (b - a).total_seconds() < 2.5 for a, b in itertools.pairwise(times))

            # Cancel the last waiting one: refunded, and the dispatcher forgets it.
            last = waiting[-1]["message_id"]
            canceled = await gateway.client.delete(f"/api/v1/messages/{last}",
                                                   headers={"X-User-ID": str(SANCTUARY)})
            assert canceled.status_code == 200, canceled.text
            assert canceled.json()["status"] == "canceled"
            assert db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s",
                            SANCTUARY) == len(accepted) - 1
            await until(lambda: gateway.running.dispatcher.waiting().get("slow", 0)
                        == len(waiting) - 1)
            held = accepted[0]["message_id"]  # given to the bridge at once: too late
            await until(lambda: row(sql, held)[2])
            again = await gateway.client.delete(f"/api/v1/messages/{held}",
                                                headers={"X-User-ID": str(SANCTUARY)})
            assert again.status_code == 409
            assert again.json()["type"] == "/problems/already-on-air"
    finally:
        link.close()
