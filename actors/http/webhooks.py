"""Webhook routes: ``/api/v1/webhooks`` (create, list, delete) and each webhook's attempts.

Rules:
- Sanctuary only: checked in this order, the first failure answers: 401 credentials -> 403
  ``plan-not-entitled`` (the current plan has no API access) or ``subscription-inactive`` (it
  has, but the subscription lapsed) -> then the route's own checks.
- A create is then checked 415 content type -> 400 JSON -> 422 fields (the URL rules of
  ``kosmo.webhooks.check_url``: a URL with credentials is a 422 like any bad URL; the event
  types; at most ``MAX_PER_USER`` webhooks) -> 201 with the secret, which is never shown again.
- Another user's webhook is a 404 exactly like one that does not exist.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from quart import Response, request
from quart_schema import document_request, document_response
from quart_trio import QuartTrio

from actors.http.services import Services
from kosmo import webhook_store as store
from kosmo import webhooks
from kosmo.api import schemas
from kosmo.api.problems import Problem
from kosmo.clock import utcnow
from kosmo.config import Settings
from kosmo.domain import parse_uuid
from kosmo.ssrf import is_public

Caller = Callable[..., Any]


class WebhookIn(BaseModel):
    url: str = Field(max_length=webhooks.MAX_URL, examples=["https://example.org/kosmo-hooks"])
    events: list[str] = Field(min_length=1, examples=[["message.delivered",
                                                        "message.received"], ["*"]])


class WebhookOut(BaseModel):
    webhook_id: uuid.UUID
    url: str
    events: list[str]
    created_at: str
    status: Literal["active", "disabled"]  # disabled: the endpoint answered 410 Gone
    disabled_at: str | None


class WebhookCreated(WebhookOut):
    secret: str = Field(examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class AttemptOut(BaseModel):
    event_id: str
    type: str
    attempt: int
    status_code: int | None  # the endpoint's answer, or null with ``error``
    error: str | None
    at: str
    next_attempt_at: str | None
    outcome: Literal["delivered", "retrying", "given_up", "disabled"]


class AttemptList(BaseModel):
    deliveries: list[AttemptOut]


def register_webhooks(app: QuartTrio, settings: Settings, services: Services,
                      caller: Caller) -> None:
    async def entitled_caller() -> uuid.UUID:
        user: uuid.UUID = await caller()
        verdict = await services.db.run(store.entitlement, user, utcnow())
        if verdict is store.Entitlement.NOT_ENTITLED:
            raise Problem(403, verdict.value, "webhooks come with the sanctuary plan")
        if verdict is store.Entitlement.INACTIVE:
            raise Problem(403, verdict.value, "the account has no active subscription")
        return user

    @app.post("/api/v1/webhooks")
    @document_request(WebhookIn)
    @document_response(WebhookCreated, 201)
    @_problems(400, 401, 403, 415, 422, 503)
    async def create_webhook() -> Response:
        """Register a webhook (sanctuary plan).

        Every event of the listed types (or `["*"]`) is POSTed to `url`, signed with the
        returned `secret` (Standard Webhooks; see docs/webhooks.md). The secret is shown only
        in this answer."""
        body = await request.get_data(cache=False)
        user = await entitled_caller()
        if request.mimetype != "application/json":
            raise Problem(415, "unsupported-media-type",
                          f"Content-Type is {request.mimetype!r}" if request.mimetype
                          else "the Content-Type header is missing")
        try:
            fields = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise Problem(400, "invalid-json", "the body is not valid UTF-8 JSON") from None
        url, events = _validate(fields, settings.webhook_allow_private)
        secret = webhooks.new_secret()
        created = await services.db.run(store.create_webhook, uuid.uuid4(), user, url, events,
                                        secret, utcnow())
        if created is None:
            raise _invalid("", f"at most {store.MAX_PER_USER} webhooks per account")
        out = {**created.to_json(), "secret": secret}
        response = Response(json.dumps(out), status=201, mimetype="application/json")
        response.headers["Location"] = f"/api/v1/webhooks/{created.webhook_id}/deliveries"
        return response

    @app.get("/api/v1/webhooks")
    @document_response(WebhookList)
    @_problems(401, 403, 503)
    async def list_webhooks() -> dict[str, Any]:
        """The caller's webhooks (without their secrets)."""
        user = await entitled_caller()
        found = await services.db.run(store.list_webhooks, user)
        return {"webhooks": [hook.to_json() for hook in found]}

    @app.delete("/api/v1/webhooks/<webhook_id>")
    @document_response(schemas.ProblemOut, 404)
    @_problems(401, 403, 503)
    async def delete_webhook(webhook_id: str) -> Response:
        """Delete a webhook: nothing more is sent to it, owed deliveries included."""
        user = await entitled_caller()
        wanted = parse_uuid(webhook_id)
        if wanted is None or not await services.db.run(store.delete_webhook, user, wanted):
            raise Problem(404, "not-found", "no such webhook")
        return Response(b"", status=204)

    @app.get("/api/v1/webhooks/<webhook_id>/deliveries")
    @document_response(AttemptList)
    @_problems(401, 403, 404, 503)
    async def list_deliveries(webhook_id: str) -> dict[str, Any]:
        """The webhook's latest delivery attempts (at most 100), newest first.

        Each: the event, the attempt's number, the endpoint's `status_code` or the `error`,
        when, the `outcome` (`delivered`, `retrying` with `next_attempt_at`, `given_up` after
        the last retry, `disabled` by a 410)."""
        user = await entitled_caller()
        wanted = parse_uuid(webhook_id)
        found = (await services.db.run(store.list_attempts, user, wanted)
                 if wanted is not None else None)
        if found is None:
            raise Problem(404, "not-found", "no such webhook")
        return {"deliveries": found}


def _problems(*statuses: int) -> Callable[[Any], Any]:
    def decorate(func: Any) -> Any:
        for status in statuses:
            func = document_response(schemas.ProblemOut, status)(func)
        return func
    return decorate


def _invalid(field: str, detail: str) -> Problem:
    return Problem(422, "invalid-fields", f"{field} {detail}".strip(),
                   errors=[{"field": field, "detail": detail}])


def _validate(fields: Any, allow_private: bool) -> tuple[str, list[str]]:
    if not isinstance(fields, dict):
        raise _invalid("", "the body must be a JSON object")
    errors = []
    url = ""
    try:
        url = webhooks.check_url(fields.get("url"), allow_private)
        if not allow_private:
            _check_literal_host(url)
    except ValueError as exc:
        errors.append({"field": "url", "detail": str(exc)})
    events: list[str] = []
    try:
        events = webhooks.check_events(fields.get("events"))
    except ValueError as exc:
        errors.append({"field": "events", "detail": str(exc)})
    if errors:
        raise Problem(422, "invalid-fields", "; ".join(f"{e['field']} {e['detail']}"
                                                      for e in errors), errors=errors)
    return url, events


def _check_literal_host(url: str) -> None:
    """An address written in the URL is refused at once when it is not public (a name is
    checked at each connection, see ``kosmo.ssrf``)."""
    host = urlsplit(url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            raise ValueError("must not point at this machine") from None
        return
    if not is_public(address):
        raise ValueError("must not point at a loopback, private or reserved address")
