"""The caller's account and API keys: ``GET /api/v1/me`` and ``/api/v1/api-keys``; and how a
request carrying an API key is authenticated (``identify``).

Rules:
- ``identify`` is the one place a request's caller is decided, for the HTTP routes and the
  stream's handshake alike: an ``Authorization: Bearer kosmo_sk_...`` credential is an API key,
  in both auth modes, checked against the database on every request (no cache, so a revoke
  holds at once in every process); any other credential goes to ``kosmo.api.auth``. A key wins
  over ``X-User-ID`` in header mode. An unknown or revoked key is 401; a key whose user's plan
  no longer includes API access is 403 ``plan-not-entitled``.
- ``GET /api/v1/me`` answers 200 for every signed-in user (``kosmo.account``).
- Creating a key: 401 -> 415 -> 400 -> 422 ``name`` -> 403 ``plan-not-entitled`` (the plan has
  no API access) -> 403 ``subscription-inactive`` (an API plan, lapsed) -> 201 with the secret,
  shown this once. Listing and revoking are open to every signed-in user (only their own keys):
  a user whose plan changed can still see and revoke old keys. Another user's key, an unknown
  one and a malformed id are the same 404.
- The secret is never logged; logs name the key by its id.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from quart import Response, request
from quart_schema import document_request, document_response

from kosmo import account, api_key_store
from kosmo.api import schemas
from kosmo.api.api_keys import key_in
from kosmo.api.auth import Lookup, authenticate, unauthorized
from kosmo.api.problems import Problem
from kosmo.clock import utcnow
from kosmo.domain import parse_uuid

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from actors.http.services import Services
    from kosmo.config import Settings

log = logging.getLogger(__name__)

MAX_NAME = 100


async def identify(settings: Settings, services: Services, headers: Lookup,
                   query: Lookup | None = None) -> UUID:
    """The caller of a request, or Problem(401/403); DatabaseUnavailable for a key while the
    database is away."""
    secret = key_in(headers)
    if secret is None:
        return authenticate(settings.auth_mode, settings.jwt_secret, headers, query)
    owner = await services.db.run(api_key_store.owner_of, secret, utcnow())
    if owner is None:
        raise unauthorized("the API key is not valid")
    if not owner.entitled:
        raise Problem(403, "plan-not-entitled", "the account's plan does not include API keys")
    return owner.user_id


def register_keys(app: QuartTrio, settings: Settings, services: Services,
                  caller: Callable[[], Awaitable[UUID]]) -> None:
    """Add ``/api/v1/me`` and the API key routes to ``app``."""
    from actors.http.app import problems  # the app module imports this one first

    @app.get("/api/v1/me")
    @document_response(schemas.Me)
    @problems(401, 403, 503)
    async def get_me() -> Response:
        """The caller's plan, scope, whitelist, subscription and quota.

        200 for every signed-in user, a lapsed subscription included."""
        user = await caller()
        return _json(await services.db.run(account.me, user, utcnow()))

    @app.post("/api/v1/api-keys")
    @document_request(schemas.NewApiKey)
    @document_response(schemas.ApiKeyCreated, 201)
    @problems(400, 401, 403, 413, 415, 422, 503)
    async def create_key() -> Response:
        """Create an API key (plans with API access: sanctuary).

        The answer holds the secret, shown this once; the gateway keeps only its hash."""
        body = await request.get_data(cache=False)
        user = await caller()
        name = _name(_json_body(body))
        result = await services.db.run(api_key_store.create_key, user, name, utcnow())
        if isinstance(result, api_key_store.KeyRefusal):
            raise Problem(403, result.value, _REFUSALS[result])
        log.info("API key %s created (user %s)", result.key_id, user)
        response = _json(result.to_json(), 201)
        response.headers["Location"] = f"/api/v1/api-keys/{result.key_id}"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/api/v1/api-keys")
    @document_response(schemas.ApiKeyList)
    @problems(401, 403, 503)
    async def list_keys() -> Response:
        """The caller's API keys, oldest first, without their secrets."""
        user = await caller()
        return _json({"api_keys": await services.db.run(api_key_store.list_keys, user)})

    @app.delete("/api/v1/api-keys/<key_id>")
    @problems(401, 403, 404, 503)
    async def revoke_key(key_id: str) -> Response:
        """Revoke an API key: from this answer on, it is refused (401) by every gateway."""
        user = await caller()
        wanted = parse_uuid(key_id)
        if wanted is None or not await services.db.run(api_key_store.revoke_key, user, wanted):
            raise Problem(404, "not-found", "no such API key")
        log.info("API key %s revoked (user %s)", wanted, user)
        return Response(b"", status=204)


_REFUSALS = {
    api_key_store.KeyRefusal.PLAN_NOT_ENTITLED:
        "API keys come with a plan that includes API access (sanctuary)",
    api_key_store.KeyRefusal.SUBSCRIPTION_INACTIVE:
        "the account has no active subscription",
}


def _json(body: dict[str, Any], status: int = 200) -> Response:
    """A JSON answer with its members in the documented order."""
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _json_body(body: str | bytes) -> Any:
    if request.mimetype != "application/json":
        raise Problem(415, "unsupported-media-type",
                      f"Content-Type is {request.mimetype!r}" if request.mimetype
                      else "the Content-Type header is missing")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Problem(400, "invalid-json", "the body is not valid UTF-8 JSON") from None


def _name(fields: Any) -> str:
    if not isinstance(fields, dict):
        raise Problem(422, "invalid-fields", "the body must be a JSON object",
                      errors=[{"field": "", "detail": "must be an object"}])
    name = fields.get("name")
    why = None
    if not isinstance(name, str):
        why = "must be a string"
    elif not 1 <= len(name) <= MAX_NAME:
        why = f"must be 1 to {MAX_NAME} characters"
    elif any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        why = "must not contain control characters"
    if why is not None:
        raise Problem(422, "invalid-fields", f"name {why}",
                      errors=[{"field": "name", "detail": why}])
    return name  # type: ignore[return-value]
