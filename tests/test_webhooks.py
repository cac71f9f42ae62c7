"""Webhooks end to end: a real receiver verifies every delivery with ``standardwebhooks``.

What this proves:
- Only sanctuary registers webhooks (403 ``plan-not-entitled``; a lapsed sanctuary
  subscription 403 ``subscription-inactive``); a URL with credentials, a non-https URL, a
  loopback literal, unknown event types are 422; the secret is shown once; another user's
  webhook is a 404; a deleted webhook gets nothing more.
- Every event type arrives, signed, with the message as it was at that event: ``queued``,
  ``transmitted``, ``delivered`` (also inferred, without a transmitted report), ``failed``,
  ``expired``, ``canceled``, ``received``; ``pending`` never; a webhook receives only the
  types it asked for.
- A 500 is retried on the schedule with the same ``webhook-id`` (and body) until a 2xx; the
  last retry failing gives the delivery up; a 410 disables the webhook. The deliveries route
  shows each attempt.
- An endpoint that accepts and never answers does not delay another webhook's deliveries.
- A delivery owed when the gateway is killed with SIGKILL arrives after it starts again, with
  the same ``webhook-id``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import trio

from kosmo.config import Settings
from tests.conftest import GUARDIAN, SANCTUARY, Gateway, db_value, start_gateway
from tests.mesh import FakeBridgeLink
from tests.receiver import Receiver, receiving
from tests.test_reports import status_of, wait_for
from tests.test_views import validator

NODE = "!a1b2c3d4"
PROBLEM = "application/problem+json"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(webhook_allow_private=True, webhook_retry_schedule=(0.1, 0.2))


@pytest.fixture
async def bridge(mqtt_url: str, topic_root: str) -> AsyncIterator[FakeBridgeLink]:
    link = FakeBridgeLink(mqtt_url, topic_root)
    yield link
    link.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def headers(user: UUID) -> dict[str, str]:
    return {"X-User-ID": str(user)}


async def register(gateway: Gateway, url: str, events: list[str] | None = None,
                   user: UUID = SANCTUARY) -> dict[str, Any]:
    response = await gateway.client.post("/api/v1/webhooks", headers=headers(user),
                                         json={"url": url, "events": events or ["*"]})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def queued(gateway: Gateway, sql, text: str = "hi", node: str = NODE) -> str:
    response = await gateway.send(SANCTUARY, node, text)
    assert response.status_code == 201, response.text
    message_id: str = response.json()["message_id"]
    await wait_for(lambda: status_of(sql, message_id) == "queued")
    return message_id


def types_for(bodies: list[Any], message_id: str) -> list[str]:
    return [b["type"] for b in bodies if b["data"]["message_id"] == message_id]


async def arrived(receiver: Receiver, count: int, timeout: float = 10) -> None:
    await wait_for(lambda: len(receiver.received) >= count, timeout)


def assert_problem(response: Any, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == f"/problems/{slug}"


# --- registration -----------------------------------------------------------------------------

async def test_create_list_delete_and_the_secret_shown_once(gateway: Gateway, sql):
    created = await register(gateway, "https://example.org/hook", ["message.delivered"])
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["message.delivered"]
    assert created["status"] == "active"
    listed = (await gateway.get("/api/v1/webhooks", SANCTUARY)).json()["webhooks"]
    assert [h["webhook_id"] for h in listed] == [created["webhook_id"]]
    assert "secret" not in listed[0]
    path = f"/api/v1/webhooks/{created['webhook_id']}"
    other = await gateway.client.delete(path, headers=headers(GUARDIAN))
    assert_problem(other, 403, "plan-not-entitled")
    # Another sanctuary user (a copy of the seed's) sees a 404, like an unknown id.
    twin = UUID("66666666-6666-6666-6666-666666666666")
    sql.execute("INSERT INTO users (id) VALUES (%s)", (twin,))
    sql.execute("INSERT INTO subscriptions (id, user_id, plan_code, status, current_period_start,"
                " current_period_end) SELECT gen_random_uuid(), %s, plan_code, status,"
                " current_period_start, current_period_end FROM subscriptions"
                " WHERE user_id = %s", (twin, SANCTUARY))
    assert_problem(await gateway.client.delete(path, headers=headers(twin)), 404, "not-found")
    deliveries = await gateway.get(f"{path}/deliveries", twin)
    assert_problem(deliveries, 404, "not-found")
    assert_problem(await gateway.client.delete("/api/v1/webhooks/nope",
                                               headers=headers(SANCTUARY)), 404, "not-found")
    assert (await gateway.client.delete(path, headers=headers(SANCTUARY))).status_code == 204
    assert (await gateway.get("/api/v1/webhooks", SANCTUARY)).json() == {"webhooks": []}


async def test_only_sanctuary_and_only_while_subscribed(gateway: Gateway, sql):
    body = {"url": "https://example.org/hook", "events": ["*"]}
    refused = await gateway.client.post("/api/v1/webhooks", headers=headers(GUARDIAN), json=body)
    assert_problem(refused, 403, "plan-not-entitled")
    assert_problem(await gateway.get("/api/v1/webhooks", GUARDIAN), 403, "plan-not-entitled")
    assert (await gateway.client.post("/api/v1/webhooks", json=body)).status_code == 401
    sql.execute("UPDATE subscriptions SET status = 'canceled' WHERE user_id = %s", (SANCTUARY,))
    lapsed = await gateway.client.post("/api/v1/webhooks", headers=headers(SANCTUARY), json=body)
    assert_problem(lapsed, 403, "subscription-inactive")
    assert db_value(sql, "SELECT count(*) FROM webhooks") == 0


@pytest.mark.usefixtures("online_bridge")
async def test_the_answers_validate_against_the_openapi_document(gateway: Gateway, sql):
    spec = (await gateway.client.get("/openapi.json")).json()

    def declared(path: str, method: str, status: str) -> Any:
        return validator(spec, spec["paths"][path][method]["responses"][status]["content"][
            "application/json"]["schema"])

    for path, method, statuses in [
            ("/api/v1/webhooks", "post", {"201", "400", "401", "403", "415", "422"}),
            ("/api/v1/webhooks", "get", {"200", "401", "403"}),
            ("/api/v1/webhooks/{webhook_id}", "delete", {"401", "403", "404"}),
            ("/api/v1/webhooks/{webhook_id}/deliveries", "get", {"200", "401", "403", "404"})]:
        assert statuses <= set(spec["paths"][path][method]["responses"]), (path, method)
    with receiving([500]) as receiver:
        created = await register(gateway, receiver.url, ["message.queued"])
        declared("/api/v1/webhooks", "post", "201").validate(created)
        await queued(gateway, sql)
        await arrived(receiver, 2)
        listed = (await gateway.get("/api/v1/webhooks", SANCTUARY)).json()
        declared("/api/v1/webhooks", "get", "200").validate(listed)
        path = f"/api/v1/webhooks/{created['webhook_id']}/deliveries"
        await wait_for(lambda: db_value(sql, "SELECT count(*) FROM webhook_attempts") == 2)
        attempts = (await gateway.get(path, SANCTUARY)).json()
    declared("/api/v1/webhooks/{webhook_id}/deliveries", "get", "200").validate(attempts)
    assert len(attempts["deliveries"]) == 2


@pytest.mark.parametrize(("url", "events"), [
    ("https://user:pw@example.org/hook", ["*"]),
    ("https://user@example.org/hook", ["*"]),
    ("ftp://example.org/hook", ["*"]),
    ("https://example.org/" + "a" * 2100, ["*"]),
    ("https:///nohost", ["*"]),
    ("https://example.org/hook", ["message.pending"]),
    ("https://example.org/hook", []),
    ("https://example.org/hook", ["message.queued", "message.queued"]),
    ("https://example.org/hook", "*"),
])
async def test_bad_urls_and_events_are_422(gateway: Gateway, url, events):
    response = await gateway.client.post("/api/v1/webhooks", headers=headers(SANCTUARY),
                                         json={"url": url, "events": events})
    assert_problem(response, 422, "invalid-fields")


@pytest.mark.parametrize("url", ["http://example.org/hook", "https://127.0.0.1/hook",
                                 "https://[::1]/hook", "https://10.0.0.8/hook",
                                 "https://localhost/hook", "https://169.254.169.254/latest"])
async def test_without_allow_private_only_public_https(nursery, settings: Settings, url):
    async with start_gateway(nursery, settings.replace(webhook_allow_private=False)) as gateway:
        response = await gateway.client.post("/api/v1/webhooks", headers=headers(SANCTUARY),
                                             json={"url": url, "events": ["*"]})
        assert_problem(response, 422, "invalid-fields")
        assert response.json()["errors"][0]["field"] == "url"


# --- events -----------------------------------------------------------------------------------

@pytest.mark.usefixtures("online_bridge")
async def test_every_event_type_arrives_signed(gateway: Gateway, bridge, sql,
                                               receiver: Receiver):
    hook = await register(gateway, receiver.url)
    delivered = await queued(gateway, sql, "one")
    bridge.status(delivered, "transmitted", packet_id=71)
    await wait_for(lambda: status_of(sql, delivered) == "transmitted")
    bridge.status(delivered, "delivered", packet_id=71)
    inferred = await queued(gateway, sql, "two")
    bridge.status(inferred, "delivered")  # transmitted is inferred
    failed = await queued(gateway, sql, "three")
    bridge.status(failed, "failed", reason="no ack")
    expired = await queued(gateway, sql, "four")
    await wait_for(lambda: status_of(sql, failed) == "failed")
    sql.execute("UPDATE messages SET expires_at = %s WHERE id = %s",
                (datetime.now(UTC) - timedelta(seconds=1), expired))
    assert await gateway.running.expiry.sweep() == 1
    bridge.reply(NODE, "a reply", packet_id=900, reply_to=71)
    # 4 queued + transmitted, delivered, transmitted (inferred), delivered, failed, expired,
    # received.
    await arrived(receiver, 11)
    await trio.sleep(0.3)  # nothing more comes (no pending, no duplicates)
    bodies = receiver.verified(hook["secret"])
    assert len(bodies) == 11
    assert types_for(bodies, delivered) == ["message.queued", "message.transmitted",
                                            "message.delivered"]
    assert types_for(bodies, inferred) == ["message.queued", "message.transmitted",
                                           "message.delivered"]
    assert types_for(bodies, failed) == ["message.queued", "message.failed"]
    assert types_for(bodies, expired) == ["message.queued", "message.expired"]
    received = [b for b in bodies if b["type"] == "message.received"]
    assert [(b["data"]["direction"], b["data"]["text"]) for b in received] == [
        ("inbound", "a reply")]
    for body in bodies:  # the message as it was at that event
        assert body["data"]["status"] == body["type"].removeprefix("message.")
        assert body["timestamp"] == body["data"]["updated_at"]
    fail = next(b for b in bodies if b["type"] == "message.failed")
    assert fail["data"]["reason"] == "no ack"
    # Event ids are the stream's, one per event, in order.
    ids = [r.id for r in receiver.received]
    assert len(set(ids)) == 11


async def test_canceled_and_only_the_types_asked_for(gateway: Gateway, sql,
                                                    receiver: Receiver):
    hook = await register(gateway, receiver.url, ["message.canceled"])
    sent = await gateway.send(SANCTUARY, NODE, "wait")  # no bridge is online: it waits
    message_id = sent.json()["message_id"]
    canceled = await gateway.client.delete(f"/api/v1/messages/{message_id}",
                                           headers=headers(SANCTUARY))
    assert canceled.status_code == 200, canceled.text
    await arrived(receiver, 1)
    [body] = receiver.verified(hook["secret"])
    assert body["type"] == "message.canceled"
    assert body["data"] == canceled.json()


# --- retries, giving up, 410 ------------------------------------------------------------------

@pytest.mark.usefixtures("online_bridge")
async def test_a_500_is_retried_with_the_same_webhook_id(gateway: Gateway, sql):
    with receiving([500, 503]) as receiver:
        hook = await register(gateway, receiver.url, ["message.queued"])
        await queued(gateway, sql)
        await arrived(receiver, 3)
        bodies = receiver.verified(hook["secret"])
        assert len({r.id for r in receiver.received}) == 1
        assert len({r.body for r in receiver.received}) == 1
        assert len(bodies) == 3
        gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:],
                                             strict=False)]
        # The schedule (0.1 s, 0.2 s), less at most 10 % jitter.
        assert gaps[0] >= 0.09
        assert gaps[1] >= 0.18
        path = f"/api/v1/webhooks/{hook['webhook_id']}/deliveries"
        await wait_for(lambda: db_value(sql, "SELECT state FROM webhook_deliveries")
                       == "delivered")
        attempts = (await gateway.get(path, SANCTUARY)).json()["deliveries"]
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (3, 200, "delivered"), (2, 503, "retrying"), (1, 500, "retrying")]
    assert attempts[1]["next_attempt_at"] is not None
    assert {a["event_id"] for a in attempts} == {receiver.received[0].id}


@pytest.mark.usefixtures("online_bridge")
async def test_the_last_retry_failing_gives_up(gateway: Gateway, sql):
    with receiving(default=500) as receiver:
        hook = await register(gateway, receiver.url, ["message.queued"])
        await queued(gateway, sql)
        await wait_for(lambda: db_value(sql, "SELECT state FROM webhook_deliveries")
                       == "given_up")
        assert len(receiver.received) == 3  # the first attempt and the schedule's two
        attempts = (await gateway.get(f"/api/v1/webhooks/{hook['webhook_id']}/deliveries",
                                      SANCTUARY)).json()["deliveries"]
    assert [a["outcome"] for a in attempts] == ["given_up", "retrying", "retrying"]
    assert attempts[0]["next_attempt_at"] is None


@pytest.mark.usefixtures("online_bridge")
async def test_410_disables_the_webhook(gateway: Gateway, sql):
    with receiving([410]) as receiver:
        hook = await register(gateway, receiver.url, ["message.queued"])
        await queued(gateway, sql)
        await arrived(receiver, 1)
        await wait_for(lambda: db_value(sql, "SELECT disabled_at FROM webhooks") is not None)
        await queued(gateway, sql, "after")
        await trio.sleep(0.5)
        assert len(receiver.received) == 1
    listed = (await gateway.get("/api/v1/webhooks", SANCTUARY)).json()["webhooks"]
    assert listed[0]["status"] == "disabled"
    attempts = (await gateway.get(f"/api/v1/webhooks/{hook['webhook_id']}/deliveries",
                                  SANCTUARY)).json()["deliveries"]
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [(410, "disabled")]


@pytest.mark.usefixtures("online_bridge")
async def test_a_deleted_webhook_gets_nothing_more(gateway: Gateway, sql, receiver: Receiver):
    hook = await register(gateway, receiver.url, ["message.queued"])
    await queued(gateway, sql)
    await arrived(receiver, 1)
    await gateway.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}",
                                headers=headers(SANCTUARY))
    await queued(gateway, sql, "after")
    await trio.sleep(0.5)
    assert len(receiver.received) == 1


# --- isolation --------------------------------------------------------------------------------

@pytest.mark.usefixtures("online_bridge")
async def test_a_dead_endpoint_does_not_delay_a_live_one(gateway: Gateway, sql):
    with receiving(hang=True) as dead, receiving() as live:
        dead_hook = await register(gateway, dead.url, ["message.queued"])
        hook = await register(gateway, live.url, ["message.queued"])
        # Thousands of deliveries already owed to the dead endpoint, all due before the live's.
        sql.execute("""
            INSERT INTO webhook_deliveries (webhook_id, event_id, type, body, state,
                                            next_attempt_at, created_at)
            SELECT %s, -n, 'message.queued', '{}', 'owed', now() - interval '1 hour', now()
            FROM generate_series(1, 3000) n""", (dead_hook["webhook_id"],))
        sent = [await gateway.send(SANCTUARY, NODE, f"m{i}") for i in range(20)]
        assert all(r.status_code == 201 for r in sent)
        with trio.fail_after(5):  # well inside the dead endpoint's 10 s timeout
            await arrived(live, 20)
        assert len(live.verified(hook["secret"])) == 20
        assert 1 <= len(dead.received) <= 4  # it holds only its own few slots
        leased = db_value(sql, "SELECT count(*) FROM webhook_deliveries"
                          " WHERE leased_until IS NOT NULL AND webhook_id = %s",
                          dead_hook["webhook_id"])
        assert leased <= 4  # memory: the backlog stays in the database
    bodies = [json.loads(r.body) for r in live.received]
    assert {b["data"]["text"] for b in bodies} == {f"m{i}" for i in range(20)}


# --- durability -------------------------------------------------------------------------------

class GatewayProcess:
    """``kosmo gateway`` in its own process, its log in a file, killed with SIGKILL."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._log = log
        self._offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "kosmo", "gateway"], env=env,
                                         stdout=out, stderr=out)

    async def url(self) -> str:
        with trio.fail_after(30):
            while True:
                text = self._log.read_bytes()[self._offset:].decode(errors="replace")
                if found := re.search(r"gateway listening on (\S+)", text):
                    return found.group(1).rstrip(",")
                assert self.proc.poll() is None, text
                await trio.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.mark.usefixtures("online_bridge")
async def test_an_owed_delivery_survives_a_kill_9(database_url: str, mqtt_url: str,
                                                 topic_root: str, sql, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    env.update(KOSMO_DATABASE_URL=database_url, KOSMO_MQTT_URL=mqtt_url,
               KOSMO_AUTH_MODE="header", KOSMO_HTTP_BIND="127.0.0.1:0",
               KOSMO_MQTT_TOPIC_ROOT=topic_root, KOSMO_MQTT_CLIENT_ID=f"gw-{topic_root}",
               KOSMO_WEBHOOK_ALLOW_PRIVATE="true", KOSMO_WEBHOOK_RETRY_SCHEDULE="1s")
    log = tmp_path / "gateway.log"
    with receiving([500]) as receiver:
        first = GatewayProcess(env, log)
        try:
            async with httpx.AsyncClient(base_url=await first.url(), timeout=10) as client:
                created = await client.post("/api/v1/webhooks", headers=headers(SANCTUARY),
                                            json={"url": receiver.url,
                                                  "events": ["message.queued"]})
                assert created.status_code == 201, created.text
                sent = await client.post("/api/v1/messages", headers=headers(SANCTUARY),
                                         json={"target_node_id": NODE, "text": "hi"})
                assert sent.status_code == 201, sent.text
            await wait_for(lambda: db_value(sql, "SELECT count(*) FROM webhook_attempts") == 1)
        finally:
            first.kill()  # the delivery is owed: its retry is due in about a second
        assert db_value(sql, "SELECT state FROM webhook_deliveries") == "owed"
        await trio.sleep(1.5)  # the retry falls due while no gateway runs
        assert len(receiver.received) == 1
        second = GatewayProcess(env, log)
        try:
            await second.url()
            await arrived(receiver, 2)
            await wait_for(lambda: db_value(sql, "SELECT state FROM webhook_deliveries")
                           == "delivered")
        finally:
            second.kill()
    bodies = receiver.verified(created.json()["secret"])
    assert [b["type"] for b in bodies] == ["message.queued", "message.queued"]
    assert receiver.received[0].id == receiver.received[1].id
