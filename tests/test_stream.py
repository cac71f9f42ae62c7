"""The live stream (websocket): owner-only events, auth at the handshake, resume, cut-off and
shutdown closes."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
import pytest
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from kosmo.config import Settings
from kosmo.events import encode_event_id
from tests.conftest import GUARDIAN, SANCTUARY, WANDERER, Gateway, db_value, start_gateway

# Messages are handed to a bridge only while one is online: this one takes them all.
pytestmark = pytest.mark.usefixtures("online_bridge")

SECRET = "test-secret-with-enough-bytes-for-hs256"
PATH = "/api/v1/stream"


@asynccontextmanager
async def connect(gateway: Gateway, *, headers: list[tuple[bytes, bytes]] | None = None,
                  receive_buffer: int | None = None, queue: int = 1,
                  **query: Any) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client of the stream that owns its socket: ``open_websocket_url``
    leaves the socket open when the server closes first or refuses the handshake, which
    surfaces here as a ResourceWarning. ``receive_buffer`` shrinks the socket's receive
    buffer, so that a client that does not read stalls the gateway's writes early."""
    parts = urlsplit(gateway.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    resource = f"{PATH}?{urlencode(query)}" if query else PATH
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    async with trio.SocketStream(sock) as stream:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect((host, port))
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                ws = await wrap_client_stream(nursery, stream, host, resource,
                                              extra_headers=headers, message_queue_size=queue)
            try:
                yield ws
            finally:
                with trio.move_on_after(1, shield=True):  # the close handshake is local
                    await ws.aclose()


def header(user: Any) -> list[tuple[bytes, bytes]]:
    return [(b"X-User-ID", str(user).encode())]


def token(**claims: Any) -> str:
    return jwt.encode({"sub": str(WANDERER), "exp": int(time.time()) + 60, **claims}, SECRET,
                      algorithm="HS256")


async def next_event(ws: WebSocketConnection, timeout: float = 10) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def events(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    return [await next_event(ws) for _ in range(count)]


async def sent(gateway: Gateway, user: Any, node: str = "!a1b2c3d4", text: str = "hi") -> str:
    response = await gateway.send(user, node, text)
    assert response.status_code == 201, response.text
    return str(response.json()["message_id"])


def lifecycle(received: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["message"]["message_id"], e["message"]["status"]) for e in received]


async def until_closed(ws: WebSocketConnection, timeout: float = 30
                       ) -> tuple[list[dict[str, Any]], CloseReason]:
    received = []
    with trio.fail_after(timeout):
        while True:
            try:
                received.append(json.loads(await ws.get_message()))
            except ConnectionClosed as closed:
                reason = closed.reason
                break
    assert reason is not None
    return received, reason


async def wait_until(predicate: Any, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def rejected(gateway: Gateway, headers: list[tuple[bytes, bytes]] | None = None,
                   **query: Any) -> ConnectionRejected:
    with pytest.RaisesGroup(ConnectionRejected) as info:
        async with connect(gateway, headers=headers, **query):
            pytest.fail("the handshake was accepted")
    [error] = info.value.exceptions
    assert isinstance(error, ConnectionRejected)
    return error


def problem(error: ConnectionRejected) -> dict[str, Any]:
    headers = {k.decode().lower(): v.decode() for k, v in error.headers}
    assert headers["content-type"] == "application/problem+json"
    return json.loads(error.body or b"")  # type: ignore[no-any-return]


async def test_events_go_to_their_owner_only(gateway: Gateway):
    async with connect(gateway, headers=header(WANDERER)) as wanderer, \
            connect(gateway, user_id=GUARDIAN) as guardian:
        g1 = await sent(gateway, GUARDIAN, "!a1b2c3d4", "from the guardian")
        received = await events(guardian, 2)
        assert lifecycle(received) == [("message.created", g1, "pending"),
                                       ("message.status", g1, "queued")]
        created = received[0]
        assert created["message"]["text"] == "from the guardian"
        assert created["message"]["node_id"] == "!a1b2c3d4"
        assert created["message"]["direction"] == "outbound"
        assert received[0]["event_id"] < received[1]["event_id"]

        # The bus keeps order: had the guardian's events reached the wanderer, they would
        # come before the wanderer's own.
        w1 = await sent(gateway, WANDERER, "!deadbeef", "from the wanderer")
        assert lifecycle(await events(wanderer, 2)) == [("message.created", w1, "pending"),
                                                        ("message.status", w1, "queued")]
        g2 = await sent(gateway, GUARDIAN)
        assert lifecycle(await events(guardian, 1)) == [("message.created", g2, "pending")]


async def test_disconnect_unsubscribes_even_after_chatter(gateway: Gateway):
    """What the client sends is read and dropped: unread, it would fill the framework's queue
    and hide the disconnect."""
    bus = gateway.running.events
    async with connect(gateway, user_id=WANDERER) as ws:
        for i in range(50):
            await ws.send_message(f"chatter {i}")
        await sent(gateway, WANDERER)
        await next_event(ws)
        assert bus.statistics().subscribers == 1
    await wait_until(lambda: bus.statistics().subscribers == 0)


@pytest.mark.parametrize(("query", "headers"), [
    pytest.param({}, None, id="none"),
    pytest.param({"user_id": "alice"}, None, id="query-not-uuid"),
    pytest.param({}, [(b"X-User-ID", b"alice")], id="header-not-uuid"),
    pytest.param({"token": token()}, None, id="token-in-header-mode"),
])
async def test_bad_credentials_are_refused_at_the_handshake(gateway: Gateway, query, headers):
    error = await rejected(gateway, headers, **query)
    assert error.status_code == 401
    assert problem(error)["type"] == "/problems/unauthorized"
    assert gateway.running.events.statistics().subscribers == 0


@pytest.mark.parametrize("since", ["abc", "-1", "1" * 21, ""])
async def test_bad_since_is_refused_at_the_handshake(gateway: Gateway, since):
    error = await rejected(gateway, user_id=WANDERER, since=since)
    assert error.status_code == 422
    assert problem(error)["errors"][0]["field"] == "since"


@pytest.fixture
async def jwt_gateway(nursery, settings: Settings):
    async with start_gateway(nursery, settings.replace(auth_mode="jwt", jwt_secret=SECRET)) as gw:
        yield gw


@pytest.mark.parametrize(("query", "headers"), [
    pytest.param({}, None, id="none"),
    pytest.param({"token": "not.a.token"}, None, id="garbage"),
    pytest.param({"token": token(exp=int(time.time()) - 10)}, None, id="expired"),
    pytest.param({"token": jwt.encode({"sub": str(WANDERER), "exp": int(time.time()) + 60},
                                      "another-secret-of-sufficient-length", algorithm="HS256")},
                 None, id="other-secret"),
    pytest.param({}, [(b"Authorization", b"Bearer not.a.token")], id="bad-bearer"),
    pytest.param({"user_id": str(WANDERER)}, header(WANDERER), id="header-mode-credentials"),
])
async def test_bad_tokens_are_refused_at_the_handshake(jwt_gateway: Gateway, query, headers):
    error = await rejected(jwt_gateway, headers, **query)
    assert error.status_code == 401
    assert problem(error)["type"] == "/problems/unauthorized"


async def test_tokens_open_the_stream(jwt_gateway: Gateway):
    bearer = [(b"Authorization", f"Bearer {token()}".encode())]
    async with connect(jwt_gateway, token=token()) as by_query, \
            connect(jwt_gateway, headers=bearer) as by_header:
        response = await jwt_gateway.client.post(
            "/api/v1/messages", headers={"Authorization": f"Bearer {token()}"},
            json={"target_node_id": "!a1b2c3d4", "text": "hi"})
        assert response.status_code == 201, response.text
        message_id = response.json()["message_id"]
        for ws in (by_query, by_header):
            assert lifecycle(await events(ws, 1)) == [("message.created", message_id, "pending")]


async def test_resume_with_since_gets_exactly_the_missed_events(gateway: Gateway):
    async with connect(gateway, user_id=WANDERER) as observer:  # sees everything, for comparison
        async with connect(gateway, user_id=WANDERER) as first:
            for _ in range(2):
                await sent(gateway, WANDERER)
            seen = await events(first, 4)
        assert await events(observer, 4) == seen

        for _ in range(2):
            await sent(gateway, WANDERER)
        missed = await events(observer, 4)

        async with connect(gateway, user_id=WANDERER, since=seen[-1]["event_id"]) as resumed:
            assert await events(resumed, 4) == missed
            live = await sent(gateway, WANDERER, text="live")
            assert lifecycle(await events(resumed, 2)) == [("message.created", live, "pending"),
                                                           ("message.status", live, "queued")]


async def test_resume_pages_through_a_long_history(gateway: Gateway, sql):
    async with trio.open_nursery() as nursery:
        for i in range(250):
            nursery.start_soon(gateway.running.ledger.send, SANCTUARY, "!a1b2c3d4", f"m{i}")
    await wait_until(lambda: db_value(
        sql, "SELECT count(*) FROM message_status_history WHERE user_id = %s AND NOT note",
        SANCTUARY) == 500)
    ids = _event_ids(sql, SANCTUARY)
    async with connect(gateway, user_id=SANCTUARY, since=ids[9]) as ws:
        assert [e["event_id"] for e in await events(ws, 490)] == ids[10:]
        live = await sent(gateway, SANCTUARY, text="after the replay")
        assert lifecycle(await events(ws, 1)) == [("message.created", live, "pending")]


async def test_resuming_during_a_burst_misses_nothing_and_repeats_nothing(gateway: Gateway, sql):
    """Streams opened while events are being written: each gets every event after its
    ``since`` exactly once, whether from the replay or live."""
    total = 60
    async with connect(gateway, user_id=SANCTUARY) as observer, trio.open_nursery() as nursery:

        async def produce() -> None:
            for i in range(total):
                await gateway.running.ledger.send(SANCTUARY, f"!0000000{i % 4}", f"m{i}")

        nursery.start_soon(produce)
        done = trio.Event()
        seen: list[str] = []
        resumed = []
        for k in (5, 30, 70):
            while len(seen) < k:
                seen.append((await next_event(observer))["event_id"])
            resumed.append((seen[-1], await nursery.start(_open_stream, gateway, SANCTUARY,
                                                         seen[-1], done)))
        while len(seen) < 2 * total:  # the burst is over: every event is committed
            seen.append((await next_event(observer))["event_id"])
        assert sorted(seen) == _event_ids(sql, SANCTUARY)

        for since, ws in resumed:
            expected = [i for i in sorted(seen) if i > since]
            got = [e["event_id"] for e in await events(ws, len(expected))]
            assert sorted(got) == expected
            assert len(set(got)) == len(got)
        sentinel = await sent(gateway, SANCTUARY, text="sentinel")
        for _, ws in resumed:  # nothing else came before the next event
            assert lifecycle(await events(ws, 1)) == [("message.created", sentinel, "pending")]
        done.set()


async def _open_stream(gateway: Gateway, user: Any, since: str, done: trio.Event, *,
                       task_status: trio.TaskStatus[WebSocketConnection]) -> None:
    async with connect(gateway, user_id=user, since=since) as ws:
        task_status.started(ws)
        await done.wait()


async def test_reconnecting_with_the_last_id_received_under_load(gateway: Gateway, sql):
    total = 60
    received: list[str] = []
    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            for i in range(total):
                await gateway.running.ledger.send(SANCTUARY, f"!0000000{i % 4}", f"m{i}")

        nursery.start_soon(produce)
        with trio.fail_after(5):
            while len(received) < 2 * total:
                query = {"user_id": SANCTUARY}
                if received:
                    query["since"] = received[-1]
                async with connect(gateway, **query) as ws:
                    for _ in range(min(7, 2 * total - len(received))):
                        received.append((await next_event(ws, 5))["event_id"])
    assert len(set(received)) == len(received)
    assert sorted(received) == _event_ids(sql, SANCTUARY)


def _event_ids(sql: Any, user: Any) -> list[str]:
    return [encode_event_id(r[0]) for r in sql.execute(
        "SELECT id FROM message_status_history WHERE user_id = %s AND NOT note ORDER BY id",
        (user,))]


async def test_a_client_too_slow_is_cut_off_with_1013(gateway: Gateway, sql):
    bus = gateway.running.events
    text = "x" * 180
    async with connect(gateway, receive_buffer=4096, user_id=SANCTUARY) as ws:
        with trio.fail_after(60):
            sends = 0
            while bus.statistics().cut_off == 0:  # the client reads nothing meanwhile
                async with trio.open_nursery() as nursery:
                    for _ in range(100):
                        nursery.start_soon(gateway.running.ledger.send, SANCTUARY,
                                           f"!0000000{sends % 8}", text)
                        sends += 1
        assert bus.statistics().subscribers == 0

        frames, reason = await until_closed(ws)
    received = [e["event_id"] for e in frames]
    assert reason.code == 1013
    assert reason.reason == f"too slow: reconnect with ?since={received[-1]}"
    assert len(received) < 2 * sends
    assert len(set(received)) == len(received)

    next_id = db_value(sql, "SELECT min(id) FROM message_status_history "
                            "WHERE user_id = %s AND NOT note AND id > %s",
                       SANCTUARY, int(received[-1]))
    async with connect(gateway, user_id=SANCTUARY, since=received[-1]) as resumed:
        assert (await next_event(resumed))["event_id"] == encode_event_id(next_id)


async def test_shutdown_closes_streams_with_1001_at_once(gateway: Gateway):
    async with connect(gateway, user_id=WANDERER) as wanderer, \
            connect(gateway, user_id=GUARDIAN) as guardian:
        await wait_until(lambda: gateway.running.events.statistics().subscribers == 2)
        gateway.shutdown.set()
        with trio.fail_after(1):
            for ws in (wanderer, guardian):
                frames, reason = await until_closed(ws)
                assert (frames, reason.code) == ([], 1001)


async def test_plain_get_is_documented_and_answered_426(gateway: Gateway):
    response = await gateway.get(PATH, WANDERER)
    assert response.status_code == 426
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["Upgrade"] == "websocket"
    spec = (await gateway.client.get("/openapi.json")).json()
    assert "websocket" in spec["paths"][PATH]["get"]["description"]
