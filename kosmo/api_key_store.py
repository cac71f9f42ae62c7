"""The SQL of API keys: create, list, revoke, and find the user a secret belongs to.

Rules:
- Only the plan decides who may hold keys: a plan with ``api_access`` (``sanctuary``). The plan
  is that of the user's current subscription, chosen as the ledger chooses it (the active one if
  any, else the one that ended last).
- Creating a key needs that plan and an active subscription; listing and revoking need neither,
  so a user whose plan changed can still see and revoke the keys they made.
- A key authenticates while its row exists and its user's current plan has ``api_access``,
  whether the subscription is active or lapsed (sends are then refused by the ledger, as for the
  user signed in any other way). Every check reads the database, so a revoke (the row deleted)
  or a plan change holds at once in every gateway process; the lookup is one indexed query.
- ``last_used_at`` is written at most once a minute per key: the lookup reads it and writes only
  when it is older, with a condition that lets one of several racing processes write.
- Another user's key is "not found", like a key that does not exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg

from kosmo.api.api_keys import hash_of, matches, new_secret, prefix_of
from kosmo.clock import iso

TOUCH_EVERY = timedelta(minutes=1)

# The user's current subscription and its plan's API access: (api_access, active).
_CURRENT_PLAN = """
SELECT p.api_access,
       s.status IN ('active', 'trialing') AND s.current_period_start <= %(now)s
           AND %(now)s < s.current_period_end AS active
FROM subscriptions s JOIN plans p ON p.code = s.plan_code
WHERE s.user_id = %(user)s
ORDER BY 2 DESC, s.current_period_end DESC
LIMIT 1
"""

_LOOKUP = """
SELECT k.id, k.user_id, k.secret_hash, k.last_used_at,
       COALESCE((SELECT p.api_access
                 FROM subscriptions s JOIN plans p ON p.code = s.plan_code
                 WHERE s.user_id = k.user_id
                 ORDER BY s.status IN ('active', 'trialing') AND s.current_period_start <= %(now)s
                          AND %(now)s < s.current_period_end DESC, s.current_period_end DESC
                 LIMIT 1), false)
FROM api_keys k
WHERE k.prefix = %(prefix)s
"""


class KeyRefusal(enum.StrEnum):
    """Why no key was created; each value is the last segment of a problem type URI."""

    PLAN_NOT_ENTITLED = "plan-not-entitled"
    SUBSCRIPTION_INACTIVE = "subscription-inactive"


@dataclass(frozen=True)
class KeyOwner:
    """Whom a presented secret names. ``entitled`` is false when the user's plan no longer
    includes API access."""

    key_id: UUID
    user_id: UUID
    entitled: bool


@dataclass(frozen=True)
class CreatedKey:
    key_id: UUID
    name: str
    prefix: str
    created_at: datetime
    secret: str  # returned once, never stored

    def to_json(self) -> dict[str, Any]:
        return {"key_id": str(self.key_id), "name": self.name, "prefix": self.prefix,
                "created_at": iso(self.created_at), "secret": self.secret}


def create_key(conn: psycopg.Connection[Any], user_id: UUID, name: str,
               now: datetime) -> CreatedKey | KeyRefusal:
    plan = conn.execute(_CURRENT_PLAN, {"user": user_id, "now": now}).fetchone()
    if plan is None or not plan[0]:
        return KeyRefusal.PLAN_NOT_ENTITLED
    if not plan[1]:
        return KeyRefusal.SUBSCRIPTION_INACTIVE
    secret = new_secret()
    key = CreatedKey(uuid4(), name, prefix_of(secret), now, secret)
    conn.execute("INSERT INTO api_keys (id, user_id, name, prefix, secret_hash, created_at)"
                 " VALUES (%s, %s, %s, %s, %s, %s)",
                 (key.key_id, user_id, name, key.prefix, hash_of(secret), now))
    return key


def list_keys(conn: psycopg.Connection[Any], user_id: UUID) -> list[dict[str, Any]]:
    """The user's keys, oldest first, without secrets or hashes."""
    rows = conn.execute("SELECT id, name, prefix, created_at, last_used_at FROM api_keys"
                        " WHERE user_id = %s ORDER BY created_at, id", (user_id,)).fetchall()
    return [{"key_id": str(r[0]), "name": r[1], "prefix": r[2], "created_at": iso(r[3]),
             "last_used_at": iso(r[4]) if r[4] else None} for r in rows]


def revoke_key(conn: psycopg.Connection[Any], user_id: UUID, key_id: UUID) -> bool:
    """Delete the user's key; False when the user has no such key."""
    return conn.execute("DELETE FROM api_keys WHERE id = %s AND user_id = %s",
                        (key_id, user_id)).rowcount == 1


def owner_of(conn: psycopg.Connection[Any], secret: str, now: datetime) -> KeyOwner | None:
    """The owner of the key with this secret, or None when there is no such key (unknown or
    revoked). Notes the use, at most once a minute per key."""
    rows = conn.execute(_LOOKUP, {"prefix": prefix_of(secret), "now": now}).fetchall()
    for key_id, user_id, stored, last_used, entitled in rows:
        if not matches(secret, bytes(stored)):
            continue
        if last_used is None or now - last_used >= TOUCH_EVERY:
            conn.execute("UPDATE api_keys SET last_used_at = %(now)s WHERE id = %(id)s AND"
                         " (last_used_at IS NULL OR last_used_at <= %(before)s)",
                         {"now": now, "id": key_id, "before": now - TOUCH_EVERY})
        return KeyOwner(key_id, user_id, bool(entitled))
    return None
