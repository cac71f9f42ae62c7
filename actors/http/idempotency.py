"""Idempotency-Key on ``POST /api/v1/messages``: the HTTP side of ``kosmo.idempotency``.

Rules:
- ``request_key`` reads the header: absent -> None (the send runs as without it); empty, longer
  than 255 characters, not printable ASCII, or sent more than once -> 400
  ``invalid-idempotency-key``. It is judged after the credentials (a key is the user's).
- ``idempotent`` runs a send at most once per (user, key, request): it claims the key (one
  short transaction), then answers from the stored answer (same status, headers and body, plus
  ``Idempotent-Replayed: true``), 409 ``idempotency-key-in-flight`` (with ``Retry-After``, the
  lease's rest), 422 ``idempotency-key-reused``, or runs the send with the claim. The send
  passes the claim to the ledger, which stores the 201 with the message.
- A send that raises (every refusal is a Problem; a database outage) releases its claim, so a
  retry is judged afresh. A send cancelled (the client went away, the gateway stops) leaves
  its lease to run out (``kosmo.idempotency.LEASE``): whether it committed is known only to
  the database, and the claim says so either way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from uuid import UUID

from quart import Response, request

from kosmo import idempotency
from kosmo.api.problems import Problem
from kosmo.clock import utcnow
from kosmo.db import Database, DatabaseUnavailable
from kosmo.idempotency import Answer, Claim, InFlight, Reused

log = logging.getLogger(__name__)


def request_key() -> str | None:
    """The request's Idempotency-Key, None without one, or Problem(400)."""
    values = request.headers.getlist(idempotency.HEADER)
    if not values:
        return None
    why = idempotency.key_problem(values)
    if why is not None:
        raise Problem(400, "invalid-idempotency-key", why)
    return values[0]


def answer_response(answer: Answer, *, replayed: bool = False) -> Response:
    response = Response(answer.body, status=answer.status, mimetype="application/json")
    response.headers.update(answer.headers)
    if replayed:
        response.headers[idempotency.REPLAYED] = "true"
    return response


async def idempotent(db: Database, user: UUID, key: str | None, body: str | bytes,
                     send: Callable[[Claim | None], Awaitable[Response]]) -> Response:
    """``send(claim)`` once for this user, key and request; see the module's rules."""
    if key is None:
        return await send(None)
    print_ = idempotency.fingerprint(request.method, request.path,
                                     body.encode() if isinstance(body, str) else body)
    outcome = await db.run(idempotency.claim, user, key, print_, utcnow())
    if isinstance(outcome, Answer):
        log.info("idempotency key of user %s replayed (%d)", user, outcome.status)
        return answer_response(outcome, replayed=True)
    if isinstance(outcome, Reused):
        raise Problem(422, "idempotency-key-reused",
                      "this Idempotency-Key was used with another request (method, path or"
                      " body)")
    if isinstance(outcome, InFlight):
        rest = max(1, math.ceil((outcome.until - utcnow()).total_seconds()))
        raise Problem(409, "idempotency-key-in-flight",
                      "a request with this Idempotency-Key is still being processed",
                      headers={"Retry-After": str(rest)})
    try:
        return await send(outcome)
    except Exception:
        try:
            await db.run(idempotency.release, outcome)
        except DatabaseUnavailable as exc:  # the lease runs out by itself
            log.warning("idempotency key of user %s not released: %s", user, exc)
        raise
