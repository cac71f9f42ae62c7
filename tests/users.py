"""Users of the Sanctuary plan (any node) for tests that need more senders than the demo ones."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg


def add_users(conn: psycopg.Connection[Any], count: int, *, quota: int | None = None,
              last_quota: int | None = None) -> list[uuid.UUID]:
    """``count`` users on the sanctuary plan for the current month (UTC), each with ``quota``
    messages a month (None: the plan's, no limit), the last one with ``last_quota`` if given."""
    users = [uuid.uuid4() for _ in range(count)]
    with conn.transaction():
        for i, user in enumerate(users):
            conn.execute("INSERT INTO users (id, email) VALUES (%s, %s)",
                         (user, f"{user}@example.org"))
            conn.execute(
                "INSERT INTO subscriptions (id, user_id, plan_code, status, current_period_start,"
                " current_period_end, quota_override) SELECT %s, %s, 'sanctuary', 'active',"
                " m, m + interval '1 month', %s"
                " FROM (SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
                " AS month (m)",
                (uuid.uuid4(), user,
                 last_quota if last_quota is not None and i == count - 1 else quota))
    return users
