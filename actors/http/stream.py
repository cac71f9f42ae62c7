"""The live stream: ``GET /api/v1/stream`` (websocket), the caller's events as JSON text frames.

Rules:
- Credentials are those of the API (``X-User-ID`` or ``?user_id=`` in header mode, a bearer token
  or ``?token=`` in jwt mode, an API key in the ``Authorization`` header in both; see
  ``actors.http.keys.identify``). They and ``?since=`` are checked before the upgrade: a bad
  one is answered with a plain HTTP problem (401, 403, 422; 503 when a key cannot be checked),
  never with a socket opened and then closed.
  A plain GET on the path is checked for credentials too (401) before it is told to upgrade.
- One text frame per event, ``{"type", "event_id", "message"}``, and only the caller's events.
  The events waiting for a stream when it wakes are sent in one pass (up to ``BATCH``), in
  order, one frame each: the frame format does not depend on how many were waiting.
  (Hypercorn's ASGI websocket send takes one message and writes it at once, so the frames of a
  pass are written one by one; a frame carrying several events would change the API.)
- Nothing missed, nothing twice: subscribe to the bus first, then replay the events after
  ``since`` from the database page by page, then forward live events, skipping those at or below
  the last replayed id (the bus may hold events the replay already read).
- Memory is bounded by one replay page plus the bus's per-subscriber buffer. A client too slow
  for that buffer is cut off by the bus; the stream then closes with 1013 and the id to resume
  from. Gateway shutdown closes every stream with 1001 at once rather than leaving it to the
  server's graceful timeout (which ends in 1006).
- A client disconnect cancels the handler, so the unsubscribe is in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING
from uuid import UUID

import trio
from pydantic import BaseModel
from quart import Response, request, websocket
from quart_schema import document_querystring, document_response

from actors.http.keys import identify
from kosmo.api import schemas
from kosmo.api.problems import Problem
from kosmo.db import DatabaseUnavailable
from kosmo.events import BadEventId, decode_event_id, encode_event_id, events_since

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from actors.events import Subscription
    from actors.http.services import Services
    from kosmo.config import Settings

log = logging.getLogger(__name__)

PATH = "/api/v1/stream"
PAGE = 200  # events per replay query
BATCH = 64  # live events sent in one pass of the forwarder, at most
CLOSE_TIMEOUT = 1.0  # a client that reads nothing must not hold the close or the cleanup
GOING_AWAY = 1001
TRY_AGAIN_LATER = 1013


class StreamQuery(BaseModel):
    since: str | None = None  # an event_id: first replay every event after it
    user_id: str | None = None  # header mode, instead of X-User-ID
    token: str | None = None  # jwt mode, instead of Authorization: Bearer


def register_stream(app: QuartTrio, settings: Settings, services: Services) -> None:
    """Add the websocket route to ``app`` (and a plain GET on it that documents it)."""

    @app.websocket(PATH)
    async def stream() -> Response | None:
        try:
            try:
                user = await identify(settings, services, websocket.headers, websocket.args)
            except DatabaseUnavailable:
                raise Problem(503, "service-unavailable",
                              "the database is unreachable; retry later",
                              headers={"Retry-After": "5"}) from None
            since = _since(websocket.args.get("since"))
            if services.shutdown.is_set():
                raise _going_away()
            try:
                subscription = await services.events.subscribe(user)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _going_away() from None
        except Problem as problem:
            return problem.to_response()
        try:
            await websocket.accept()
            code, reason = await _serve(services, _Forwarder(services, user, subscription, since))
            log.info("stream of user %s closed: %d %s", user, code, reason)
            with trio.move_on_after(CLOSE_TIMEOUT):
                await websocket.close(code, reason)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                try:
                    await services.events.unsubscribe(subscription)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the bus has stopped: nothing left to unregister from
        return None

    @app.get(PATH)
    @document_querystring(StreamQuery)
    @document_response(schemas.ProblemOut, 401)
    @document_response(schemas.ProblemOut, 403)
    @document_response(schemas.ProblemOut, 426)
    async def stream_without_upgrade() -> Response:
        """Live events of the caller (websocket only).

        Open a websocket on this path with the usual credentials (or `?user_id=` / `?token=`)
        and optionally `?since=<event_id>` to first receive every event after that one; bad
        credentials are answered 401 and a bad `since` 422, before the upgrade. Each text frame
        is `{"type": "message.created" | "message.status" | "message.inbound", "event_id": "...",
        "message": {...}}`. Close codes: 1001 when the gateway stops, 1013 when the client reads
        too slowly (the reason says the `since` to reconnect with). A request without a
        websocket upgrade is answered 401 without valid credentials, else 426.
        """
        await identify(settings, services, request.headers, request.args)
        return Problem(426, "bad-request", "this path serves a websocket: send an upgrade",
                       headers={"Upgrade": "websocket"}).to_response()


def _since(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return decode_event_id(raw)
    except BadEventId as exc:
        raise Problem(422, "invalid-fields", str(exc),
                      errors=[{"field": "since", "detail": str(exc)}]) from None


def _going_away() -> Problem:
    return Problem(503, "service-unavailable", "the gateway is shutting down",
                   headers={"Retry-After": "1"})


async def _serve(services: Services, forwarder: _Forwarder) -> tuple[int, str]:
    """Forward until the client is cut off or the gateway stops; return the close code."""
    close = (GOING_AWAY, "the gateway is shutting down")
    async with trio.open_nursery() as nursery:

        async def stop_on_shutdown() -> None:
            await services.shutdown.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_shutdown)
        nursery.start_soon(_discard_incoming)
        close = await forwarder.run()
        nursery.cancel_scope.cancel()
    return close


async def _discard_incoming() -> None:
    # The stream reads nothing, but unread frames would fill the framework's small queue and
    # then hide a disconnect from us.
    while True:
        await websocket.receive()


class _Forwarder:
    def __init__(self, services: Services, user: UUID, subscription: Subscription,
                 since: int | None) -> None:
        self._services = services
        self._user = user
        self._subscription = subscription
        self._since = since
        self._replayed = -1  # live events at or below this id were already sent (or precede since)
        self._last_sent = None if since is None else encode_event_id(since)

    async def run(self) -> tuple[int, str]:
        if self._since is not None:
            try:
                await self._replay(self._since)
            except DatabaseUnavailable as exc:
                log.warning("stream replay for user %s failed: %s", self._user, exc)
                return TRY_AGAIN_LATER, self._resume("database unavailable")
        events = self._subscription.events
        async for event in events:
            # Everything else already waiting goes out in this same pass, frame after frame,
            # without waking up for each: a client that fell behind catches up in one go.
            batch = [event]
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                while len(batch) < BATCH:
                    batch.append(events.receive_nowait())
            for waiting in batch:
                if self._subscription.overflowed:
                    break  # what is still buffered is left for the reconnect's replay
                if int(waiting.event_id) > self._replayed:
                    await self._send(waiting.to_json())
            if self._subscription.overflowed:
                break
        if self._subscription.overflowed:
            return TRY_AGAIN_LATER, self._resume("too slow")
        return GOING_AWAY, "the gateway is shutting down"  # the bus has stopped

    async def _replay(self, after: int) -> None:
        self._replayed = after
        while not self._subscription.overflowed:
            page = await self._services.db.run(events_since, self._user, self._replayed, PAGE)
            for event in page:
                await self._send(event.to_json())
                self._replayed = int(event.event_id)
            if len(page) < PAGE:
                return

    async def _send(self, event: dict[str, object]) -> None:
        await websocket.send(json.dumps(event))
        self._last_sent = str(event["event_id"])

    def _resume(self, why: str) -> str:
        if self._last_sent is None:
            return f"{why}: reconnect"
        return f"{why}: reconnect with ?since={self._last_sent}"
