"""A tiny Trio HTTP server for ``GET /metrics`` on an address of its own.

Rules:
- It runs as a task in its owner's nursery (the gateway's or the bridge's): no thread, no
  process. Each connection is one task; it reads one request head (at most ``MAX_HEAD`` bytes
  within ``READ_TIMEOUT`` seconds), answers it and closes the connection.
- ``GET /metrics`` (or ``HEAD``) first awaits ``refresh`` (gauges that need an await, such as
  a count read from a store), then answers the registry in the Prometheus text format.
  Anything else is a 404 (another path) or a 405 (another method).
- ``started(binds)`` only once the socket listens. Failing to bind brings the owner down loudly
  (an operator asked for this address). Cancellation stops it at once: scrapes are idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

MAX_HEAD = 8192
READ_TIMEOUT = 10.0


async def _nothing() -> None:
    pass


async def serve_metrics(registry: CollectorRegistry, bind: tuple[str, int], *,
                        refresh: Callable[[], Awaitable[None]] = _nothing,
                        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve ``registry`` on ``bind`` (port 0: any free port); ``started`` with the URLs."""
    host, port = bind
    listeners = await trio.open_tcp_listeners(port, host=host)
    binds = [_url(listener) for listener in listeners]
    log.info("metrics on %s", ", ".join(binds))

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await _answer(stream, registry, refresh)

    async with trio.open_nursery() as nursery:
        task_status.started(binds)
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


def _url(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry,
                  refresh: Callable[[], Awaitable[None]]) -> None:
    head = b""
    with trio.move_on_after(READ_TIMEOUT):
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            try:
                chunk = await stream.receive_some(MAX_HEAD)
            except trio.BrokenResourceError:
                return
            if not chunk:
                break
            head += chunk
    if b"\r\n\r\n" not in head:
        return  # too slow, too long or cut off: nothing to answer
    method, _, rest = head.split(b"\r\n", 1)[0].partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if path != b"/metrics":
        status, body, ctype = b"404 Not Found", b"not found; try /metrics\n", b"text/plain"
    elif method not in (b"GET", b"HEAD"):
        status, body, ctype = b"405 Method Not Allowed", b"GET only\n", b"text/plain"
    else:
        await refresh()
        status, body, ctype = b"200 OK", generate_latest(registry), CONTENT_TYPE_LATEST.encode()
    response = (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + (b"" if method == b"HEAD" else body))
    try:
        await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the scraper went away
