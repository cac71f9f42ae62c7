"""GET /api/v1/me: the caller's plan, scope, whitelist, subscription and quota.

What this proves: each demo user sees their own plan and period, with the quota as the ledger
counts it; a lapsed subscription and a user without any subscription still get 200; the answer
validates against the schema /openapi.json declares; the route needs credentials, in both modes.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
import trio

from kosmo.clock import iso
from kosmo.config import Settings
from tests.conftest import CANCELED, FREE, GUARDIAN, SANCTUARY, WANDERER, Gateway, start_gateway
from tests.test_views import validator

SECRET = "test-secret-with-enough-bytes-for-hs256"
PROBLEM = "application/problem+json"


def month() -> tuple[str, str]:
    """The demo subscriptions' period: the current month, UTC."""
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return iso(start), iso(end)


def expected(user: uuid.UUID, plan: str, scope: str, status: str, limit: int | None,
             whitelist: list[str] | None = None, used: int = 0) -> dict[str, Any]:
    start, end = month()
    return {
        "user_id": str(user), "plan": plan, "scope": scope, "whitelist": whitelist or [],
        "subscription": {"status": status, "current_period_start": start,
                         "current_period_end": end},
        "quota": {"used": used, "limit": limit,
                  "remaining": None if limit is None else max(limit - used, 0),
                  "resets_at": end},
    }


@pytest.mark.parametrize(("user", "want"), [
    pytest.param(WANDERER, expected(WANDERER, "wanderer", "any", "active", 50), id="wanderer"),
    pytest.param(GUARDIAN, expected(GUARDIAN, "guardian", "whitelist", "active", 500,
                                    ["!a1b2c3d4"]), id="guardian"),
    pytest.param(SANCTUARY, expected(SANCTUARY, "sanctuary", "any", "active", None),
                 id="sanctuary"),
    pytest.param(FREE, expected(FREE, "free", "receive_only", "active", 0), id="free"),
    pytest.param(CANCELED, expected(CANCELED, "wanderer", "any", "canceled", 50),
                 id="canceled"),
])
async def test_me_for_each_demo_user(gateway: Gateway, user, want):
    response = await gateway.get("/api/v1/me", user)
    assert (response.status_code, response.headers["Content-Type"]) == (200, "application/json")
    assert response.json() == want


async def test_the_quota_is_what_the_ledger_counted(gateway: Gateway):
    for _ in range(2):
        assert (await gateway.send(WANDERER)).status_code == 201
    me = (await gateway.get("/api/v1/me", WANDERER)).json()
    assert me["quota"] == expected(WANDERER, "wanderer", "any", "active", 50, used=2)["quota"]


async def test_the_whitelist_shows_only_on_a_whitelist_plan(gateway: Gateway, sql):
    sql.execute("INSERT INTO node_whitelist (user_id, node_id) VALUES (%s, '!0badf00d'),"
                " (%s, '!0badf00d')", (GUARDIAN, WANDERER))
    guardian = (await gateway.get("/api/v1/me", GUARDIAN)).json()
    wanderer = (await gateway.get("/api/v1/me", WANDERER)).json()
    assert (guardian["whitelist"], wanderer["whitelist"]) == (["!0badf00d", "!a1b2c3d4"], [])


async def test_a_quota_override_is_the_limit(gateway: Gateway, sql):
    sql.execute("UPDATE subscriptions SET quota_override = 7 WHERE user_id = %s", (WANDERER,))
    me = (await gateway.get("/api/v1/me", WANDERER)).json()
    assert (me["quota"]["limit"], me["quota"]["remaining"]) == (7, 7)


async def test_an_active_subscription_wins_over_a_later_lapsed_one(gateway: Gateway, sql):
    sql.execute("INSERT INTO subscriptions (id, user_id, plan_code, status, current_period_start,"
                " current_period_end) VALUES (%s, %s, 'guardian', 'canceled',"
                " now() + interval '40 days', now() + interval '70 days')",
                (uuid.uuid4(), WANDERER))
    me = (await gateway.get("/api/v1/me", WANDERER)).json()
    assert (me["plan"], me["subscription"]["status"]) == ("wanderer", "active")


@pytest.mark.parametrize("known", [True, False], ids=["user-without-subscription",
                                                      "user-unknown-to-billing"])
async def test_a_user_without_any_subscription_gets_200(gateway: Gateway, sql, known):
    user = uuid.uuid4()
    if known:
        sql.execute("INSERT INTO users (id) VALUES (%s)", (user,))
    response = await gateway.get("/api/v1/me", user)
    assert response.status_code == 200
    assert response.json() == {"user_id": str(user), "plan": None, "scope": "receive_only",
                               "whitelist": [], "subscription": None, "quota": None}


async def test_me_needs_credentials(gateway: Gateway):
    response = await gateway.get("/api/v1/me", None)
    assert (response.status_code, response.headers["Content-Type"]) == (401, PROBLEM)
    assert response.json()["type"] == "/problems/unauthorized"


async def test_me_in_jwt_mode_names_the_tokens_sub(nursery: trio.Nursery, settings: Settings):
    token = jwt.encode({"sub": str(GUARDIAN), "exp": int(time.time()) + 60}, SECRET,
                       algorithm="HS256")
    async with start_gateway(nursery, settings.replace(auth_mode="jwt",
                                                       jwt_secret=SECRET)) as gateway:
        response = await gateway.client.get("/api/v1/me", headers={
            "Authorization": f"Bearer {token}", "X-User-ID": str(WANDERER)})
    assert (response.status_code, response.json()["plan"]) == (200, "guardian")


async def test_me_validates_against_the_declared_schema(gateway: Gateway):
    spec = (await gateway.client.get("/openapi.json")).json()
    schema = spec["paths"]["/api/v1/me"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    check = validator(spec, schema)
    for user in (WANDERER, GUARDIAN, SANCTUARY, FREE, CANCELED, uuid.uuid4()):
        check.validate((await gateway.get("/api/v1/me", user)).json())
