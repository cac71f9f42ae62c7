"""Live events across gateway processes: two gateways on one database and broker, a stream on
one sees the events of messages sent through the other, in event order (a burst too, one frame
per event), resumes across them, and catches up after its notification connection broke; a
process without streams reads no events back."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import psycopg
import pytest
import trio

from actors import event_feed
from actors.events import EventBus
from kosmo.config import Settings
from kosmo.db import Database
from kosmo.events import encode_event_id, events_after
from tests.conftest import SANCTUARY, WANDERER, Gateway, db_value, start_gateway
from tests.test_stream import connect, events, sent, wait_until

pytestmark = pytest.mark.usefixtures("online_bridge")

LISTENERS = """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'kosmo-events'"""


@asynccontextmanager
async def two_gateways(nursery: trio.Nursery, settings: Settings
                       ) -> AsyncIterator[tuple[Gateway, Gateway]]:
    group = f"g-{settings.mqtt_topic_root}"
    a_settings = dataclasses.replace(settings, mqtt_client_id=f"{settings.mqtt_client_id}-a",
                                     mqtt_shared_group=group)
    b_settings = dataclasses.replace(settings, mqtt_client_id=f"{settings.mqtt_client_id}-b",
                                     mqtt_shared_group=group)
    async with start_gateway(nursery, a_settings) as a, start_gateway(nursery, b_settings) as b:
        yield a, b


def event_ids(sql: Any, user: Any, after: int = 0) -> list[str]:
    return [encode_event_id(r[0]) for r in sql.execute(
        "SELECT id FROM message_status_history WHERE user_id = %s AND NOT note AND id > %s"
        " ORDER BY id", (user, after))]


def user_events(sql: Any, user: Any) -> int:
    return int(db_value(sql, "SELECT count(*) FROM message_status_history"
                             " WHERE user_id = %s AND NOT note", user))


async def test_a_stream_sees_the_events_of_another_process_in_order(nursery, settings, sql):
    async with two_gateways(nursery, settings) as (a, b):
        async with connect(b, user_id=WANDERER) as on_b, connect(a, user_id=WANDERER) as on_a:
            sent_ids = []
            for i in range(6):  # mostly through A, some through B: one order for both
                sent_ids.append(await sent(b if i % 3 == 2 else a, WANDERER, text=f"m{i}"))
            await wait_until(lambda: user_events(sql, WANDERER) == 12)
            expected = event_ids(sql, WANDERER)
            seen_b = await events(on_b, 12)
            seen_a = await events(on_a, 12)
        assert [e["event_id"] for e in seen_b] == expected
        assert seen_a == seen_b
        created = [e["message"]["message_id"] for e in seen_b if e["type"] == "message.created"]
        assert created == sent_ids


async def test_resume_on_one_process_replays_the_events_written_by_the_other(
        nursery, settings, sql):
    async with two_gateways(nursery, settings) as (a, b):
        first = await sent(a, SANCTUARY, text="before")
        await wait_until(lambda: user_events(sql, SANCTUARY) == 2)
        since = event_ids(sql, SANCTUARY)[0]  # the first message's `created`
        for i in range(3):
            await sent(a, SANCTUARY, text=f"missed {i}")
        await wait_until(lambda: user_events(sql, SANCTUARY) == 8)
        async with connect(b, user_id=SANCTUARY, since=since) as resumed:
            replayed = await events(resumed, 7)
            assert [e["event_id"] for e in replayed] == event_ids(sql, SANCTUARY)[1:]
            assert replayed[0]["message"]["message_id"] == first
            live = await sent(a, SANCTUARY, text="live")
            after = await events(resumed, 2)
        assert [(e["type"], e["message"]["message_id"]) for e in after] == [
            ("message.created", live), ("message.status", live)]
        assert [e["event_id"] for e in replayed + after] == event_ids(sql, SANCTUARY)[1:]


async def test_events_written_while_the_listener_is_away_arrive_after_it_is_back(
        nursery, settings, sql, monkeypatch):
    monkeypatch.setattr(event_feed, "RETRY_FIRST", 3.0)  # a window to write in while away
    async with two_gateways(nursery, settings) as (a, b):
        async with connect(b, user_id=WANDERER) as on_b:
            await wait_until(lambda: db_value(sql, LISTENERS) == 2)
            sql.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database()"
                        " AND application_name = 'kosmo-events'")
            await wait_until(lambda: db_value(sql, LISTENERS) == 0)
            message = await sent(a, WANDERER, text="while away")
            await wait_until(lambda: user_events(sql, WANDERER) == 2)
            assert db_value(sql, LISTENERS) == 0  # still away: only the catch-up can bring it
            seen = await events(on_b, 2)
            assert [e["event_id"] for e in seen] == event_ids(sql, WANDERER)
            assert {e["message"]["message_id"] for e in seen} == {message}
            await wait_until(lambda: db_value(sql, LISTENERS) == 2)
            live = await sent(a, WANDERER, text="back")
            assert {e["message"]["message_id"] for e in await events(on_b, 2)} == {live}


async def test_a_burst_written_by_another_process_arrives_in_order_one_frame_each(
        nursery, settings, sql):
    """Many events of one user committed together reach the other process in one read and
    wait for its stream together: they go out in one pass, in event order, one frame each."""
    async with two_gateways(nursery, settings) as (a, b):
        async with connect(b, user_id=SANCTUARY, queue=512) as on_b:
            await wait_until(lambda: b.running.events.statistics().subscribers == 1)
            async with trio.open_nursery() as burst:  # one ledger batch, mostly
                for i in range(60):
                    burst.start_soon(a.running.ledger.send, SANCTUARY, f"!0000000{i % 4}",
                                     f"burst {i}")
            await wait_until(lambda: user_events(sql, SANCTUARY) == 120)
            frames = await events(on_b, 120)
            live = await sent(a, SANCTUARY, text="after the burst")
            after = await events(on_b, 2)
        assert [e["event_id"] for e in frames + after] == event_ids(sql, SANCTUARY)
        assert {e["message"]["message_id"] for e in after} == {live}
        assert b.running.events.statistics().cut_off == 0


async def test_a_process_without_streams_reads_no_events_back(nursery, settings, sql,
                                                             database_url):
    """The feed of a process no stream is subscribed to moves past the events other processes
    write without reading them, still wakes its ``on_written`` listeners, and reads again as
    soon as a stream subscribes."""
    db = Database(database_url, size=2)
    await db.open(within=10)
    try:
        async with start_gateway(nursery, settings) as writer, trio.open_nursery() as mine:
            bus = EventBus()
            await mine.start(bus.run)
            feed = event_feed.EventFeed(db, bus, database_url)
            woken = []
            bus.on_written(lambda: woken.append(feed.cursor))
            await mine.start(feed.run)
            await sent(writer, WANDERER, text="nobody listens")
            await wait_until(lambda: user_events(sql, WANDERER) == 2)
            newest = int(event_ids(sql, WANDERER)[-1])
            await wait_until(lambda: feed.cursor >= newest)
            assert (feed.reads, feed.passed > 0, bool(woken)) == (0, True, True)

            subscription = await bus.subscribe(WANDERER)
            live = await sent(writer, WANDERER, text="now a stream listens")
            with trio.fail_after(10):
                got = [await subscription.events.receive() for _ in range(2)]
            assert {e.message.message_id for e in got} == {UUID(live)}
            assert [e.event_id for e in got] == event_ids(sql, WANDERER, newest)
            assert feed.reads > 0
            await bus.unsubscribe(subscription)
            mine.cancel_scope.cancel()
    finally:
        await db.close()


def test_the_feed_reads_each_message_by_index_whatever_the_statistics(sql, database_url):
    """The test database's statistics say its tables are empty: planned from them, a join of
    the history and the messages after a cursor hashed every message. The read must look each
    row's message up by its key, and find every event after the cursor, in order."""
    sql.execute("""
        WITH m AS (
            INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at,
                                  updated_at, expires_at)
            SELECT gen_random_uuid(), 'outbound', %(user)s, '!a1b2c3d4', 'm' || g, 'queued',
                   now(), now(), now() + interval '1 day'
            FROM generate_series(1, 10000) AS g RETURNING id, user_id)
        INSERT INTO message_status_history (message_id, user_id, status, at)
        SELECT id, user_id, 'queued', now() FROM m""", {"user": WANDERER})
    newest = int(db_value(sql, "SELECT max(id) FROM message_status_history"))
    with psycopg.connect(database_url) as conn:  # one transaction, as Database.run gives
        found, last = events_after(conn, newest - 50, 1000)
        scans = dict(conn.execute(
            "SELECT relname, seq_scan FROM pg_stat_xact_user_tables"
            " WHERE relname IN ('messages', 'message_status_history')").fetchall())
    assert [int(e.event_id) for e in found] == list(range(newest - 49, newest + 1))
    assert last == newest
    assert scans["messages"] == 0
