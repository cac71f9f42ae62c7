"""What ``GET /api/v1/me`` shows: the caller's plan, scope, whitelist, subscription and quota.

Rules:
- The subscription shown is the user's current one, chosen as the ledger chooses it: the
  active one if any, else the one that ended last. A lapsed subscription is shown as it is
  (its status and period); whether a send is allowed follows from it.
- ``scope`` is the plan's: ``any``, ``whitelist``, or ``receive_only`` (a plan that cannot send:
  scope ``none``, or a quota limit of 0), as the ledger's refusals say.
- ``whitelist`` lists the user's nodes on a whitelist plan, and is empty on any other.
- ``quota`` is the current subscription's period: ``used`` as counted by the ledger (0 before
  the first send of the period; this read never creates the usage row), ``limit`` null when
  unlimited, ``resets_at`` the end of the period.
- A signed-in user without any subscription (or unknown to billing) gets ``plan``,
  ``subscription`` and ``quota`` null, ``scope`` ``receive_only`` and an empty whitelist: the
  answer is 200 all the same, since the credential was valid.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from kosmo.clock import iso
from kosmo.domain import Quota, Scope

_ME = """
SELECT s.plan_code, p.scope, COALESCE(s.quota_override, p.monthly_quota), s.status,
       s.current_period_start, s.current_period_end,
       COALESCE((SELECT q.used FROM quota_usage q
                 WHERE q.user_id = s.user_id AND q.period_start = s.current_period_start), 0),
       ARRAY(SELECT w.node_id FROM node_whitelist w WHERE w.user_id = s.user_id
             ORDER BY w.node_id)
FROM subscriptions s JOIN plans p ON p.code = s.plan_code
WHERE s.user_id = %(user)s
ORDER BY s.status IN ('active', 'trialing') AND s.current_period_start <= %(now)s
         AND %(now)s < s.current_period_end DESC, s.current_period_end DESC
LIMIT 1
"""


def scope_name(scope: Scope, limit: int | None) -> str:
    if scope is Scope.NONE or limit == 0:
        return "receive_only"
    return scope.value


def me(conn: psycopg.Connection[Any], user_id: UUID, now: datetime) -> dict[str, Any]:
    row = conn.execute(_ME, {"user": user_id, "now": now}).fetchone()
    if row is None:
        return {"user_id": str(user_id), "plan": None, "scope": "receive_only",
                "whitelist": [], "subscription": None, "quota": None}
    plan, scope, limit, status, start, end, used, whitelist = row
    return {
        "user_id": str(user_id),
        "plan": plan,
        "scope": scope_name(Scope(scope), limit),
        "whitelist": list(whitelist) if scope == Scope.WHITELIST else [],
        "subscription": {"status": status, "current_period_start": iso(start),
                         "current_period_end": iso(end)},
        "quota": Quota(int(used), limit, end).to_json(),
    }
