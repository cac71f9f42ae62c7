"""Who is calling: ``X-User-ID`` in header mode (development), HS256 bearer JWTs otherwise.

Rules:
- The result is the caller's user id (a UUID) or ``Problem(401)``; the reason goes in the
  detail, never the token or the secret.
- JWTs: algorithm HS256 only (``alg: none`` and every other algorithm are refused); ``exp`` and
  ``sub`` are required; ``sub`` must be a UUID.
- Websockets cannot send headers from a browser, so the same credential is also read from the
  query string (``?user_id=`` / ``?token=``) where the caller allows it.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

import jwt

from kosmo.api.problems import Problem
from kosmo.domain import parse_uuid


class Lookup(Protocol):
    def get(self, key: str, /) -> str | None: ...


def unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(mode: str, secret: str | None, headers: Lookup,
                 query: Lookup | None = None) -> UUID:
    if mode == "header":
        raw = headers.get("X-User-ID") or (query.get("user_id") if query else None)
        if not raw:
            raise unauthorized("send the X-User-ID header")
        user = parse_uuid(raw.strip())
        if user is None:
            raise unauthorized("X-User-ID must be a UUID")
        return user
    authorization = headers.get("Authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        token = (query.get("token") if query else None) or ""
        if not token:
            raise unauthorized("send Authorization: Bearer <token>")
    try:
        claims = jwt.decode(token.strip(), secret or "", algorithms=["HS256"],
                            options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise unauthorized("the token has expired") from None
    except jwt.InvalidTokenError:
        raise unauthorized("the token is not valid") from None
    user = parse_uuid(claims.get("sub"))
    if user is None:
        raise unauthorized("the token's sub must be a user id (UUID)")
    return user
