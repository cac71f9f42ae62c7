"""Conversation actors: per-node order, retry while the broker is away, idle reaping."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta

import trio

from actors.conversations import Conversations
from actors.mqtt import MqttUnavailable
from kosmo.ledger_store import NewMessage, StatusReport

T0 = datetime(2026, 11, 1, tzinfo=UTC)
FAR = datetime(2100, 1, 1, tzinfo=UTC)


_made = itertools.count()


def message(node: str, text: str, expires: datetime = FAR) -> NewMessage:
    created = T0 + timedelta(microseconds=next(_made))
    return NewMessage(uuid.uuid4(), uuid.uuid4(), node, text, created, expires)


class Acked:
    async def wait(self) -> None:
        await trio.sleep(0.001)


class Publisher:
    """The MQTT actor's start_publish() as seen by the router, so its timing runs on the
    autojump clock; the real broker path is covered by test_send.py and test_recovery.py."""

    def __init__(self) -> None:
        self.up = trio.Event()
        self.up.set()
        self.published: list[tuple[str, bytes]] = []

    def start_publish(self, topic: str, payload: bytes) -> Acked:
        if not self.up.is_set():
            raise MqttUnavailable("down")
        self.published.append((topic, payload))
        return Acked()

    async def wait_up(self) -> None:
        await self.up.wait()


class Store:
    """The ledger's side as the router sees it: what was stored and what became queued."""

    def __init__(self) -> None:
        self.stored: list[NewMessage] = []
        self.reports: list[StatusReport] = []

    async def report(self, item: StatusReport) -> None:
        self.reports.append(item)

    async def load_pending(self, node: str, after: datetime, limit: int) -> list[NewMessage]:
        done = {r.message_id for r in self.reports}
        return [m for m in self.stored if m.node_id == node and m.created_at > after
                and m.message_id not in done][:limit]


async def start(nursery: trio.Nursery, broker: Publisher, reports: list[StatusReport],
                idle: float = 300.0, store: Store | None = None) -> Conversations:
    store = store or Store()
    store.reports = reports
    conversations = Conversations(start_publish=broker.start_publish, broker_ready=broker.wait_up,
                                  report=store.report, load_pending=store.load_pending,
                                  topic_root="k", idle=idle)
    await nursery.start(conversations.run)
    return conversations


def published_ids(broker: Publisher, node: str) -> list[str]:
    return [json.loads(p)["message_id"] for t, p in broker.published
            if t == f"k/mesh/outbound/{node}"]


async def test_each_node_gets_its_messages_in_order(nursery, autojump_clock):
    broker, reports = Publisher(), []
    conversations = await start(nursery, broker, reports)
    sent = [message(f"!0000000{i % 3}", f"m{i}") for i in range(30)]
    for m in sent:
        await conversations.dispatch([m])
    await trio.sleep(5)
    for node in ["!00000000", "!00000001", "!00000002"]:
        assert published_ids(broker, node) == [str(m.message_id) for m in sent
                                               if m.node_id == node]
    assert sorted(r.message_id for r in reports) == sorted(m.message_id for m in sent)
    assert {r.report.status for r in reports} == {"queued"}


async def test_broker_outage_holds_order_and_loses_nothing(nursery, autojump_clock):
    broker, reports = Publisher(), []
    broker.up = trio.Event()  # down from the start
    conversations = await start(nursery, broker, reports)
    sent = [message("!a1b2c3d4", f"m{i}") for i in range(5)]
    for m in sent:
        await conversations.dispatch([m])
    await trio.sleep(30)
    assert broker.published == []
    broker.up.set()
    await trio.sleep(30)
    assert published_ids(broker, "!a1b2c3d4") == [str(m.message_id) for m in sent]


async def test_a_message_handed_out_twice_while_waiting_is_queued_once(nursery, autojump_clock):
    broker, reports = Publisher(), []
    broker.up = trio.Event()
    conversations = await start(nursery, broker, reports)
    m = message("!a1b2c3d4", "once")
    await conversations.dispatch([m])
    await conversations.dispatch([m])  # the outbox found it still pending
    await trio.sleep(1)
    broker.up.set()
    await trio.sleep(10)
    assert len(broker.published) == 1


async def test_idle_node_actors_are_reaped_and_respawned(nursery, autojump_clock):
    broker, reports = Publisher(), []
    conversations = await start(nursery, broker, reports, idle=60)
    await conversations.dispatch([message("!00000001", "a")])
    await conversations.dispatch([message("!00000002", "b")])
    await trio.sleep(1)
    assert conversations.active_nodes() == 2
    await trio.sleep(30)
    await conversations.dispatch([message("!00000002", "c")])  # keeps node 2 busy
    await trio.sleep(45)
    assert conversations.active_nodes() == 1  # node 1 idle for 75 s, node 2 for 45 s
    await trio.sleep(30)
    assert conversations.active_nodes() == 0
    await conversations.dispatch([message("!00000001", "again")])
    await trio.sleep(1)
    assert conversations.active_nodes() == 1
    assert len(broker.published) == 4


async def test_a_message_past_its_deadline_is_expired_not_published(nursery, autojump_clock):
    broker, reports = Publisher(), []
    conversations = await start(nursery, broker, reports)
    late = message("!a1b2c3d4", "late", expires=T0)
    await conversations.dispatch([late])
    await trio.sleep(1)
    assert broker.published == []
    assert [(r.message_id, r.report.status, r.report.reason) for r in reports] == [
        (late.message_id, "expired", "ttl")]


async def test_a_burst_beyond_the_node_queue_waits_in_the_database_in_order(
        nursery, autojump_clock):
    broker, reports, store = Publisher(), [], Store()
    broker.up = trio.Event()  # the broker is away while the burst arrives
    conversations = await start(nursery, broker, reports, store=store)
    burst = [message("!a1b2c3d4", f"m{i}") for i in range(500)]
    with trio.fail_after(5):  # dispatching never waits for the node
        for m in burst:
            store.stored.append(m)
            await conversations.dispatch([m])
    broker.up.set()
    await trio.sleep(60)
    assert published_ids(broker, "!a1b2c3d4") == [str(m.message_id) for m in burst]
