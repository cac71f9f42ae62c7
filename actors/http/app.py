"""The HTTP API (Quart on quart-trio). Handlers only translate: HTTP in, actor request, HTTP out.

Rules:
- Sends and cancels go to the quota ledger actor; reads go to the database through
  ``kosmo.reads``.
- A send is checked in this order, and the first failure answers: 431 head too large
  (``kosmo.api.limits``) -> 413 body too large (from the bytes actually read) -> 408 body too
  slow -> 401 credentials -> 400 Idempotency-Key -> 415 content type -> 400 JSON -> 422 fields
  -> the Idempotency-Key's replay, 422 reused or 409 in flight (``actors.http.idempotency``)
  -> 503 mesh congested (the dispatcher's admission, ``Services.admit``, asked before the
  ledger) -> 403 plan -> 429 quota. A refused request never debits the quota.
- A cancel (``DELETE`` of a message) has the rules of reading it: 401 credentials -> 404 for a
  malformed id, an unknown message or another user's (the same answer) -> 409 when it no
  longer waits (handed to a bridge, or finished) -> 200 with the canceled message.
- Every error is RFC 9457 problem+json (``kosmo.api.problems``). No input yields a 500: an
  unexpected exception is logged and answered as a problem, and a database outage is a 503 with
  ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

from quart import Response, has_request_context, has_websocket_context, request
from quart_schema import (
    QuartSchema,
    document_headers,
    document_querystring,
    document_request,
    document_response,
    security_scheme,
)
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors.http.console import register_console
from actors.http.idempotency import answer_response, idempotent, request_key
from actors.http.keys import identify, register_keys
from actors.http.services import Services
from actors.http.stream import register_stream
from actors.http.webhooks import register_webhooks
from kosmo import reads
from kosmo.api import schemas
from kosmo.api.limits import register_limits
from kosmo.api.problems import TITLES, Problem, for_status
from kosmo.clock import utcnow
from kosmo.config import Settings
from kosmo.db import DatabaseUnavailable
from kosmo.domain import Refusal, parse_node_id, parse_uuid, text_problem
from kosmo.idempotency import Claim, created_answer
from kosmo.ledger_store import Accepted, Canceled, CancelRefusal, Refused

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
MAX_BODY = 16 * 1024
RETRY_AFTER_DB = "5"


def create_app(settings: Settings, services: Services) -> QuartTrio:
    app = QuartTrio("kosmo", static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, BODY_TIMEOUT=settings.http_body_timeout,
                      JSON_SORT_KEYS=False)
    register_limits(app)
    scheme: dict[str, Any] = ({"bearer": {"type": "http", "scheme": "bearer",
                                          "bearer_format": "JWT"}}
              if settings.auth_mode == "jwt" else
              {"user_id": {"type": "apiKey", "in_": "header", "name": "X-User-ID"}})
    scheme["api_key"] = {"type": "http", "scheme": "bearer", "bearer_format": "kosmo_sk_..."}
    QuartSchema(app, openapi_path="/openapi.json", redoc_ui_path=None, scalar_ui_path=None,
                swagger_ui_path=None, info={"title": "KosmoConnect Gateway", "version": "1"},
                security_schemes=scheme, security=[{name: []} for name in scheme])

    async def caller(query: bool = False) -> UUID:
        """The signed-in user of this request (an API key counts), or Problem(401/403)."""
        return await identify(settings, services, request.headers,
                              request.args if query else None)

    async def db_call(fn: Callable[..., Any], *args: Any) -> Any:
        return await services.db.run(fn, *args)

    @app.after_request
    async def close_after_unread_body(response: Response) -> Response:
        # An error can be answered before the request body was read (405 from routing, 413
        # part-way). Such a connection cannot carry another request reliably, so close it.
        if response.status_code >= 400 and (request.content_length
                                            or "chunked" in request.headers.get(
                                                "Transfer-Encoding", "")):
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Problem)
    async def on_problem(problem: Problem) -> Response:
        return problem.to_response()

    @app.errorhandler(HTTPException)
    async def on_http(error: HTTPException) -> Response:
        response = for_status(error.code or 400, _http_detail(error)).to_response()
        for name in ("Allow", "Retry-After"):  # keep what the framework said about retrying
            if (value := error.get_response().headers.get(name)) is not None:
                response.headers[name] = value
        return response

    @app.errorhandler(DatabaseUnavailable)
    async def on_db_down(error: DatabaseUnavailable) -> Response:
        log.warning("database unavailable: %s", error)
        return Problem(503, "service-unavailable", "the database is unreachable; retry later",
                       headers={"Retry-After": RETRY_AFTER_DB}).to_response()

    @app.errorhandler(Exception)
    async def on_error(error: Exception) -> Response:
        where = (f"{request.method} {request.path}" if has_request_context()
                 else "a websocket" if has_websocket_context() else "the app")
        log.error("unhandled error on %s", where, exc_info=error)
        return Problem(500, "internal-error").to_response()

    @app.post("/api/v1/messages")
    @document_request(schemas.SendMessage)
    @document_response(schemas.MessageCreated, 201)
    @document_headers(schemas.SendHeaders)
    @problems(400, 401, 403, 409, 413, 415, 422, 429, 503)
    async def send_message() -> Response:
        """Send a message to a mesh node.

        Debits one message and stores it; it waits for its radio's turn. The answer says where
        it stands in that radio's queue. A message the mesh cannot carry before it expires is
        refused (503 mesh-congested) before any debit. With an ``Idempotency-Key``, a retry of
        the same request within 24 h gets the first answer again (``Idempotent-Replayed:
        true``) and sends nothing."""
        started = time.perf_counter()
        body = await request.get_data(cache=False)
        user = await caller()
        key = request_key()
        if request.mimetype != "application/json":
            raise Problem(415, "unsupported-media-type",
                          f"Content-Type is {request.mimetype!r}" if request.mimetype
                          else "the Content-Type header is missing")
        fields = _parse_json(body)
        node_id, text = _validate_send(fields, settings.max_text_bytes)

        async def send(claim: Claim | None) -> Response:
            admission = await services.admit(user, node_id, text)
            if admission.retry_after is not None:
                services.metrics.rejected.labels(Refusal.MESH_CONGESTED.value).inc()
                raise _refusal_problem(Refused(Refusal.MESH_CONGESTED,
                                               retry_after=admission.retry_after))
            result = await services.ledger.send(
                user, node_id, text, queue_position=admission.queue_position,
                estimated_transmit_at=admission.estimated_transmit_at, idempotency=claim)
            if not isinstance(result, Accepted):
                raise _refusal_problem(result)
            message = result.message
            services.metrics.accept_seconds.observe(time.perf_counter() - started)
            log.info("message %s accepted for node %s (user %s)", message.message_id, node_id,
                     user, extra={"message_id": str(message.message_id), "node_id": node_id})
            return answer_response(created_answer(message, result.quota))

        return await idempotent(services.db, user, key, body, send)

    @app.get("/api/v1/messages/conversations")
    @document_querystring(schemas.Page)
    @document_response(schemas.ConversationList)
    @problems(401, 422, 503)
    async def list_conversations() -> dict[str, Any]:
        user = await caller()
        limit, cursor = _page()
        return await _reads(db_call, reads.conversations, user, limit, cursor)  # type: ignore[no-any-return]

    @app.get("/api/v1/messages/conversations/<node_id>")
    @document_querystring(schemas.Page)
    @document_response(schemas.ConversationMessages)
    @problems(401, 404, 422, 503)
    async def get_conversation(node_id: str) -> dict[str, Any]:
        user = await caller()
        node = parse_node_id(node_id)
        if node is None:
            raise Problem(404, "not-found", "no such node id")
        limit, cursor = _page()
        return await _reads(db_call, reads.conversation, user, node, limit, cursor)  # type: ignore[no-any-return]

    @app.get("/api/v1/messages/<message_id>")
    @document_response(schemas.MessageDetail)
    @problems(401, 404, 503)
    async def get_message(message_id: str) -> dict[str, Any]:
        user = await caller()
        wanted = parse_uuid(message_id)
        found = await db_call(reads.message, user, wanted) if wanted else None
        if found is None:
            raise Problem(404, "not-found", "no such message")
        return found  # type: ignore[no-any-return]

    @app.delete("/api/v1/messages/<message_id>")
    @document_response(schemas.MessageOut)
    @problems(401, 404, 409, 503)
    async def cancel_message(message_id: str) -> dict[str, Any]:
        """Cancel a message that still waits.

        A message not yet handed to a bridge ends canceled and is refunded; once a bridge has
        it, or it has ended, the answer is 409 already-on-air."""
        user = await caller()
        wanted = parse_uuid(message_id)
        result = await services.ledger.cancel(user, wanted) if wanted else None
        if isinstance(result, Canceled):
            log.info("message %s canceled (user %s)", wanted, user)
            return result.message.to_json()
        if result is CancelRefusal.ALREADY_ON_AIR:
            raise Problem(409, result.value,
                          "the message was already handed to a bridge, or has ended")
        raise Problem(404, "not-found", "no such message")

    @app.get("/problems/<slug>")
    @security_scheme([])
    async def problem_type(slug: str) -> dict[str, Any]:
        """Each problem ``type`` URI resolves to a short description of that cause."""
        if slug not in TITLES:
            raise Problem(404, "not-found", "no such problem type")
        return {"type": f"/problems/{slug}", "title": TITLES[slug]}

    @app.get("/healthz")
    @document_response(schemas.Health)
    @security_scheme([])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "bridges": await services.bridges()}

    @app.get("/readyz")
    @document_response(schemas.Health)
    @security_scheme([])
    async def readyz() -> Response:
        checks = {"database": "ok", "broker": "ok" if services.broker_connected() else "down"}
        try:
            await db_call(reads.ping)
        except DatabaseUnavailable:
            checks["database"] = "down"
        ready = all(v == "ok" for v in checks.values())
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return Response(json.dumps(body), status=200 if ready else 503,
                        mimetype="application/json")

    register_console(app, settings)
    register_stream(app, settings, services)
    register_keys(app, settings, services, caller)
    register_webhooks(app, settings, services, caller)
    return app


def problems(*statuses: int) -> Callable[[F], F]:
    """Declare the problem+json answers of a route in the OpenAPI document."""
    def decorate(func: F) -> F:
        for status in statuses:
            func = document_response(schemas.ProblemOut, status)(func)
        return func
    return decorate


def _http_detail(error: HTTPException) -> str | None:
    if error.code == 413:
        return f"the body is limited to {MAX_BODY} bytes"
    if error.code == 405:
        return f"{request.method} is not allowed here"
    return None


def _parse_json(body: str | bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Problem(400, "invalid-json", "the body is not valid UTF-8 JSON") from None


def _validate_send(fields: Any, max_bytes: int) -> tuple[str, str]:
    if not isinstance(fields, dict):
        raise Problem(422, "invalid-fields", "the body must be a JSON object",
                      errors=[{"field": "", "detail": "must be an object"}])
    errors = []
    node_id = parse_node_id(fields.get("target_node_id"))
    if node_id is None:
        errors.append({"field": "target_node_id",
                       "detail": "must be a node id: ! followed by 8 hex digits"})
    text = fields.get("text")
    if not isinstance(text, str):
        errors.append({"field": "text", "detail": "must be a string"})
    elif (why := text_problem(text, max_bytes)) is not None:
        errors.append({"field": "text", "detail": why})
    if errors:
        raise Problem(422, "invalid-fields", "; ".join(f"{e['field']} {e['detail']}"
                                                      for e in errors), errors=errors)
    return node_id, text  # type: ignore[return-value]


def _refusal_problem(refused: Refused) -> Problem:
    refusal, quota = refused.refusal, refused.quota
    if refusal is Refusal.QUOTA_EXCEEDED and quota is not None:
        seconds = max(1, int((quota.resets_at - utcnow()).total_seconds()) + 1)
        return Problem(429, refusal.value, f"the quota resets at {quota.to_json()['resets_at']}",
                       headers={"Retry-After": str(seconds)}, quota=quota.to_json())
    if refusal is Refusal.IDEMPOTENCY_KEY_IN_FLIGHT:
        return Problem(409, refusal.value,
                       "another request with this Idempotency-Key took it over")
    if refusal is Refusal.MESH_CONGESTED:
        seconds = _whole_seconds(refused.retry_after)
        return Problem(503, refusal.value,
                       "the radios that reach this node could not send it before it expires;"
                       f" retry in {seconds} s", headers={"Retry-After": str(seconds)})
    details = {
        Refusal.SUBSCRIPTION_INACTIVE: "the account has no active subscription",
        Refusal.RECEIVE_ONLY: "the plan can receive replies but not send messages",
        Refusal.NODE_NOT_WHITELISTED: "this node is not on the plan's whitelist",
    }
    return Problem(403, refusal.value, details[refusal])


def _whole_seconds(seconds: float | None) -> int:
    """A Retry-After value: whole seconds, rounded up, at least 1."""
    if seconds is None or not math.isfinite(seconds):
        return 1
    return max(1, math.ceil(seconds))


def _page() -> tuple[int, str | None]:
    raw = request.args.get("limit")
    limit = reads.DEFAULT_LIMIT
    if raw is not None:
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= reads.MAX_LIMIT:
            raise Problem(422, "invalid-fields", f"limit must be 1..{reads.MAX_LIMIT}",
                          errors=[{"field": "limit", "detail": f"must be 1..{reads.MAX_LIMIT}"}])
        limit = int(raw)
    return limit, request.args.get("cursor") or None


async def _reads(call: Callable[..., Awaitable[Any]], fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await call(fn, *args)
    except reads.BadCursor as exc:
        raise Problem(422, "invalid-fields", str(exc),
                      errors=[{"field": "cursor", "detail": str(exc)}]) from None
