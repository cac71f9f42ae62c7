"""Limits on the request head, checked before anything else (HTTP requests and stream handshakes).

Rules:
- A head (request line and header fields, counted as sent) over ``MAX_HEAD_BYTES``, or with more
  than ``MAX_HEADERS`` fields, is answered ``431`` problem+json and the connection is closed.
- This is the limit clients see. The HTTP parser below (Hypercorn's h11) only stops a head that
  is still incomplete past twice this size (``actors.http.HEAD_BACKSTOP``); a complete head
  that arrives in one read passes the parser whatever its size, so without this check the
  parser's limit would depend on how the client's bytes were split into packets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quart import request, websocket

from kosmo.api.problems import Problem

if TYPE_CHECKING:
    from quart_trio import QuartTrio

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100


def head_problem(scope: Mapping[str, Any]) -> Problem | None:
    """The 431 for an ASGI scope whose head is over a limit, else None."""
    headers = scope.get("headers", [])
    if len(headers) > MAX_HEADERS:
        return _too_large(f"at most {MAX_HEADERS} header fields")
    query = scope.get("query_string", b"")
    size = (len(scope.get("method", "GET")) + 1 + len(scope.get("raw_path") or b"")
            + (1 + len(query) if query else 0) + len(" HTTP/1.1\r\n")
            + sum(len(name) + len(value) + 4 for name, value in headers) + 2)
    if size > MAX_HEAD_BYTES:
        return _too_large(f"the request line and headers are limited to {MAX_HEAD_BYTES} bytes")
    return None


def _too_large(detail: str) -> Problem:
    return Problem(431, "headers-too-large", detail, headers={"Connection": "close"})


def register_limits(app: QuartTrio) -> None:
    @app.before_request
    async def check_request_head() -> None:
        if (problem := head_problem(request.scope)) is not None:
            raise problem

    @app.before_websocket
    async def check_handshake_head() -> None:
        if (problem := head_problem(websocket.scope)) is not None:
            raise problem
