"""The HTTP front as an actor: Hypercorn's trio server inside our nursery (no worker process).

Rules: ready (``started(binds)``) only once the socket is listening; it stops gracefully when
``shutdown`` is set, letting requests in progress finish within ``graceful_timeout`` seconds.
With ``reuse_port`` the socket is bound with ``SO_REUSEPORT`` (Hypercorn sets it, before the bind,
when its config has more than one worker), so that the workers of ``kosmo gateway --workers N``
each bind their own socket on one address and the kernel spreads connections among them.

Bounds against slow or hostile clients (the application adds the body limit and timeout, and
the exact head limits, in ``kosmo.api``):
- ``idle_timeout``: a connection that has not delivered a complete request head this long after
  it opened, or after its previous response, is closed (Hypercorn's keep-alive timer, which runs
  until a head is parsed: it also ends a client sending its head a byte at a time).
- ``read_timeout``: a connection that sends nothing for this long is closed, whatever its state;
  and one that takes in nothing of what the gateway sends for this long is aborted by the
  kernel (``TCP_USER_TIMEOUT`` on the listening socket, inherited by each connection, where the
  system has it): Hypercorn's writes cannot be cancelled, so without it a client that never
  reads its answers would hold its connection and a task for ever.
- ``HEAD_BACKSTOP``: an incomplete request head over this many bytes is refused by the HTTP
  parser itself (a ``431``, then close). It is twice the application's head limit, so a head
  just over that limit reaches the application and gets the application's answer.
- A websocket message over 4 KiB from a client closes its stream with 1009.
- After a complete response the server itself ends the request (``http.disconnect``) and then,
  in the same task, closes the connection (``Connection: close``) or restarts the idle timer.
  Quart-Trio cancels the request's tasks on that disconnect, which cancelled this work half
  way: a connection answered ``Connection: close`` stayed open (for ever, for a client sending
  a byte now and then), and a kept-alive one had no idle timer. ``_finish_responses`` withholds
  that disconnect from the application once its response is complete.

The one place the project reaches into Hypercorn: a few requests never reach the application,
and Hypercorn answers them itself with an empty body, through a private method
(``_send_error_response(status_code)``) that no hook or setting replaces. ``HttpFront.run``
replaces it, before it serves (``answer_problems``: once per process, idempotent; importing this
module changes nothing in Hypercorn), with a function of ours that answers the same status as
problem+json, with ``Connection: close``, on two classes:
- ``H11Protocol`` (``_parser_problem``): what the HTTP/1.1 parser cannot read (400), a head
  still incomplete past ``HEAD_BACKSTOP`` (431), a transfer coding other than chunked (501);
- ``WSStream`` (``_handshake_problem``): a websocket handshake Hypercorn refuses (400: not a
  valid one, or a frame came before it was answered); the stream then ends, so the connection
  is closed at once (Hypercorn left it open until ``read_timeout``), and the application, which
  may be accepting that stream meanwhile, is told of the disconnect.
The method is the same in Hypercorn 0.17 and 0.18, which pyproject.toml allows; the front's start
fails if it is gone, and tests/test_bounds.py checks its signature and its call sites.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol.events import Body, EndBody, Response, StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.run import worker_serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from kosmo.api.limits import MAX_HEAD_BYTES
from kosmo.api.problems import MEDIA_TYPE, for_status

HEAD_BACKSTOP = 2 * MAX_HEAD_BYTES

PARSER_DETAILS = {
    400: "the request could not be parsed as HTTP/1.1",
    431: f"the request line and headers are limited to {MAX_HEAD_BYTES} bytes",
    501: "the only transfer coding accepted is chunked",
}
HANDSHAKE_DETAILS = {
    400: "not a valid websocket handshake (Sec-WebSocket-Key and Sec-WebSocket-Version: 13 are"
         " required), or data sent before the handshake was answered",
}


class HttpFront:
    def __init__(self, app: QuartTrio, bind: tuple[str, int], *, shutdown: trio.Event,
                 graceful_timeout: float = 5.0, idle_timeout: float = 30.0,
                 read_timeout: float = 30.0, reuse_port: bool = False) -> None:
        self._app = app
        self._shutdown = shutdown
        self._read_timeout = read_timeout
        host, port = bind
        self._config = Config()
        self._config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        self._config.accesslog = None
        self._config.errorlog = "-"
        self._config.graceful_timeout = graceful_timeout
        self._config.keep_alive_timeout = idle_timeout
        self._config.read_timeout = read_timeout  # type: ignore[assignment]  # a float works
        self._config.h11_max_incomplete_size = HEAD_BACKSTOP
        if reuse_port:  # only create_sockets reads it: this process serves alone either way
            self._config.workers = 2
        # Streams are quiet for long stretches: ping them, so that a live client's pongs count
        # as reads for read_timeout and a dead one is noticed. Clients send nothing we read.
        self._config.websocket_ping_interval = min(10.0, read_timeout / 3)
        self._config.websocket_max_message_size = 4 * 1024

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        answer_problems()
        # hypercorn.trio.serve, with sockets of our own making.
        sockets = self._config.create_sockets()
        for sock in sockets.insecure_sockets:
            if hasattr(socket, "TCP_USER_TIMEOUT") and sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                                int(self._read_timeout * 1000))
            sock.listen(self._config.backlog)
        app = wrap_app(_finish_responses(self._app), self._config.wsgi_max_body_size, "asgi")
        await worker_serve(app, self._config, sockets=sockets,
                           shutdown_trigger=self._shutdown.wait, task_status=task_status)


def _finish_responses(app: QuartTrio) -> Any:
    """The app, except that a request whose response is complete is not told of the disconnect
    that follows: the task that sent the response must be left to finish the server's part."""

    async def finish_responses(scope: Scope, receive: ASGIReceiveCallable,
                               send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        complete = False

        async def receive_until_complete() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect" and complete:
                await trio.sleep_forever()  # the request's tasks end with the response's send
            return message

        async def send_marking_complete(message: Any) -> None:
            nonlocal complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        return await app(scope, receive_until_complete, send_marking_complete)

    return finish_responses


def _problem(status: int, detail: str | None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of the problem+json answer with this status."""
    body = json.dumps(for_status(status, detail).body()).encode()
    return [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", b"%d" % len(body)),
            (b"connection", b"close")], body


async def _parser_problem(self: H11Protocol, status_code: int) -> None:
    """``H11Protocol._send_error_response``: the parser's answer, as a problem. In one write, so
    that nothing of a response the application may be sending meanwhile (h11 refuses it after
    this one) comes between. Hypercorn closes the connection after it."""
    headers, body = _problem(status_code, PARSER_DETAILS.get(status_code))
    data = b""
    try:
        for event in (h11.Response(status_code=status_code,
                                   headers=headers + self.config.response_headers("h11")),
                      h11.Data(data=body), h11.EndOfMessage()):
            data += self.connection.send(event) or b""
    except h11.LocalProtocolError:  # no body in an answer to HEAD
        pass
    await self.send(RawData(data=data))


async def _handshake_problem(self: WSStream, status_code: int) -> None:
    """``WSStream._send_error_response``: a refused handshake, as a problem. The stream is marked
    closed first, so that what the application sends meanwhile (its accept, racing a client's
    early frame) is dropped instead of coming between; then the application is told of the
    disconnect and the stream ends, which closes the connection (Hypercorn left it open)."""
    self.closed = True
    headers, body = _problem(status_code, HANDSHAKE_DETAILS.get(status_code))
    await self.send(Response(stream_id=self.stream_id, status_code=status_code, headers=headers))
    await self.send(Body(stream_id=self.stream_id, data=body))
    await self.send(EndBody(stream_id=self.stream_id))
    await self.config.log.access(self.scope, {"status": status_code, "headers": []},
                                 time.time() - self.start_time)
    if self.app_put is not None:
        await self.app_put({"type": "websocket.disconnect", "code": 1006})
    await self.send(StreamClosed(stream_id=self.stream_id))


REPLACED = ((H11Protocol, _parser_problem), (WSStream, _handshake_problem))


def answer_problems() -> None:
    """Make Hypercorn answer what never reaches the application as problem+json: replace its
    ``_send_error_response`` on each class of ``REPLACED`` with ours (see the module's
    docstring). Idempotent; raises ``RuntimeError`` if Hypercorn no longer has the method."""
    for owner, ours in REPLACED:
        replace_send_error_response(owner, ours)


def replace_send_error_response(owner: type, ours: Any) -> None:
    """``owner._send_error_response`` becomes ``ours``, unless it already is."""
    current = getattr(owner, "_send_error_response", None)
    if current is ours:
        return
    if not callable(current):
        raise RuntimeError(f"hypercorn's {owner.__name__}._send_error_response is gone: "
                           "see the docstring of actors/http/server.py")
    owner._send_error_response = ours  # type: ignore[attr-defined]
