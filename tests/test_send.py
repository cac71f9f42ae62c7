"""Sending: each plan's scope, subscription state, quota exhaustion and the publish to MQTT."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from tests.conftest import (
    CANCELED,
    FAKE_BRIDGE,
    FREE,
    GUARDIAN,
    SANCTUARY,
    WANDERER,
    Gateway,
    db_value,
)


async def test_send_is_stored_debited_and_published(gateway: Gateway, subscriber, sql, topic_root):
    response = await gateway.send(WANDERER, "!A1B2C3D4", "Hello mesh")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["node_id"] == "!a1b2c3d4"
    assert body["direction"] == "outbound"
    assert body["text"] == "Hello mesh"
    assert body["quota"]["used"] == 1
    assert body["quota"]["limit"] == 50
    assert body["quota"]["remaining"] == 49
    assert response.headers["Location"] == f"/api/v1/messages/{body['message_id']}"

    [(topic, payload)] = await subscriber.wait_for(1)
    assert topic == f"{topic_root}/bridge/{FAKE_BRIDGE}/outbound/!a1b2c3d4"
    assert payload["message_id"] == body["message_id"]
    assert payload["target_node_id"] == "!a1b2c3d4"
    assert payload["text"] == "Hello mesh"
    assert payload["created_at"].endswith("Z")
    assert payload["expires_at"].endswith("Z")
    assert db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s", WANDERER) == 1

    detail = await _wait_status(gateway, WANDERER, body["message_id"], "queued")
    assert [h["status"] for h in detail["status_history"]] == ["pending", "queued"]


async def _wait_status(gateway: Gateway, user, message_id: str, status: str) -> dict:
    import trio

    with trio.fail_after(10):
        while True:
            detail = (await gateway.get(f"/api/v1/messages/{message_id}", user)).json()
            if detail["status"] == status:
                return detail
            await trio.sleep(0.02)


@pytest.mark.parametrize(("user", "node", "status", "problem"), [
    (WANDERER, "!deadbeef", 201, None),
    (GUARDIAN, "!a1b2c3d4", 201, None),
    (GUARDIAN, "!deadbeef", 403, "node-not-whitelisted"),
    (SANCTUARY, "!deadbeef", 201, None),
    (FREE, "!a1b2c3d4", 403, "receive-only"),
    (CANCELED, "!a1b2c3d4", 403, "subscription-inactive"),
    (uuid.UUID(int=7), "!a1b2c3d4", 403, "subscription-inactive"),
])
async def test_plan_scope(gateway: Gateway, sql, user, node, status, problem):
    response = await gateway.send(user, node)
    assert response.status_code == status, response.text
    if problem:
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["type"] == f"/problems/{problem}"
        assert db_value(sql, "SELECT count(*) FROM messages") == 0
        assert db_value(sql, "SELECT coalesce(sum(used), 0) FROM quota_usage") == 0


async def test_sanctuary_quota_is_unlimited(gateway: Gateway):
    body = (await gateway.send(SANCTUARY)).json()
    assert body["quota"]["limit"] is None
    assert body["quota"]["remaining"] is None
    assert body["quota"]["used"] == 1


async def test_subscription_outside_its_period_is_inactive(gateway: Gateway, sql):
    sql.execute("UPDATE subscriptions SET current_period_start = '2020-01-01',"
                " current_period_end = '2020-02-01' WHERE user_id = %s", (WANDERER,))
    response = await gateway.send(WANDERER)
    assert response.json()["type"] == "/problems/subscription-inactive"


async def test_quota_exhaustion_answers_429_with_retry_after(gateway: Gateway, sql):
    sql.execute("UPDATE subscriptions SET quota_override = 2 WHERE user_id = %s", (WANDERER,))
    for _ in range(2):
        assert (await gateway.send(WANDERER)).status_code == 201
    response = await gateway.send(WANDERER)
    assert response.status_code == 429
    problem = response.json()
    assert problem["type"] == "/problems/quota-exceeded"
    assert problem["quota"]["used"] == 2
    assert problem["quota"]["limit"] == 2
    assert problem["quota"]["remaining"] == 0
    period_end = db_value(sql, "SELECT current_period_end FROM subscriptions WHERE user_id = %s",
                          WANDERER)
    expected = (period_end - datetime.now(UTC)).total_seconds()
    assert abs(int(response.headers["Retry-After"]) - expected) < 5
    assert problem["quota"]["resets_at"] == period_end.isoformat().replace("+00:00", "Z")
    assert db_value(sql, "SELECT count(*) FROM messages") == 2
    assert db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s", WANDERER) == 2
