"""Resource bounds of the HTTP front, seen from raw sockets: body and head limits, slow clients,
websocket frames. Each bound cuts the offender off, and other clients are served meanwhile.

The gateway here runs with short timeouts (``IDLE``, ``READ``, ``BODY``) so that a cut-off is
measured in seconds; a cut-off must come within its bound plus ``SLACK`` (scheduling on a
loaded machine), and never much before its bound.
The bound on conversation actors is tested in test_conversations.py; a websocket reader too
slow for its buffer (closed with 1013) in test_stream.py.
"""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hypercorn.protocol.h11
import hypercorn.protocol.ws_stream
import pytest
import trio
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from trio_websocket import ConnectionClosed

from actors.http import server
from actors.http.app import MAX_BODY
from kosmo.api.limits import MAX_HEAD_BYTES, MAX_HEADERS
from kosmo.api.problems import TITLES
from kosmo.config import Settings
from tests.conftest import SANCTUARY, WANDERER, Gateway, start_gateway
from tests.test_stream import connect, problem, rejected, until_closed, wait_until

# Messages are handed to a bridge only while one is online: this one takes them all.
pytestmark = pytest.mark.usefixtures("online_bridge")

IDLE, READ, BODY = 1.0, 4.0, 1.0
SLACK = 1.5
USER = f"X-User-ID: {WANDERER}\r\n".encode()


@pytest.fixture
async def gw(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[Gateway]:
    short = settings.replace(http_idle_timeout=IDLE, http_read_timeout=READ,
                             http_body_timeout=BODY)
    async with start_gateway(nursery, short) as gateway:
        yield gateway


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self, status: int, slug: str) -> dict[str, Any]:
        assert self.status == status, (self.status, self.body)
        assert self.headers["content-type"] == "application/problem+json"
        body: dict[str, Any] = json.loads(self.body)
        assert (body["type"], body["title"], body["status"]) == (
            f"/problems/{slug}", TITLES[slug], status)
        return body


class Raw:
    """One client connection driven byte by byte."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.opened = trio.current_time()

    async def send(self, data: bytes) -> bool:
        """False once the gateway has closed the connection."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def dribble(self, data: bytes, pause: float) -> None:
        for i in range(len(data)):
            if not await self.send(data[i:i + 1]):
                return
            await trio.sleep(pause)

    async def _more(self) -> bool:
        try:
            chunk = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    async def answer(self, timeout: float = 5) -> Answer:
        with trio.fail_after(timeout):
            while b"\r\n\r\n" not in self.buffer:
                assert await self._more(), f"closed without an answer: {bytes(self.buffer)!r}"
            head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines)}
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                assert await self._more(), "closed in the middle of an answer"
                rest = bytes(self.buffer).partition(b"\r\n\r\n")[2]
            self.buffer = bytearray(rest[length:])
            return Answer(int(status_line.split()[1]), headers, rest[:length])

    async def closed(self, within: float) -> float:
        """Wait for the gateway to close the connection (end of stream or reset), sending
        nothing more; return the seconds since the connection was opened."""
        with trio.fail_after(within):
            while await self._more():
                pass
        assert self.buffer == b"", bytes(self.buffer)
        return trio.current_time() - self.opened


@asynccontextmanager
async def raw(gateway: Gateway) -> AsyncIterator[Raw]:
    parts = urlsplit(gateway.url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    async with stream:
        yield Raw(stream)


async def served(gateway: Gateway) -> None:
    """Another client is served at once: a read and a send."""
    with trio.fail_after(2):
        assert (await gateway.client.get("/healthz")).status_code == 200
        response = await gateway.send(SANCTUARY, text="meanwhile")  # no quota to run out
        assert response.status_code == 201, response.text


async def served_until(gateway: Gateway, done: trio.Event) -> int:
    """Serve other clients over and over until ``done``; how many rounds."""
    rounds = 0
    while not done.is_set():
        await served(gateway)
        rounds += 1
        await trio.sleep(0.1)
    return rounds


def post_head(length: int | None = None, *, extra: bytes = b"") -> bytes:
    framing = (b"Transfer-Encoding: chunked\r\n" if length is None
               else b"Content-Length: %d\r\n" % length)
    return (b"POST /api/v1/messages HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            + USER + framing + extra + b"\r\n")


# -- request body: 16 KiB -------------------------------------------------------------------


async def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(gw: Gateway, sql):
    async with raw(gw) as client:
        assert await client.send(post_head(MAX_BODY + 1))  # and not one byte of the body
        answer = await client.answer()
        detail = answer.problem(413, "body-too-large")["detail"]
        assert detail == f"the body is limited to {MAX_BODY} bytes"
        assert answer.headers["connection"] == "close"
        await client.closed(within=1)
    await served(gw)
    assert sql.execute("SELECT count(*) FROM messages").fetchone() == (1,)  # served()'s own


async def test_a_body_at_the_limit_is_read(gw: Gateway):
    body = json.dumps({"target_node_id": "!a1b2c3d4", "text": "x"}).encode()
    body += b" " * (MAX_BODY - len(body))
    response = await gw.client.post("/api/v1/messages", content=body,
                                    headers={"X-User-ID": str(WANDERER),
                                             "Content-Type": "application/json"})
    assert response.status_code == 201, response.text


async def test_a_chunked_body_is_cut_off_mid_stream_at_the_limit(gw: Gateway):
    sent = 0
    answered_after = -1
    async with raw(gw) as client, trio.open_nursery() as nursery:

        async def upload() -> None:
            nonlocal sent
            assert await client.send(post_head())
            for _ in range(64):  # 64 KiB offered, and never the last chunk
                if not await client.send(b"400\r\n" + b"x" * 1024 + b"\r\n"):
                    return
                sent += 1024
                await trio.sleep(0.02)
            await trio.sleep_forever()

        nursery.start_soon(upload)
        answer = await client.answer()
        answered_after = sent
        answer.problem(413, "body-too-large")
        assert answer.headers["connection"] == "close"
        await client.closed(within=1)
        nursery.cancel_scope.cancel()
    assert MAX_BODY < answered_after < 64 * 1024  # judged as the bytes came, not at the end
    await served(gw)


# -- request head: 16 KiB, 100 fields ---------------------------------------------------------


def head(target: bytes = b"/healthz", fields: list[bytes] | None = None) -> bytes:
    fields = [b"Host: gw"] if fields is None else fields
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def sized_head(size: int) -> bytes:
    """A GET /healthz head of exactly ``size`` bytes."""
    base = head(fields=[b"Host: gw", b"X-Pad: "])
    return head(fields=[b"Host: gw", b"X-Pad: " + b"p" * (size - len(base))])


@pytest.mark.parametrize(("request_head", "detail"), [
    pytest.param(sized_head(MAX_HEAD_BYTES + 1), "bytes", id="one-byte-over"),
    pytest.param(head(b"/healthz?q=" + b"a" * MAX_HEAD_BYTES), "bytes", id="long-request-line"),
    pytest.param(head(fields=[b"Host: gw"] + [b"X-%d: 1" % i for i in range(MAX_HEADERS)]),
                 "fields", id="too-many-fields"),
    pytest.param(sized_head(2 * MAX_HEAD_BYTES + 1000), "bytes", id="over-the-parser-limit"),
])
async def test_a_head_over_the_limit_is_431(gw: Gateway, request_head: bytes, detail: str):
    # Sent in one write, so the parser below sees it whole; see the next test for the rest.
    async with raw(gw) as client:
        assert await client.send(request_head)
        answer = await client.answer()
        assert detail in answer.problem(431, "headers-too-large")["detail"]
        assert answer.headers["connection"] == "close"
        await client.closed(within=1)
    await served(gw)


@pytest.mark.parametrize("request_head", [
    pytest.param(sized_head(MAX_HEAD_BYTES), id="size"),
    pytest.param(head(fields=[b"Host: gw"] + [b"X-%d: 1" % i for i in range(MAX_HEADERS - 1)]),
                 id="fields"),
])
async def test_a_head_at_the_limit_is_served(gw: Gateway, request_head: bytes):
    async with raw(gw) as client:
        assert await client.send(request_head)
        assert (await client.answer()).status == 200


async def test_a_head_the_parser_gives_up_on_is_a_431_problem(gw: Gateway):
    """A head still incomplete past twice the limit is answered by Hypercorn's HTTP/1.1 parser,
    not the application: with the same problem (actors/http/server.py), and closed."""
    async with raw(gw) as client:
        assert await client.send(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
        for i in range(2 * MAX_HEAD_BYTES // 1024 + 1):  # in pieces, never finished
            if not await client.send(b"X-%d: " % i + b"v" * 1024 + b"\r\n"):
                break
            await trio.sleep(0.001)
        answer = await client.answer()
        detail = answer.problem(431, "headers-too-large")["detail"]
        assert detail == f"the request line and headers are limited to {MAX_HEAD_BYTES} bytes"
        assert answer.headers["connection"] == "close"
        await client.closed(within=1)
    await served(gw)


@pytest.mark.parametrize(("request_head", "status", "slug"), [
    pytest.param(b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad-request",
                 id="bad-field"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nBad Name: x\r\n\r\n", 400,
                 "bad-request", id="bad-name"),
    pytest.param(b"GET /he\x00lthz HTTP/1.1\r\nHost: gw\r\n\r\n", 400, "bad-request",
                 id="bad-request-line"),
    pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad-request", id="no-host"),
    pytest.param(post_head(extra=b"Content-Length: 1x\r\n")
                 .replace(b"Transfer-Encoding: chunked\r\n", b""), 400, "bad-request",
                 id="bad-length"),
    pytest.param(post_head() + b"zz\r\nxx\r\n", 400, "bad-request", id="bad-chunk"),
    pytest.param(post_head(0).replace(b"Content-Length: 0", b"Transfer-Encoding: gzip"), 501,
                 "not-implemented", id="unknown-transfer-coding"),
])
async def test_what_the_parser_cannot_read_is_a_problem(gw: Gateway, request_head: bytes,
                                                        status: int, slug: str):
    """Answered by the parser (actors/http/server.py gives the answer its body), closed at once. An
    unknown transfer coding is 501, as RFC 9112 (section 6.1) asks."""
    async with raw(gw) as client:
        assert await client.send(request_head)
        answer = await client.answer()
        body = answer.problem(status, slug)
        assert body["detail"]
        assert answer.headers["connection"] == "close"
        await client.closed(within=1)
    described = await gw.client.get(body["type"])  # the type resolves
    assert described.json() == {"type": body["type"], "title": body["title"]}
    await served(gw)


async def test_a_handshake_the_server_refuses_is_a_400_problem_and_closed(gw: Gateway):
    """Hypercorn refuses a websocket handshake it cannot accept (here, no key) by itself:
    answered with a problem, and closed at once."""
    async with raw(gw) as client:
        assert await client.send(head(b"/api/v1/stream", [
            b"Host: gw", b"Upgrade: websocket", b"Connection: Upgrade",
            b"Sec-WebSocket-Version: 13"]))
        answer = await client.answer()
        assert "Sec-WebSocket-Key" in answer.problem(400, "bad-request")["detail"]
        assert answer.headers["connection"] == "close"
        await client.closed(within=1)
    assert gw.running.events.statistics().subscribers == 0
    await served(gw)


async def test_a_frame_sent_before_the_handshake_is_answered_is_a_400_problem(gw: Gateway):
    """A client that sends a frame with its handshake, without waiting for the 101: Hypercorn
    refuses the stream while the application is still accepting it. Answered with a problem and
    closed, the application's late accept dropped (no error, nothing left subscribed). Should
    the application accept first, the frame is just a frame."""
    upgrade = head(f"/api/v1/stream?user_id={WANDERER}".encode(), [
        b"Host: gw", b"Upgrade: websocket", b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"])
    frame = b"\x81\x82abcd" + bytes([ord("h") ^ ord("a"), ord("i") ^ ord("b")])  # masked "hi"
    for _ in range(5):
        async with raw(gw) as client:
            assert await client.send(upgrade + frame)
            answer = await client.answer()
            if answer.status != 101:
                answer.problem(400, "bad-request")
                assert answer.headers["connection"] == "close"
                await client.closed(within=1)
        await served(gw)
    await wait_until(lambda: gw.running.events.statistics().subscribers == 0, timeout=2)


@pytest.mark.parametrize(("owner", "ours", "module", "call_sites"), [
    pytest.param(H11Protocol, server._parser_problem, hypercorn.protocol.h11,
                 ["await self._send_error_response(error.error_status_hint)"], id="h11"),
    pytest.param(WSStream, server._handshake_problem, hypercorn.protocol.ws_stream,
                 ["await self._send_error_response(400)"], id="websocket"),
])
async def test_the_hypercorn_method_the_gateway_replaces_is_still_there(gw: Gateway, owner,
                                                                         ours, module,
                                                                         call_sites):
    """actors/http/server.py replaces Hypercorn's private ``_send_error_response(status_code)``
    when a front starts; on a Hypercorn where it is gone, renamed or called otherwise, the
    answers above would silently lose their problem body (or the front's start would fail)."""
    assert owner._send_error_response is ours
    server.answer_problems()  # as another front's start does: nothing changes
    assert owner._send_error_response is ours
    source = inspect.getsource(module)  # as installed, not as replaced
    assert "def _send_error_response(self, status_code: int) -> None:" in source
    for call in call_sites:
        assert call in source
    assert list(inspect.signature(ours).parameters) == ["self", "status_code"]


def test_importing_the_http_front_leaves_hypercorn_as_it_is():
    """The replacement happens when a front starts, not on import (a fresh interpreter: in
    this one a front may have started already)."""
    check = ("from hypercorn.protocol.h11 import H11Protocol\n"
             "from hypercorn.protocol.ws_stream import WSStream\n"
             "from actors.http import server\n"
             "assert H11Protocol._send_error_response is not server._parser_problem\n"
             "assert WSStream._send_error_response is not server._handshake_problem\n")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, timeout=60,
                          check=False, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr.decode()


def test_a_hypercorn_without_the_method_fails_the_start_loudly():
    class Gone:
        pass

    with pytest.raises(RuntimeError, match=r"Gone\._send_error_response is gone"):
        server.replace_send_error_response(Gone, server._parser_problem)


async def test_a_stream_handshake_head_over_the_limit_is_431(gw: Gateway):
    fields = [(b"X-%d" % i, b"1") for i in range(MAX_HEADERS)]
    error = await rejected(gw, fields, user_id=WANDERER)
    assert error.status_code == 431
    assert problem(error)["type"] == "/problems/headers-too-large"
    assert gw.running.events.statistics().subscribers == 0


# -- slow clients -------------------------------------------------------------------------------


async def test_a_client_that_sends_nothing_is_closed_after_the_idle_timeout(gw: Gateway):
    async with raw(gw) as client, trio.open_nursery() as nursery:
        done = trio.Event()
        nursery.start_soon(served_until, gw, done)
        after = await client.closed(within=IDLE + SLACK)
        done.set()
    assert after > IDLE * 0.9


async def test_a_head_sent_a_byte_at_a_time_is_cut_off_after_the_idle_timeout(gw: Gateway):
    """Slowloris: each byte comes well within the read timeout, the head never completes.
    Twenty such clients at once, and the others are still served."""
    slow_head = post_head(10)  # over 10 s at this pace
    async with trio.open_nursery() as nursery:
        done = trio.Event()
        nursery.start_soon(served_until, gw, done)
        cut_off = []

        async def slowloris() -> None:
            async with raw(gw) as client, trio.open_nursery() as inner:
                inner.start_soon(client.dribble, slow_head, 0.05)
                cut_off.append(await client.closed(within=IDLE + SLACK))
                inner.cancel_scope.cancel()

        async with trio.open_nursery() as clients:
            for _ in range(20):
                clients.start_soon(slowloris)
        done.set()
    assert len(cut_off) == 20
    assert min(cut_off) > IDLE * 0.9


@pytest.mark.parametrize("pace", [pytest.param(0.05, id="dribbled"),
                                  pytest.param(None, id="stalled")])
async def test_a_body_too_slow_is_answered_408_after_the_body_timeout(gw: Gateway, sql, pace):
    body = json.dumps({"target_node_id": "!a1b2c3d4", "text": "slow"}).encode()
    async with raw(gw) as client, trio.open_nursery() as nursery:
        done = trio.Event()
        nursery.start_soon(served_until, gw, done)
        assert await client.send(post_head(len(body)))
        started = trio.current_time()
        if pace is None:
            assert await client.send(body[:10])  # and then nothing
        else:
            nursery.start_soon(client.dribble, body, pace)  # would take 2 s
        answer = await client.answer(timeout=BODY + SLACK)
        took = trio.current_time() - started
        answer.problem(408, "request-timeout")
        assert answer.headers["connection"] == "close"
        await client.closed(within=1)
        done.set()
        nursery.cancel_scope.cancel()
    assert BODY * 0.9 < took < BODY + SLACK
    texts = [row[0] for row in sql.execute("SELECT text FROM messages")]
    assert "slow" not in texts


async def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(gw: Gateway):
    async with raw(gw) as client:
        assert await client.send(head())
        assert (await client.answer()).status == 200
        answered = trio.current_time()
        await client.closed(within=IDLE + SLACK)
    assert trio.current_time() - answered > IDLE * 0.9


async def test_a_silent_stream_client_is_closed_after_the_read_timeout(gw: Gateway):
    """A websocket client that answers nothing, not even the gateway's pings."""
    bus = gw.running.events
    upgrade = head(f"/api/v1/stream?user_id={WANDERER}".encode(), [
        b"Host: gw", b"Upgrade: websocket", b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"])
    async with raw(gw) as client:
        assert await client.send(upgrade)
        assert (await client.answer()).status == 101
        await wait_until(lambda: bus.statistics().subscribers == 1)
        accepted = trio.current_time()
        client.buffer.clear()
        with trio.fail_after(READ + SLACK):
            while await client._more():  # the gateway's pings, unanswered
                client.buffer.clear()
        silent = trio.current_time() - accepted
    assert READ * 0.9 < silent
    await wait_until(lambda: bus.statistics().subscribers == 0, timeout=2)
    await served(gw)


def gateway_end(gateway_port: int, client_port: int) -> str | None:
    """The TCP state of the gateway's end of a connection on this machine, None once gone."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)) == (
                    gateway_port, client_port):
                return state
    return None


@pytest.mark.skipif(not (hasattr(socket, "TCP_USER_TIMEOUT") and Path("/proc/net/tcp").exists()),
                    reason="Linux: TCP_USER_TIMEOUT, and /proc/net/tcp to watch the connection")
async def test_a_client_that_never_reads_its_answers_is_cut_off_after_the_read_timeout(
        gw: Gateway):
    """Pipelined requests whose answers (4.6 MB) the client never reads: the gateway's writes
    stall on a closed TCP window, and the kernel aborts the connection after the read timeout.
    The client only learns of it when it reads, so watch the gateway's end."""
    port = urlsplit(gw.url).port or 80
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    async with trio.SocketStream(sock) as stream, trio.open_nursery() as nursery:
        await sock.connect(("127.0.0.1", port))
        client_port = sock.getsockname()[1]
        await stream.send_all(b"GET /openapi.json HTTP/1.1\r\nHost: gw\r\n\r\n" * 300)
        sent = trio.current_time()
        done = trio.Event()
        nursery.start_soon(served_until, gw, done)
        with trio.fail_after(READ + SLACK):
            while gateway_end(port, client_port) is not None:
                await trio.sleep(0.05)
        done.set()
    assert trio.current_time() - sent > READ * 0.9


# -- websocket frames: 4 KiB ------------------------------------------------------------------


async def test_a_stream_frame_over_4_kib_closes_the_stream_with_1009(gw: Gateway):
    bus = gw.running.events
    async with connect(gw, user_id=WANDERER) as ws:
        await ws.send_message("x" * 4096)  # at the limit: read and dropped
        await served(gw)
        await ws.send_message("x" * 4097)
        _, reason = await until_closed(ws, timeout=5)
        assert reason.code == 1009
        with pytest.raises(ConnectionClosed):
            await ws.send_message("again")
    await wait_until(lambda: bus.statistics().subscribers == 0, timeout=2)
    await served(gw)
