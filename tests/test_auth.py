"""Authentication: HS256 bearer tokens in jwt mode, X-User-ID only in header mode."""

from __future__ import annotations

import time

import jwt
import pytest

from kosmo.config import Settings
from tests.conftest import WANDERER, Gateway, start_gateway

SECRET = "test-secret-with-enough-bytes-for-hs256"


def token(**claims) -> str:
    return jwt.encode({"sub": str(WANDERER), "exp": int(time.time()) + 60, **claims}, SECRET,
                      algorithm="HS256")


@pytest.fixture
async def jwt_gateway(nursery, settings: Settings):
    async with start_gateway(nursery, settings.replace(auth_mode="jwt", jwt_secret=SECRET)) as gw:
        yield gw


async def test_valid_token_sends_and_reads(jwt_gateway: Gateway):
    auth = {"Authorization": f"Bearer {token()}"}
    created = await jwt_gateway.client.post(
        "/api/v1/messages", headers=auth, json={"target_node_id": "!a1b2c3d4", "text": "hi"})
    assert created.status_code == 201, created.text
    detail = await jwt_gateway.client.get(created.headers["Location"], headers=auth)
    assert detail.status_code == 200


def _unsigned() -> str:
    return jwt.encode({"sub": str(WANDERER), "exp": int(time.time()) + 60}, None,
                      algorithm="none")


@pytest.mark.parametrize("bad", [
    pytest.param(lambda: token(exp=int(time.time()) - 10), id="expired"),
    pytest.param(_unsigned, id="alg-none"),
    pytest.param(lambda: jwt.encode({"sub": str(WANDERER), "exp": int(time.time()) + 60},
                                    "another-secret-of-sufficient-length", algorithm="HS256"),
                 id="other-secret"),
    pytest.param(lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
                 id="no-sub"),
    pytest.param(lambda: jwt.encode({"sub": str(WANDERER)}, SECRET, algorithm="HS256"),
                 id="no-exp"),
    pytest.param(lambda: token(sub="alice"), id="sub-not-uuid"),
    pytest.param(lambda: "not.a.token", id="garbage"),
])
async def test_bad_tokens_are_401(jwt_gateway: Gateway, sql, bad):
    auth = {"Authorization": f"Bearer {bad()}"}
    for method, path in [("POST", "/api/v1/messages"), ("GET", "/api/v1/messages/conversations"),
                         ("GET", "/api/v1/messages/conversations/!a1b2c3d4"),
                         ("GET", f"/api/v1/messages/{WANDERER}")]:
        response = await jwt_gateway.client.request(
            method, path, headers=auth, json={"target_node_id": "!a1b2c3d4", "text": "hi"})
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert sql.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


async def test_header_mode_credential_is_ignored_in_jwt_mode(jwt_gateway: Gateway):
    response = await jwt_gateway.get("/api/v1/messages/conversations", WANDERER)
    assert response.status_code == 401
