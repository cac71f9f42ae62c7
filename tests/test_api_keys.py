"""API keys: created once by a sanctuary user, stored only as a hash, a credential in both auth
modes (HTTP and the stream's handshake), revoked at once in every gateway process.

What this proves:
- The secret is in the 201 answer and nowhere else: not in the table, not in a list, not in the
  logs. Lists show the prefix and ``last_used_at``, which is written at most once a minute.
- Only a plan with API access may create keys (403 ``plan-not-entitled``); a lapsed sanctuary
  user may not create one (403 ``subscription-inactive``), but their keys still authenticate
  and their sends are refused as the user's are.
- A key acts as its user, over ``X-User-ID`` in header mode and beside JWTs in jwt mode.
- A revoked key is refused (401) by the next request, also by a second gateway process on the
  same database. Malformed, unknown and revoked keys are 401 problem+json, never a 500.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import trio

from kosmo.config import Settings
from kosmo.embedded import EmbeddedPostgres
from tests.conftest import (
    CANCELED,
    FREE,
    GUARDIAN,
    SANCTUARY,
    WANDERER,
    Gateway,
    db_value,
    start_gateway,
)
from tests.test_access import handshake
from tests.test_db_outage import own_postgres  # noqa: F401 (a fixture)
from tests.test_stream import connect, events, lifecycle
from tests.test_views import validator

SECRET = "test-secret-with-enough-bytes-for-hs256"
PROBLEM = "application/problem+json"
SEND = {"target_node_id": "!a1b2c3d4", "text": "hello"}
ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def key_auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def as_header(user: uuid.UUID) -> dict[str, str]:
    return {"X-User-ID": str(user)}


async def create(gateway: Gateway, headers: dict[str, str], name: str = "dispatch"
                 ) -> dict[str, Any]:
    response = await gateway.client.post("/api/v1/api-keys", headers=headers,
                                         json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def me(gateway: Gateway, secret: str) -> int:
    return (await gateway.client.get("/api/v1/me", headers=key_auth(secret))).status_code


@pytest.fixture
async def jwt_gateway(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[Gateway]:
    async with start_gateway(nursery, settings.replace(auth_mode="jwt", jwt_secret=SECRET)) as gw:
        yield gw


def token(user: uuid.UUID) -> str:
    return jwt.encode({"sub": str(user), "exp": int(time.time()) + 60}, SECRET,
                      algorithm="HS256")


# Created once, stored as a hash.

async def test_a_key_is_created_once_and_only_its_hash_is_kept(
        gateway: Gateway, sql, caplog: pytest.LogCaptureFixture):
    response = await gateway.client.post("/api/v1/api-keys", headers=as_header(SANCTUARY),
                                         json={"name": "dispatch"})
    assert response.status_code == 201, response.text
    key = response.json()
    assert list(key) == ["key_id", "name", "prefix", "created_at", "secret"]
    secret = key["secret"]
    assert secret.startswith("kosmo_sk_")
    assert len(secret) == len("kosmo_sk_") + 43
    assert set(secret[len("kosmo_sk_"):]) <= ALPHABET
    assert key["prefix"] == secret[:17]
    assert key["name"] == "dispatch"
    assert response.headers["Location"] == f"/api/v1/api-keys/{key['key_id']}"
    assert response.headers["Cache-Control"] == "no-store"
    # The table holds the hash, never the secret nor its random part.
    row = sql.execute("SELECT user_id, secret_hash, api_keys::text FROM api_keys").fetchall()
    assert len(row) == 1
    assert row[0][0] == SANCTUARY
    assert bytes(row[0][1]) == hashlib.sha256(secret.encode()).digest()
    assert secret[9:] not in row[0][2]
    assert await me(gateway, secret) == 200
    assert not [r for r in caplog.records if secret[9:] in r.getMessage()]
    # Each key has its own secret.
    other = await create(gateway, as_header(SANCTUARY), "second")
    assert (other["secret"] != secret, other["prefix"] != key["prefix"]) == (True, True)


async def test_the_answer_validates_against_the_declared_schemas(gateway: Gateway):
    spec = (await gateway.client.get("/openapi.json")).json()
    paths = spec["paths"]["/api/v1/api-keys"]

    def declared(method: str, status: str) -> Any:
        return validator(spec, paths[method]["responses"][status]["content"][
            "application/json"]["schema"])

    key = await create(gateway, as_header(SANCTUARY))
    declared("post", "201").validate(key)
    await me(gateway, key["secret"])
    declared("get", "200").validate(
        (await gateway.get("/api/v1/api-keys", SANCTUARY)).json())
    assert "delete" in spec["paths"]["/api/v1/api-keys/{key_id}"]


async def test_the_list_shows_no_secret_and_when_each_key_was_last_used(gateway: Gateway, sql):
    first = await create(gateway, as_header(SANCTUARY), "first")
    second = await create(gateway, as_header(SANCTUARY), "second")
    assert await me(gateway, first["secret"]) == 200
    listing = (await gateway.get("/api/v1/api-keys", SANCTUARY)).json()
    assert [list(k) for k in listing["api_keys"]] == [
        ["key_id", "name", "prefix", "created_at", "last_used_at"]] * 2
    shown = {k: v for k, v in first.items() if k != "secret"}
    assert listing["api_keys"][0] == {**shown, "last_used_at": listing["api_keys"][0][
        "last_used_at"]}
    assert listing["api_keys"][0]["last_used_at"] is not None
    assert listing["api_keys"][1]["key_id"] == second["key_id"]
    assert listing["api_keys"][1]["last_used_at"] is None
    assert first["secret"][9:] not in str(listing)
    # Only the caller's keys.
    assert (await gateway.get("/api/v1/api-keys", WANDERER)).json() == {"api_keys": []}


async def test_last_used_at_is_written_at_most_once_a_minute(gateway: Gateway, sql):
    key = await create(gateway, as_header(SANCTUARY))
    assert await me(gateway, key["secret"]) == 200
    query = "SELECT xmin::text || last_used_at::text FROM api_keys WHERE id = %s"
    written = db_value(sql, query, key["key_id"])
    for _ in range(5):
        assert await me(gateway, key["secret"]) == 200
    assert db_value(sql, query, key["key_id"]) == written  # no write: the row version is the same
    sql.execute("UPDATE api_keys SET last_used_at = last_used_at - interval '61 seconds'")
    before = db_value(sql, "SELECT last_used_at FROM api_keys")
    assert await me(gateway, key["secret"]) == 200
    assert db_value(sql, "SELECT last_used_at FROM api_keys") > before


# The plan rule.

@pytest.mark.parametrize("user", [WANDERER, GUARDIAN, FREE, CANCELED],
                         ids=["wanderer", "guardian", "free", "canceled-wanderer"])
async def test_only_a_plan_with_api_access_creates_keys(gateway: Gateway, sql, user):
    response = await gateway.client.post("/api/v1/api-keys", headers=as_header(user),
                                         json={"name": "x"})
    assert (response.status_code, response.headers["Content-Type"]) == (403, PROBLEM)
    assert response.json()["type"] == "/problems/plan-not-entitled"
    assert db_value(sql, "SELECT count(*) FROM api_keys") == 0


async def test_a_user_without_any_subscription_is_not_entitled(gateway: Gateway, sql):
    response = await gateway.client.post("/api/v1/api-keys", headers=as_header(uuid.uuid4()),
                                         json={"name": "x"})
    assert (response.status_code, response.json()["type"]) == (403,
                                                                "/problems/plan-not-entitled")


# A lapsed subscription.

async def test_a_lapsed_sanctuary_user_creates_no_key(gateway: Gateway, sql):
    sql.execute("UPDATE subscriptions SET status = 'past_due' WHERE user_id = %s", (SANCTUARY,))
    response = await gateway.client.post("/api/v1/api-keys", headers=as_header(SANCTUARY),
                                         json={"name": "x"})
    assert (response.status_code, response.json()["type"]) == (
        403, "/problems/subscription-inactive")
    assert db_value(sql, "SELECT count(*) FROM api_keys") == 0


async def test_a_key_of_a_lapsed_user_authenticates_and_its_sends_are_refused(
        gateway: Gateway, sql):
    key = await create(gateway, as_header(SANCTUARY))
    sql.execute("UPDATE subscriptions SET status = 'canceled' WHERE user_id = %s", (SANCTUARY,))
    answer = await gateway.client.get("/api/v1/me", headers=key_auth(key["secret"]))
    assert (answer.status_code, answer.json()["subscription"]["status"]) == (200, "canceled")
    sent = await gateway.client.post("/api/v1/messages", headers=key_auth(key["secret"]),
                                     json=SEND)
    assert (sent.status_code, sent.json()["type"]) == (403, "/problems/subscription-inactive")
    assert db_value(sql, "SELECT count(*) FROM messages") == 0
    listing = await gateway.client.get("/api/v1/api-keys", headers=key_auth(key["secret"]))
    assert [k["key_id"] for k in listing.json()["api_keys"]] == [key["key_id"]]


async def test_a_key_stops_with_a_plan_without_api_access_and_can_still_be_revoked(
        gateway: Gateway, sql):
    key = await create(gateway, as_header(SANCTUARY))
    sql.execute("UPDATE subscriptions SET plan_code = 'wanderer' WHERE user_id = %s",
                (SANCTUARY,))
    refused = await gateway.client.get("/api/v1/me", headers=key_auth(key["secret"]))
    assert (refused.status_code, refused.json()["type"]) == (403, "/problems/plan-not-entitled")
    listing = (await gateway.get("/api/v1/api-keys", SANCTUARY)).json()
    assert [k["key_id"] for k in listing["api_keys"]] == [key["key_id"]]
    deleted = await gateway.client.delete(f"/api/v1/api-keys/{key['key_id']}",
                                          headers=as_header(SANCTUARY))
    assert deleted.status_code == 204


# A key acts as its user.

async def test_a_key_acts_as_its_user_in_header_mode(gateway: Gateway, sql):
    key = await create(gateway, as_header(SANCTUARY))
    alone = await gateway.client.post("/api/v1/messages", headers=key_auth(key["secret"]),
                                      json=SEND)
    # A key wins over a claimed X-User-ID.
    claimed = await gateway.client.post(
        "/api/v1/messages", headers={**key_auth(key["secret"]), **as_header(WANDERER)},
        json=SEND)
    assert (alone.status_code, claimed.status_code) == (201, 201), claimed.text
    owners = {row[0] for row in sql.execute("SELECT user_id FROM messages").fetchall()}
    assert owners == {SANCTUARY}
    assert db_value(sql, "SELECT count(*) FROM quota_usage WHERE user_id = %s", WANDERER) == 0
    read = await gateway.client.get(alone.headers["Location"], headers=key_auth(key["secret"]))
    assert read.status_code == 200


async def test_a_key_works_in_jwt_mode_beside_tokens(jwt_gateway: Gateway, sql):
    created = await jwt_gateway.client.post(
        "/api/v1/api-keys", headers={"Authorization": f"Bearer {token(SANCTUARY)}"},
        json={"name": "made with a token"})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    sent = await jwt_gateway.client.post("/api/v1/messages", headers=key_auth(secret),
                                         json=SEND)
    assert sent.status_code == 201, sent.text
    assert db_value(sql, "SELECT user_id FROM messages") == SANCTUARY
    answer = await jwt_gateway.client.get("/api/v1/me", headers=key_auth(secret))
    assert (answer.status_code, answer.json()["user_id"]) == (200, str(SANCTUARY))
    # The same key in the query string is not a credential (keys travel in a header only).
    assert (await jwt_gateway.client.get("/api/v1/me", params={"token": secret})
            ).status_code == 401


@pytest.mark.parametrize("mode", ["header", "jwt"])
async def test_a_key_opens_the_stream(nursery: trio.Nursery, settings: Settings, sql, mode):
    async with start_gateway(nursery, settings.replace(auth_mode=mode,
                                                       jwt_secret=SECRET)) as gateway:
        maker = (as_header(SANCTUARY) if mode == "header"
                 else {"Authorization": f"Bearer {token(SANCTUARY)}"})
        key = await create(gateway, maker)
        header = [(b"Authorization", f"Bearer {key['secret']}".encode())]
        async with connect(gateway, headers=header) as ws:
            sent = await gateway.client.post("/api/v1/messages",
                                             headers=key_auth(key["secret"]), json=SEND)
            assert sent.status_code == 201, sent.text
            assert lifecycle(await events(ws, 1)) == [
                ("message.created", sent.json()["message_id"], "pending")]


# Revoking.

async def test_a_revoked_key_is_refused_at_once(gateway: Gateway, sql):
    key = await create(gateway, as_header(SANCTUARY))
    kept = await create(gateway, as_header(SANCTUARY), "kept")
    assert await me(gateway, key["secret"]) == 200
    deleted = await gateway.client.delete(f"/api/v1/api-keys/{key['key_id']}",
                                          headers=key_auth(key["secret"]))
    assert (deleted.status_code, deleted.content) == (204, b"")
    refused = await gateway.client.get("/api/v1/me", headers=key_auth(key["secret"]))
    assert (refused.status_code, refused.headers["Content-Type"]) == (401, PROBLEM)
    assert refused.json()["detail"] == "the API key is not valid"
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert await me(gateway, kept["secret"]) == 200
    again = await gateway.client.delete(f"/api/v1/api-keys/{key['key_id']}",
                                        headers=as_header(SANCTUARY))
    assert (again.status_code, again.json()["type"]) == (404, "/problems/not-found")
    listing = (await gateway.get("/api/v1/api-keys", SANCTUARY)).json()
    assert [k["key_id"] for k in listing["api_keys"]] == [kept["key_id"]]


@pytest.mark.parametrize("path", [f"/api/v1/api-keys/{uuid.uuid4()}", "/api/v1/api-keys/nope"],
                         ids=["unknown", "malformed"])
async def test_revoking_an_unknown_key_is_not_found(gateway: Gateway, path):
    response = await gateway.client.delete(path, headers=as_header(SANCTUARY))
    assert (response.status_code, response.json()["type"]) == (404, "/problems/not-found")


async def test_another_users_key_is_not_found_and_stays(gateway: Gateway, sql):
    key = await create(gateway, as_header(SANCTUARY))
    response = await gateway.client.delete(f"/api/v1/api-keys/{key['key_id']}",
                                           headers=as_header(WANDERER))
    assert (response.status_code, response.json()["detail"]) == (404, "no such API key")
    assert await me(gateway, key["secret"]) == 200


async def test_a_revoke_holds_at_once_in_another_gateway_process(
        nursery: trio.Nursery, gateway: Gateway, settings: Settings):
    second = settings.replace(mqtt_client_id=f"{settings.mqtt_client_id}-second")
    async with start_gateway(nursery, second) as other:
        key = await create(gateway, as_header(SANCTUARY))
        assert (await me(gateway, key["secret"]), await me(other, key["secret"])) == (200, 200)
        deleted = await other.client.delete(f"/api/v1/api-keys/{key['key_id']}",
                                            headers=as_header(SANCTUARY))
        assert deleted.status_code == 204
        assert (await me(gateway, key["secret"]), await me(other, key["secret"])) == (401, 401)


# Bad keys.

VALID_SHAPE = "kosmo_sk_" + "A" * 43
BAD_KEYS = {
    "wrong-prefix": "kosmo_pk_" + "A" * 43,
    "upper-case-prefix": "KOSMO_SK_" + "A" * 43,
    "too-short": "kosmo_sk_" + "A" * 42,
    "too-long": "kosmo_sk_" + "A" * 44,
    "bare-prefix": "kosmo_sk_",
    "bad-characters": "kosmo_sk_" + "A" * 42 + "=",
    "non-ascii": "kosmo_sk_" + "é" * 43,
    "unknown": VALID_SHAPE,
}


def detail_of(name: str, mode: str) -> str:
    if name == "unknown":
        return "the API key is not valid"
    if name.startswith(("wrong-prefix", "upper-case")):  # not a key: the mode's own credential
        return "send the X-User-ID header" if mode == "header" else "the token is not valid"
    return "the API key is malformed"


@pytest.mark.parametrize("mode", ["header", "jwt"])
async def test_bad_keys_are_401_problems(nursery: trio.Nursery, settings: Settings, sql, mode):
    async with start_gateway(nursery, settings.replace(auth_mode=mode,
                                                       jwt_secret=SECRET)) as gateway:
        await create(gateway, as_header(SANCTUARY) if mode == "header"
                     else {"Authorization": f"Bearer {token(SANCTUARY)}"})
        for name, bad in BAD_KEYS.items():
            headers = {"Authorization": f"Bearer {bad}".encode()}
            for method, path in (("GET", "/api/v1/me"), ("POST", "/api/v1/messages"),
                                 ("GET", "/api/v1/api-keys"), ("POST", "/api/v1/api-keys"),
                                 ("GET", "/api/v1/stream")):
                response = await gateway.client.request(method, path, headers=headers,
                                                        json=SEND if method == "POST" else None)
                assert (response.status_code, response.headers["Content-Type"]) == (
                    401, PROBLEM), (name, path)
                assert response.json()["detail"] == detail_of(name, mode), (name, path)
                assert response.headers["WWW-Authenticate"] == "Bearer"
            refused = await handshake(gateway, {"Authorization": f"Bearer {bad}"})
            assert refused is not None
            assert (refused.status, refused.detail) == (401, detail_of(name, mode)), name
    assert db_value(sql, "SELECT count(*) FROM messages") == 0


@pytest.mark.parametrize(("body", "content_type", "status", "slug"), [
    pytest.param(b'{"name": "x"}', "text/plain", 415, "unsupported-media-type", id="415"),
    pytest.param(b'{"name": ', "application/json", 400, "invalid-json", id="400"),
    pytest.param(b'["x"]', "application/json", 422, "invalid-fields", id="not-object"),
    pytest.param(b'{}', "application/json", 422, "invalid-fields", id="no-name"),
    pytest.param(b'{"name": ""}', "application/json", 422, "invalid-fields", id="empty"),
    pytest.param(b'{"name": 7}', "application/json", 422, "invalid-fields", id="not-string"),
    pytest.param(('{"name": "%s"}' % ("n" * 101)).encode(), "application/json", 422,
                 "invalid-fields", id="too-long"),
    pytest.param(b'{"name": "a\\u0007"}', "application/json", 422, "invalid-fields",
                 id="control"),
])
async def test_a_bad_create_request_is_refused_before_the_plan(gateway: Gateway, sql, body,
                                                               content_type, status, slug):
    for user in (SANCTUARY, WANDERER):  # the body is checked first, whatever the plan
        response = await gateway.client.post("/api/v1/api-keys", content=body, headers={
            "Content-Type": content_type, **as_header(user)})
        assert (response.status_code, response.json()["type"]) == (status, f"/problems/{slug}")
    assert db_value(sql, "SELECT count(*) FROM api_keys") == 0


async def test_a_name_of_100_characters_is_accepted(gateway: Gateway):
    key = await create(gateway, as_header(SANCTUARY), "ü" * 100)
    assert key["name"] == "ü" * 100


async def test_key_routes_need_credentials(gateway: Gateway):
    for method, path in (("GET", "/api/v1/api-keys"), ("POST", "/api/v1/api-keys"),
                         ("DELETE", f"/api/v1/api-keys/{uuid.uuid4()}")):
        response = await gateway.client.request(method, path)
        assert (response.status_code, response.json()["type"]) == (401, "/problems/unauthorized")


@pytest.mark.allow_error_logs
async def test_nothing_is_logged_with_the_secret(gateway: Gateway, caplog):
    caplog.set_level(logging.DEBUG)
    key = await create(gateway, as_header(SANCTUARY))
    await me(gateway, key["secret"])
    await gateway.client.delete(f"/api/v1/api-keys/{key['key_id']}",
                                headers=key_auth(key["secret"]))
    await me(gateway, key["secret"])
    assert not [r for r in caplog.records if key["secret"][9:] in r.getMessage()]


# The database away.

async def test_a_key_while_the_database_is_away_is_503_not_500(
        nursery: trio.Nursery, settings: Settings,
        own_postgres: EmbeddedPostgres):  # noqa: F811 (the fixture imported above)
    settings = settings.replace(database_url=own_postgres.url, start_timeout=10.0)
    async with start_gateway(nursery, settings) as gateway:
        key = await create(gateway, as_header(SANCTUARY))
        await trio.to_thread.run_sync(own_postgres.stop)
        answers = [await gateway.client.get("/api/v1/me", headers=key_auth(key["secret"])),
                   await gateway.client.get("/api/v1/stream", headers=key_auth(key["secret"]))]
        refused = await handshake(gateway, key_auth(key["secret"]))
    for response in answers:
        assert (response.status_code, response.headers["Content-Type"]) == (503, PROBLEM)
        assert int(response.headers["Retry-After"]) > 0
    assert refused is not None
    assert (refused.status, refused.problem_type) == (503, "/problems/service-unavailable")
