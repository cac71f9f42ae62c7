"""The HTTP front as an actor: Hypercorn's trio server inside our nursery (no worker process).

Rules: ready (``started(binds)``) only once the socket is listening; it stops gracefully when
``shutdown`` is set, letting requests in progress finish within ``graceful_timeout`` seconds.

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
  parser itself (an empty ``431``, then close). It is twice the application's head limit, so a
  head just over that limit reaches the application and gets a problem+json answer.
- A websocket message over 4 KiB from a client closes its stream with 1009.
- After a complete response the server itself ends the request (``http.disconnect``) and then,
  in the same task, closes the connection (``Connection: close``) or restarts the idle timer.
  Quart-Trio cancels the request's tasks on that disconnect, which cancelled this work half
  way: a connection answered ``Connection: close`` stayed open (for ever, for a client sending
  a byte now and then), and a kept-alive one had no idle timer. ``_finish_responses`` withholds
  that disconnect from the application once its response is complete.
"""

from __future__ import annotations

import socket
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.run import worker_serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from kosmo.api.limits import MAX_HEAD_BYTES

HEAD_BACKSTOP = 2 * MAX_HEAD_BYTES


class HttpFront:
    def __init__(self, app: QuartTrio, bind: tuple[str, int], *, shutdown: trio.Event,
                 graceful_timeout: float = 5.0, idle_timeout: float = 30.0,
                 read_timeout: float = 30.0) -> None:
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
        # Streams are quiet for long stretches: ping them, so that a live client's pongs count
        # as reads for read_timeout and a dead one is noticed. Clients send nothing we read.
        self._config.websocket_ping_interval = min(10.0, read_timeout / 3)
        self._config.websocket_max_message_size = 4 * 1024

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                  ) -> None:
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
