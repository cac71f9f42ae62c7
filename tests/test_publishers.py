"""One publisher per node across gateway processes sharing one database and one broker.

- Two processes taking sends for the same nodes: each node's messages are published by one
  process, once each, in creation order on the wire.
- kill -9 of a process holding claimed but unacknowledged messages (its broker went away
  before it could publish them): another process publishes them within 5 s, once.
- A restart (same client id, new process id) publishes its predecessor's unacknowledged
  messages, once.
- Fencing: a process whose row another process deleted stops, with one clear line.
- An outage of the database longer than the lease declares nobody dead.

Real time is used only where the rule is about real time (the lease); every wait polls a
condition under a deadline.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import psycopg
import pytest
import trio

from actors.gateway import run_gateway
from actors.membership import LEASE, Membership
from kosmo.config import Settings
from kosmo.db import Database
from kosmo.process_store import Fenced
from tests.conftest import (
    FAKE_BRIDGE,
    ONLINE,
    SANCTUARY,
    Gateway,
    Subscriber,
    db_value,
    start_gateway,
)
from tests.mesh import FakeBridgeLink
from tests.test_db_outage import own_postgres  # noqa: F401  (a fixture)
from tests.users import add_users

KOSMO = [sys.executable, "-m", "kosmo"]
NODES = ["!a1b2c3d4", "!cafe0001", "!cafe0002"]
TAKEOVER = 5.0  # seconds: the promise, from a kill to the other process's publish


async def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


def first_copies(sub: Subscriber) -> list[str]:
    return list(dict.fromkeys(p["message_id"] for _, p in sub.messages))


def publishes(sub: Subscriber) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, payload in sub.messages:
        counts[payload["message_id"]] = counts.get(payload["message_id"], 0) + 1
    return counts


def creation_order(sql: psycopg.Connection[Any], node_id: str) -> list[str]:
    return [str(r[0]) for r in sql.execute(
        "SELECT id FROM messages WHERE node_id = %s AND direction = 'outbound'"
        " ORDER BY created_at, id", (node_id,)).fetchall()]


def node_of(sql: psycopg.Connection[Any]) -> dict[str, str]:
    return {str(r[0]): r[1] for r in sql.execute("SELECT id, node_id FROM messages")}


def queued(sql: psycopg.Connection[Any], ids: list[str]) -> bool:
    return db_value(sql, "SELECT count(*) FROM messages WHERE id = ANY(%s::uuid[])"
                         " AND status = 'queued'", ids) == len(ids)


def used(sql: psycopg.Connection[Any]) -> int:
    return int(db_value(sql, "SELECT coalesce(sum(used), 0) FROM quota_usage"))


def with_client(settings: Settings, suffix: str) -> Settings:
    return dataclasses.replace(settings, mqtt_client_id=f"{settings.mqtt_client_id}-{suffix}",
                               mqtt_shared_group=f"g-{settings.mqtt_topic_root}")


# --- two processes in this one ------------------------------------------------------------

@pytest.mark.usefixtures("online_bridge")
async def test_each_node_has_one_publisher_and_its_messages_go_once_in_order(
        nursery, settings: Settings, subscriber: Subscriber, sql):
    async with start_gateway(nursery, with_client(settings, "a")) as a, \
            start_gateway(nursery, with_client(settings, "b")) as b:
        sent: list[str] = []

        async def send(gateway: Gateway, user: uuid.UUID, node: str, i: int) -> None:
            response = await gateway.send(user, node, f"m{i}")
            assert response.status_code == 201, response.text
            sent.append(response.json()["message_id"])

        async def conversation(node: str) -> None:
            # One after the other (so creation order is the order sent), through both.
            for i in range(20):
                await send(a if i % 2 else b, SANCTUARY, node, i)

        async with trio.open_nursery() as nodes_at_once:
            for node in NODES:
                nodes_at_once.start_soon(conversation, node)
        await subscriber.wait_for(len(sent), timeout=30)
        await wait_until(lambda: queued(sql, sent))

        counts = publishes(subscriber)
        assert sorted(counts) == sorted(sent)
        assert set(counts.values()) == {1}, "a message was published twice"
        nodes = node_of(sql)
        for node in NODES:  # on the wire in creation order, node by node
            wire_order = [m for m in first_copies(subscriber) if nodes[m] == node]
            assert wire_order == creation_order(sql, node)
        on_a = set(a.running.conversations.node_ids())
        on_b = set(b.running.conversations.node_ids())
        assert on_a | on_b == set(NODES)
        assert not on_a & on_b, "a node was published by both processes"
        publishers = dict(sql.execute("SELECT node_id, process_id FROM node_publishers"))
        mine = {a.running.membership.process_id: on_a, b.running.membership.process_id: on_b}
        assert {n: p for p, ns in mine.items() for n in ns} == publishers
        assert a.running.dispatcher.adopted == b.running.dispatcher.adopted == 0


async def test_a_burst_from_many_users_through_both_goes_out_once_each_without_the_outbox(
        nursery, settings: Settings, online_bridge: FakeBridgeLink, subscriber: Subscriber,
        sql):
    """More of one node's messages at once than its actor's channel holds, from many users,
    through both processes: they wait while the bridge is offline, then its publisher claims
    hundreds at once (the bridge takes every message at once), and the other's older
    messages after its own newer ones; its node actor falls behind and reads the rest from
    the database. Every message goes out once, each user's in order, with no outbox pass to
    make up for one skipped. Each user sends one message at a time, so its order is the
    order sent."""
    settings = dataclasses.replace(settings, outbox_interval=600.0)
    users = add_users(sql, 12)
    online_bridge.state("offline")
    async with start_gateway(nursery, with_client(settings, "a")) as a, \
            start_gateway(nursery, with_client(settings, "b")) as b:
        sent: list[str] = []

        async def conversation(user: uuid.UUID) -> None:
            for i in range(50):
                response = await (a if i % 2 else b).send(user, NODES[0], f"m{i}")
                assert response.status_code == 201, response.text
                sent.append(response.json()["message_id"])

        async with trio.open_nursery() as users_at_once:
            for user in users:
                users_at_once.start_soon(conversation, user)
        assert subscriber.messages == []  # all wait for the bridge
        online_bridge.state("online", ONLINE)
        await subscriber.wait_for(len(sent), timeout=30)
        await wait_until(lambda: queued(sql, sent))
        counts = publishes(subscriber)
        assert sorted(counts) == sorted(sent)
        assert [m for m, n in counts.items() if n > 1] == [], "published twice"
        by_user = {str(r[0]): r[1] for r in sql.execute("SELECT id, user_id FROM messages")}
        wire = first_copies(subscriber)
        for user in users:
            assert [m for m in wire if by_user[m] == user] == \
                [m for m in creation_order(sql, NODES[0]) if by_user[m] == user]


# --- a real process, killed ---------------------------------------------------------------

class Lines:
    """A process's stderr, read in a thread."""

    def __init__(self, stream: Any) -> None:
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.seen.append(line)

    async def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        with trio.fail_after(timeout):
            while True:
                for line in list(self.seen):
                    if found := re.search(pattern, line):
                        return found
                await trio.sleep(0.05)


@dataclasses.dataclass
class Dying:
    """A gateway process of its own whose broker went away: it claims, it cannot publish."""

    proc: subprocess.Popen[str]
    lines: Lines
    client: httpx.AsyncClient
    client_id: str
    sent: list[str] = dataclasses.field(default_factory=list)

    async def send(self, node: str, text: str) -> str:
        response = await self.client.post(
            "/api/v1/messages", headers={"X-User-ID": str(SANCTUARY)},
            json={"target_node_id": node, "text": text})
        assert response.status_code == 201, response.text
        self.sent.append(response.json()["message_id"])
        return str(response.json()["message_id"])


@contextmanager
def gateway_process(settings: Settings, broker_url: str, client_id: str
                    ) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    env.update(KOSMO_DATABASE_URL=settings.database_url, KOSMO_MQTT_URL=broker_url,
               KOSMO_AUTH_MODE="header", KOSMO_HTTP_BIND="127.0.0.1:0",
               KOSMO_MQTT_TOPIC_ROOT=settings.mqtt_topic_root, KOSMO_MQTT_CLIENT_ID=client_id,
               KOSMO_OUTBOX_INTERVAL="1h", KOSMO_DB_POOL_SIZE="4")
    with subprocess.Popen([*KOSMO, "gateway"], env=env, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            yield proc, Lines(proc.stderr)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@asynccontextmanager
async def holding_back(settings: Settings, private_broker: Any, sql: psycopg.Connection[Any],
                       client_id: str, count: int) -> AsyncIterator[Dying]:
    """A gateway process that published one message to each node (so it publishes them),
    then lost its broker and claimed ``count`` more for the bridge, unacknowledged."""
    bridge = FakeBridgeLink(private_broker.url, settings.mqtt_topic_root, FAKE_BRIDGE)
    bridge.state("online", ONLINE)
    bridge.close()
    with gateway_process(settings, private_broker.url, client_id) as (proc, lines):
        url = (await lines.wait_for(r"gateway listening on (\S+)")).group(1).rstrip(",")
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            dying = Dying(proc, lines, client, client_id)
            first = [await dying.send(node, "first") for node in NODES[:2]]
            await wait_until(lambda: queued(sql, first))  # it published them: its nodes
            private_broker.stop()

            async def broker_lost() -> bool:
                return (await client.get("/readyz")).status_code == 503

            with trio.fail_after(20):
                while not await broker_lost():
                    await trio.sleep(0.05)
            held = [await dying.send(NODES[i % 2], f"held {i}") for i in range(count)]
            await wait_until(lambda: db_value(
                sql, "SELECT count(*) FROM messages WHERE id = ANY(%s::uuid[])"
                     " AND handed_at IS NOT NULL AND status = 'pending'", held) == count)
            yield dying


def kill(dying: Dying) -> None:
    dying.proc.send_signal(signal.SIGKILL)
    dying.proc.wait(timeout=10)


@pytest.mark.usefixtures("online_bridge")
async def test_the_nodes_of_a_killed_process_are_published_by_another_within_5_s(
        nursery, settings: Settings, subscriber: Subscriber, private_broker, sql):
    async with holding_back(settings, private_broker, sql, "gw-dying", 6) as dying, \
            start_gateway(nursery, with_client(settings, "live")) as live:
        held = dying.sent[2:]
        await wait_until(live.running.membership.steady)  # it may judge deaths now
        assert subscriber.messages == []  # nothing of the other's reached this broker
        kill(dying)
        killed = trio.current_time()
        await subscriber.wait_for(len(held), timeout=TAKEOVER + 10)
        took = trio.current_time() - killed
        assert took < TAKEOVER, f"taken over in {took:.1f} s"
        await wait_until(lambda: queued(sql, held))
    counts = publishes(subscriber)
    assert counts == dict.fromkeys(held, 1)
    nodes = node_of(sql)
    for node in NODES[:2]:
        assert [m for m in first_copies(subscriber) if nodes[m] == node] == \
            [m for m in creation_order(sql, node) if m in held]
    assert used(sql) == len(dying.sent)  # debited once each, nothing refunded or charged again
    assert live.running.dispatcher.adopted == len(held)
    await wait_until(lambda: db_value(sql, "SELECT count(*) FROM gateway_processes") == 0)


async def test_a_restarted_process_publishes_its_predecessors_messages_once(
        nursery, settings: Settings, online_bridge, subscriber: Subscriber, private_broker,
        sql, caplog):
    client_id = f"gw-{settings.mqtt_topic_root}-r"
    async with holding_back(settings, private_broker, sql, client_id, 5) as dying:
        kill(dying)
    held = dying.sent[2:]
    restarted = dataclasses.replace(settings, mqtt_client_id=client_id)
    async with start_gateway(nursery, restarted) as gateway:
        await subscriber.wait_for(len(held), timeout=LEASE + 15)
        await wait_until(lambda: queued(sql, held))
        after = await gateway.send(SANCTUARY, NODES[0], "after")  # a newer one, after them
        await subscriber.wait_for(len(held) + 1)
    assert publishes(subscriber) == dict.fromkeys([*held, after.json()["message_id"]], 1)
    assert first_copies(subscriber)[-1] == after.json()["message_id"]
    assert used(sql) == len(dying.sent) + 1
    adopted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("adopted")]
    assert len(adopted) == 1
    assert f"{len(held)} unacknowledged" in adopted[0]
    # Its predecessor's row went when it registered (same client id), not after the lease.
    assert any("an earlier life of client id" in r.getMessage() for r in caplog.records)


# --- fencing, the hook, false deaths -------------------------------------------------------

@pytest.mark.allow_error_logs
@pytest.mark.usefixtures("online_bridge")
async def test_a_process_declared_dead_stops_with_one_clear_line(settings: Settings, sql,
                                                                 caplog):
    shutdown = trio.Event()
    with trio.fail_after(20), pytest.RaisesGroup(Fenced, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(run_gateway, settings, shutdown)
            sql.execute("DELETE FROM gateway_processes WHERE id = %s",
                        (running.membership.process_id,))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"gateway process {running.membership.process_id} was declared dead "
                      "by another process: it stops publishing and exits"]


async def test_a_dead_process_is_buried_and_its_session_left_to_drain(database_url: str, sql):
    sql.execute("INSERT INTO gateway_processes VALUES (%s, 'gw-gone', 'h', 1, now(),"
                " now() - interval '1 hour')", (dead := uuid.uuid4(),))
    db = Database(database_url, size=2)
    await db.open()
    try:
        async with trio.open_nursery() as nursery:
            member = Membership(db, client_id="gw-here", heartbeat=0.1, lease=0.5)
            await nursery.start(member.run)
            await wait_until(lambda: member.buried == [dead])
            assert db_value(sql, "SELECT count(*) FROM gateway_processes WHERE id = %s",
                            dead) == 0
            assert db_value(sql, "SELECT count(*) FROM gateway_processes WHERE id = %s",
                            member.process_id) == 1
            assert db_value(sql, "SELECT array_agg(client_id) FROM stranded_sessions") == [
                "gw-gone"]
            nursery.cancel_scope.cancel()
        await member.leave()
        assert db_value(sql, "SELECT count(*) FROM gateway_processes") == 0
        assert db_value(sql, "SELECT array_agg(client_id ORDER BY client_id)"
                             " FROM stranded_sessions") == ["gw-gone", "gw-here"]
    finally:
        await db.close()


@pytest.mark.usefixtures("online_bridge")
async def test_an_outage_longer_than_the_lease_declares_nobody_dead(
        nursery, settings: Settings, own_postgres):  # noqa: F811
    from kosmo.embedded import start_postgres

    settings = settings.replace(database_url=own_postgres.url, start_timeout=10.0)
    async with start_gateway(nursery, with_client(settings, "a")) as a, \
            start_gateway(nursery, with_client(settings, "b")) as b:
        members = [a.running.membership, b.running.membership]
        await wait_until(lambda: all(m.steady() for m in members))
        await trio.to_thread.run_sync(own_postgres.stop)
        await trio.sleep(LEASE + 1)  # the outage itself: every row is stale when it ends
        await trio.to_thread.run_sync(start_postgres, own_postgres.data_dir)
        await wait_until(lambda: all(m.steady() for m in members), timeout=30)
        sweeps = [m.sweeps for m in members]
        await wait_until(lambda: all(m.sweeps >= s + 3 for m, s in zip(members, sweeps,
                                                                          strict=True)))
        assert [m.buried for m in members] == [[], []]
        with psycopg.connect(own_postgres.url, autocommit=True) as conn:
            assert db_value(conn, "SELECT count(*) FROM gateway_processes") == 2



async def test_a_fenced_gateway_process_exits_1_with_one_line(settings: Settings, mqtt_url: str,
                                                            sql):
    client_id = f"gw-{settings.mqtt_topic_root}-f"
    with gateway_process(settings, mqtt_url, client_id) as (proc, lines):
        await lines.wait_for(r"gateway listening on")
        sql.execute("DELETE FROM gateway_processes WHERE client_id = %s", (client_id,))
        with trio.fail_after(15):
            while proc.poll() is None:
                await trio.sleep(0.05)
        assert proc.returncode == 1
        await lines.wait_for(r"^kosmo: error: ")
    assert "Traceback" not in "".join(lines.seen)
    assert lines.seen[-1].startswith("kosmo: error: gateway process ")
    assert lines.seen[-1].rstrip().endswith("was declared dead: stopped publishing; start it "
                                            "again")
    assert sum("ERROR" in line for line in lines.seen) == 1  # the membership's one line


@pytest.mark.usefixtures("online_bridge")
async def test_a_process_whose_pool_is_busy_for_longer_than_the_lease_stays_alive(
        nursery, settings: Settings):
    async with start_gateway(nursery, with_client(settings, "busy")) as busy, \
            start_gateway(nursery, with_client(settings, "judge")) as judge:
        await wait_until(judge.running.membership.steady)
        beats = busy.running.membership.beats

        def stall(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_sleep(%s)", (LEASE + 1,))

        async with trio.open_nursery() as hogs:  # every connection of its pool, for 4 s
            for _ in range(settings.db_pool_size):
                hogs.start_soon(busy.running.db.run, stall)
        assert busy.running.membership.beats >= beats + int(LEASE)  # it beat meanwhile
        assert judge.running.membership.buried == []
        assert busy.running.membership.steady()
