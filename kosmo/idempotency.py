"""Idempotency-Key on sends (IETF httpapi idempotency-key draft, Stripe's behaviour): the rules
and their SQL. The HTTP side is ``actors.http.idempotency``; the ledger completes a claim.

Rules:
- A key is 1..255 printable ASCII characters (0x20..0x7E), taken as sent. It is scoped to its
  user: two users may use the same key.
- A request is identified by its fingerprint, SHA-256 over method, path and body bytes: the
  same key with another fingerprint is "reused" (422), whatever became of the first request.
- ``claim`` inserts the row (user, key) with a lease (``LEASE``) before the send; the primary
  key decides a race between requests and between gateway processes (the loser waits for the
  winner's claim to commit, then reads it). The loser gets the stored answer (a replay), "in
  flight" (409) while the lease holds, or "reused".
- Only a send that stored a message stores its answer (201): ``complete`` runs in the ledger's
  sends transaction, which first locks the rows still held by their claim's token (``hold``);
  a send whose claim was taken over is refused there, so one key makes at most one message and
  one debit. Every refusal (403, 429, 409, 503 mesh-congested or database unavailable) debits
  nothing and stores nothing: ``release`` deletes the claim so a retry is judged afresh and can
  succeed once the cause is gone (a Retry-After must be honoured, not replayed for a day).
- A lease left by a request that never finished (its process died, its client went away) runs
  out after ``LEASE``; the next request with the key then takes the row over.
- A row counts for ``RETENTION`` (24 h) from ``created_at``; an older row is absent to
  ``claim`` (taken over), and ``sweep`` deletes old rows in bounded batches.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import psycopg

from kosmo.domain import Quota
from kosmo.messages import NewMessage
from kosmo.views import MessageView

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY = 255
LEASE = timedelta(seconds=30)
RETENTION = timedelta(hours=24)


def key_problem(values: list[str]) -> str | None:
    """Why the ``Idempotency-Key`` field values are unacceptable, or None."""
    if len(values) > 1:
        return "send one Idempotency-Key header, not several"
    (key,) = values
    if not key:
        return "the Idempotency-Key is empty"
    if len(key) > MAX_KEY:
        return f"the Idempotency-Key is longer than {MAX_KEY} characters"
    if not all(" " <= c <= "~" for c in key):
        return "the Idempotency-Key must be printable ASCII"
    return None


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """The request's identity: method, path and body bytes (length-prefixed, unambiguous)."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode()):
        digest.update(b"%d:" % len(part) + part)
    digest.update(body)
    return digest.digest()


@dataclass(frozen=True)
class Claim:
    """A held lease on (user, key); ``token`` tells this holder from a later one."""

    user_id: UUID
    key: str
    token: UUID


@dataclass(frozen=True)
class Answer:
    """An answer as sent and as stored: status, extra headers, JSON body text."""

    status: int
    headers: dict[str, str]
    body: str


@dataclass(frozen=True)
class InFlight:
    until: datetime  # the lease's end


@dataclass(frozen=True)
class Reused:
    """The key belongs to a request with another fingerprint."""


def created_answer(message: NewMessage, quota: Quota) -> Answer:
    """The 201 of an accepted send: the message as accepted, with the quota after it."""
    out = MessageView.accepted(message).to_json()
    out["quota"] = quota.to_json()
    return Answer(201, {"Location": f"/api/v1/messages/{message.message_id}"}, json.dumps(out))


# Insert the claim; or take the row over when it is past its retention, or in flight with its
# lease run out (the request that held it stored nothing, or it would be answered). A row that
# stays is locked by the conflict until this transaction ends, so reading it next is stable.
_CLAIM = """
INSERT INTO idempotency_keys AS k (user_id, key, fingerprint, token, created_at, locked_until)
VALUES (%(user)s, %(key)s, %(fingerprint)s, %(token)s, %(now)s, %(until)s)
ON CONFLICT (user_id, key) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token, created_at = EXCLUDED.created_at,
    locked_until = EXCLUDED.locked_until, status = NULL, headers = NULL, body = NULL,
    message_id = NULL
WHERE k.created_at <= %(stale)s OR (k.status IS NULL AND k.locked_until <= %(now)s)
RETURNING token
"""

_READ = """
SELECT fingerprint, status, headers, body, locked_until FROM idempotency_keys
WHERE user_id = %s AND key = %s
"""


def claim(conn: psycopg.Connection, user_id: UUID, key: str, print_: bytes, now: datetime,
          lease: timedelta = LEASE) -> Claim | Answer | InFlight | Reused:
    """Claim (user, key) for a request with fingerprint ``print_``, or say why not."""
    token = uuid.uuid4()
    while True:
        row = conn.execute(_CLAIM, {
            "user": user_id, "key": key, "fingerprint": print_, "token": token, "now": now,
            "until": now + lease, "stale": now - RETENTION}).fetchone()
        if row is not None:
            return Claim(user_id, key, token)
        found = conn.execute(_READ, (user_id, key)).fetchone()
        if found is None:  # released between the two statements: try again
            continue
        stored_print, status, headers, body, until = found
        if bytes(stored_print) != print_:
            return Reused()
        if status is not None:
            return Answer(status, headers, body)
        return InFlight(until)


def release(conn: psycopg.Connection, held: Claim) -> None:
    """Forget a claim whose request stored nothing (still unanswered, still this holder's)."""
    conn.execute("DELETE FROM idempotency_keys WHERE user_id = %s AND key = %s AND token = %s"
                 " AND status IS NULL", (held.user_id, held.key, held.token))


def hold(conn: psycopg.Connection, claims: list[Claim]) -> set[Claim]:
    """Lock the rows of ``claims`` still held by their token and unanswered; return those.
    Locked in key order, so concurrent batches of several processes cannot deadlock."""
    if not claims:
        return set()
    rows = conn.execute(
        "SELECT user_id, key, token FROM idempotency_keys"
        " WHERE (user_id, key, token) IN (SELECT * FROM unnest(%s::uuid[], %s::text[],"
        " %s::uuid[])) AND status IS NULL ORDER BY user_id, key FOR UPDATE",
        ([c.user_id for c in claims], [c.key for c in claims], [c.token for c in claims])
    ).fetchall()
    return {Claim(*row) for row in rows}


def complete(conn: psycopg.Connection, done: list[tuple[Claim, Answer, UUID]]) -> None:
    """Store each held claim's answer and the message it created; its lease ends."""
    if not done:
        return
    conn.execute(
        "UPDATE idempotency_keys AS k SET status = x.s, headers = x.h::jsonb, body = x.b,"
        " message_id = x.m, locked_until = NULL"
        " FROM unnest(%s::uuid[], %s::text[], %s::uuid[], %s::smallint[], %s::text[],"
        " %s::text[], %s::uuid[]) AS x (u, k, t, s, h, b, m)"
        " WHERE k.user_id = x.u AND k.key = x.k AND k.token = x.t",
        ([c.user_id for c, _, _ in done], [c.key for c, _, _ in done],
         [c.token for c, _, _ in done], [a.status for _, a, _ in done],
         [json.dumps(a.headers) for _, a, _ in done], [a.body for _, a, _ in done],
         [m for _, _, m in done]))


def sweep(conn: psycopg.Connection, now: datetime, limit: int = 1000) -> int:
    """Delete up to ``limit`` rows past their retention; return how many."""
    return conn.execute(
        "DELETE FROM idempotency_keys WHERE (user_id, key) IN (SELECT user_id, key"
        " FROM idempotency_keys WHERE created_at <= %s LIMIT %s)",
        (now - RETENTION, limit)).rowcount
