"""Conversation actors: per-node order, retry while the broker is away, idle reaping."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import trio

from actors.conversations import Conversations
from actors.mqtt import MqttUnavailable
from kosmo.messages import NewMessage, StatusReport

T0 = datetime(2026, 11, 1, tzinfo=UTC)
FAR = datetime(2100, 1, 1, tzinfo=UTC)


_made = itertools.count()
BRIDGE = "!b0000001"  # every message here was handed to this bridge


def message(node: str, text: str, expires: datetime = FAR) -> NewMessage:
    created = T0 + timedelta(microseconds=next(_made))
    return NewMessage(uuid.uuid4(), uuid.uuid4(), node, text, created, expires, BRIDGE)


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

    async def load_pending(self, node: str, after: tuple[datetime, uuid.UUID] | None,
                           limit: int) -> list[NewMessage]:
        """As ``kosmo.ledger_store.pending_for_node``: the node's messages not yet queued,
        in creation order, after the key ``after`` (from the first when None)."""
        done = {r.message_id for r in self.reports}
        return sorted((m for m in self.stored if m.node_id == node
                       and (after is None or (m.created_at, m.message_id) > after)
                       and m.message_id not in done),
                      key=lambda m: (m.created_at, m.message_id))[:limit]


class Bounded(Conversations):
    """Records the most node actors ever held: ``_spawn`` is the only place the table grows."""

    peak = 0

    def _spawn(self, nursery, node_id):  # type: ignore[no-untyped-def]
        node = super()._spawn(nursery, node_id)
        self.peak = max(self.peak, self.active_nodes())
        return node


async def start(nursery: trio.Nursery, broker: Publisher, reports: list[StatusReport],
                idle: float = 300.0, store: Store | None = None,
                max_nodes: int = 10_000) -> Bounded:
    store = store or Store()
    store.reports = reports
    conversations = Bounded(start_publish=broker.start_publish, broker_ready=broker.wait_up,
                            report=store.report, load_pending=store.load_pending,
                            topic_root="k", idle=idle, max_nodes=max_nodes)
    await nursery.start(conversations.run)
    return conversations


def published_ids(broker: Publisher, node: str) -> list[str]:
    return [json.loads(p)["message_id"] for t, p in broker.published
            if t == f"k/bridge/{BRIDGE}/outbound/{node}"]


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


async def test_a_node_behind_reads_every_message_handed_out_of_creation_order(
        nursery, autojump_clock):
    """Handed over in another order than they were created (another gateway process accepted
    the older ones and this one, their node's publisher, claimed them later; or the fair
    queue took another user's turn first): a node actor that fell behind still finds every
    one in the database, with no outbox pass, each only once and each sender's in order."""
    broker, reports, store = Publisher(), [], Store()
    broker.up = trio.Event()  # the broker is away while they arrive: the node falls behind
    conversations = await start(nursery, broker, reports, store=store)
    older = [message("!a1b2c3d4", f"b{i}") for i in range(100)]
    newer = [message("!a1b2c3d4", f"a{i}") for i in range(100)]
    with trio.fail_after(5):
        for m in newer + older:  # the newer first
            await stored(conversations, store, m)
    broker.up.set()
    await trio.sleep(20)  # less than an outbox interval; no outbox runs here anyway
    published = published_ids(broker, "!a1b2c3d4")
    assert sorted(published) == sorted(ids(older + newer))  # every one, once
    for group in (older, newer):
        assert [i for i in published if i in set(ids(group))] == ids(group)


async def test_what_a_catch_up_handed_out_is_not_published_again_from_the_channel(
        nursery, autojump_clock):
    """The router queues a node's messages in its channel again as soon as the catch-up
    starts, and that read finds them too (they were stored before it): a long catch-up hands
    out far more than the recent ids remembered, yet none goes out twice."""
    broker, reports, store = Publisher(), [], Store()
    conversations = await start(nursery, broker, reports, store=store)
    first = [message("!a1b2c3d4", f"a{i}") for i in range(400)]
    await stored(conversations, store, *first)  # 64 in the channel, the rest in the database
    while len(broker.published) < 80:  # its actor is reading the database now
        await trio.sleep(0.001)
    second = [message("!a1b2c3d4", f"b{i}") for i in range(64)]
    await stored(conversations, store, *second)  # into the channel again, and read too
    third = [message("!a1b2c3d4", f"c{i}") for i in range(400)]
    await stored(conversations, store, *third)  # the channel is full: the database only
    await trio.sleep(60)
    published = published_ids(broker, "!a1b2c3d4")
    assert len(published) - len(set(published)) == 0  # none twice
    assert published == ids(first + second + third)  # in order


# The bound on node actors (max_nodes): eviction of quiescent ones, refusal into the database.


async def outbox(conversations: Conversations, store: Store, interval: float = 30.0) -> None:
    """The outbox as the router sees it: every ``interval``, every message not yet queued is
    handed out again (a harsher rule than the real one, which skips the recent ones)."""
    while True:
        await trio.sleep(interval)
        done = {r.message_id for r in store.reports}
        if pending := [m for m in store.stored if m.message_id not in done]:
            await conversations.dispatch(pending)


async def stored(conversations: Conversations, store: Store, *messages: NewMessage) -> None:
    """What the ledger does: store, then hand over."""
    store.stored.extend(messages)
    await conversations.dispatch(list(messages))


def ids(messages: list[NewMessage]) -> list[str]:
    return [str(m.message_id) for m in messages]


async def test_many_nodes_never_exceed_the_bound_and_all_go_out_in_order(
        nursery, autojump_clock):
    broker, reports, store = Publisher(), [], Store()
    conversations = await start(nursery, broker, reports, store=store, max_nodes=10)
    nodes = [f"!{i:08x}" for i in range(200)]
    sent = [message(node, f"m{k}") for k in range(3) for node in nodes]
    for start_at in range(0, len(sent), 25):  # batches, as the ledger hands them over
        await stored(conversations, store, *sent[start_at:start_at + 25])
    assert conversations.waiting_nodes() > 100  # a burst: most nodes wait for a place
    # Without any outbox pass: each node actor that becomes quiescent hands its place on.
    await trio.sleep(5)
    assert conversations.peak == 10
    assert conversations.evicted >= 190
    for node in nodes:
        assert published_ids(broker, node) == ids([m for m in sent if m.node_id == node])
    assert conversations.waiting_nodes() == 0


async def test_at_the_bound_with_every_actor_busy_messages_wait_in_the_database(
        nursery, autojump_clock):
    broker, reports, store = Publisher(), [], Store()
    broker.up = trio.Event()  # down: every node actor is busy retrying its first message
    conversations = await start(nursery, broker, reports, store=store, max_nodes=4)
    nursery.start_soon(outbox, conversations, store)
    nodes = [f"!{i:08x}" for i in range(10)]
    sent = [message(node, f"m{k}") for k in range(3) for node in nodes]
    with trio.fail_after(1):  # the router never waits for a node, even at the bound
        for m in sent:
            await stored(conversations, store, m)
    await trio.sleep(0.1)
    assert conversations.active_nodes() == 4
    assert set(conversations.node_ids()) == set(nodes[:4])  # busy ones are never evicted
    assert conversations.evicted == 0
    assert conversations.refused == 18
    assert conversations.waiting_nodes() == 6

    await trio.sleep(100)  # outbox passes while the broker is still away: refused again
    assert conversations.peak == 4
    assert broker.published == []

    broker.up.set()
    await trio.sleep(120)
    for node in nodes:
        assert published_ids(broker, node) == ids([m for m in sent if m.node_id == node])
    assert conversations.peak == 4
    assert conversations.waiting_nodes() == 0


async def test_a_newer_message_never_overtakes_one_left_in_the_database(nursery, autojump_clock):
    broker, reports, store = Publisher(), [], Store()
    broker.up = trio.Event()
    conversations = await start(nursery, broker, reports, store=store, max_nodes=1)
    a1, b1, b2 = message("!0000000a", "a1"), message("!0000000b", "b1"), message("!0000000b", "b2")
    await stored(conversations, store, a1)
    await stored(conversations, store, b1)  # no room: waits in the database
    await stored(conversations, store, b2)  # still no room
    await trio.sleep(1)
    assert conversations.refused == 2
    broker.up.set()
    await trio.sleep(1)  # a1 goes out; a hands its place to b, whose actor reads b1 first
    assert conversations.node_ids() == ["!0000000b"]
    assert published_ids(broker, "!0000000b") == ids([b1, b2])  # no outbox pass was needed
    b3 = message("!0000000b", "b3")
    await stored(conversations, store, b3)
    await trio.sleep(1)
    assert published_ids(broker, "!0000000b") == ids([b1, b2, b3])


async def test_eviction_takes_the_node_quiescent_the_longest(nursery, autojump_clock):
    broker, reports = Publisher(), []
    conversations = await start(nursery, broker, reports, max_nodes=3)
    for node in ["!00000001", "!00000002", "!00000003", "!00000001"]:
        await conversations.dispatch([message(node, "x")])
        await trio.sleep(1)
    await conversations.dispatch([message("!00000004", "x")])
    await trio.sleep(1)
    assert sorted(conversations.node_ids()) == ["!00000001", "!00000003", "!00000004"]
    assert conversations.evicted == 1
    await trio.sleep(400)  # idle reaping still applies below the bound
    assert conversations.active_nodes() == 0


class FailingStore(Store):
    def __init__(self, fail: uuid.UUID) -> None:
        super().__init__()
        self.fail = fail

    async def report(self, item: StatusReport) -> None:
        if item.message_id == self.fail:
            self.fail = uuid.UUID(int=0)
            raise RuntimeError("boom")
        await super().report(item)


@pytest.mark.allow_error_logs
async def test_after_a_node_actor_fails_its_next_one_starts_from_the_database(
        nursery, autojump_clock):
    f1, f2, f3 = (message("!0000000f", f"f{i}") for i in (1, 2, 3))
    broker, reports, store = Publisher(), [], FailingStore(f1.message_id)
    conversations = await start(nursery, broker, reports, store=store)
    await stored(conversations, store, f1, f2)  # f1's queued report fails: the actor dies
    await trio.sleep(1)
    assert conversations.active_nodes() == 0
    await stored(conversations, store, f3)
    await trio.sleep(1)
    # f1 and f2 may go out twice (consumers dedupe), but f3 never before them.
    assert published_ids(broker, "!0000000f") == ids([f1, f2, f1, f2, f3])


def first_occurrences(published: list[str]) -> list[str]:
    return list(dict.fromkeys(published))


@pytest.mark.parametrize("seed", range(6))
async def test_random_traffic_at_a_small_bound_keeps_order_and_loses_nothing(
        nursery, autojump_clock, seed):
    """Batches for 8 nodes through 3 node actors, the broker coming and going, idle reaping
    and the outbox in play: every message goes out, each node's in order (a repeat of an
    earlier message is allowed, consumers dedupe), and never more than 3 actors."""
    rng = random.Random(seed)
    broker, reports, store = Publisher(), [], Store()
    conversations = await start(nursery, broker, reports, store=store, max_nodes=3, idle=5)
    nursery.start_soon(outbox, conversations, store)
    nodes = [f"!{i:08x}" for i in range(8)]
    sent: list[NewMessage] = []
    for step in range(300):
        if rng.random() < 0.05:
            if broker.up.is_set():
                broker.up = trio.Event()  # down; nobody waits on the event it replaces
            else:
                broker.up.set()
        batch = [message(rng.choice(nodes), f"m{step}.{k}") for k in range(rng.randint(1, 4))]
        sent += batch
        await stored(conversations, store, *batch)
        await trio.sleep(rng.choice([0, 0.001, 0.01, 0.5]))
    broker.up.set()
    await trio.sleep(300)
    for node in nodes:
        expected = ids([m for m in sent if m.node_id == node])
        assert first_occurrences(published_ids(broker, node)) == expected
    assert conversations.peak <= 3
