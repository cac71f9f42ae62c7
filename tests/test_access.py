"""Access control: who may call what, and that no user sees or changes another user's data.

What this proves:
- Every route of the app is classified here as public or protected, and docs/http-api.md's
  endpoint table says the same; a route added without a place in this matrix fails the suite.
- Without valid credentials, every protected endpoint (HTTP and the websocket's handshake)
  answers 401 problem+json with ``WWW-Authenticate: Bearer`` and writes nothing; in jwt mode this
  holds for every kind of bad token, and header-mode credentials count for nothing. A valid token
  works on each endpoint, and its ``sub`` alone names the caller.
- Another user's message is a 404 exactly like one that does not exist; lists, conversations and
  the stream (live and resumed with ``since=``) carry only the caller's own messages and events;
  nothing another user does changes a user's messages or quota.
- Header mode is never a default: Settings and the CLI default to jwt, ``kosmo gateway`` without
  a JWT secret refuses to start, and ``kosmo up`` serves header mode only by setting it itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import jwt
import pytest
import trio
from trio_websocket import ConnectionRejected

from actors import gateway
from actors.http.app import create_app
from actors.http.services import Services
from kosmo import migrate, up
from kosmo.cli import build_parser
from kosmo.config import OPTIONS, Settings, load
from tests.conftest import GUARDIAN, WANDERER, Gateway, db_value, start_gateway
from tests.mesh import FakeBridgeLink
from tests.test_reports import status_of, wait_for
from tests.test_stream import connect, events, lifecycle, next_event

# Messages are handed to a bridge only while one is online: this one takes them all.
pytestmark = pytest.mark.usefixtures("online_bridge")

SECRET = "test-secret-with-enough-bytes-for-hs256"
NODE = "!a1b2c3d4"
UNKNOWN = "00000000-0000-4000-8000-000000000000"
SEND = {"target_node_id": NODE, "text": "hello"}
PROBLEM = "application/problem+json"
DOC = Path(__file__).resolve().parent.parent / "docs" / "http-api.md"

PUBLIC = {
    ("GET", "/healthz"): "/healthz",
    ("GET", "/readyz"): "/readyz",
    ("GET", "/openapi.json"): "/openapi.json",
    ("GET", "/docs"): "/docs",
    ("GET", "/problems/<slug>"): "/problems/unauthorized",
    ("GET", "/"): "/",
    ("GET", "/console/<name>"): "/console/console.js",
    ("GET", "/api/v1/console-config"): "/api/v1/console-config",
}
# Pages and files, not API operations: left out of the OpenAPI document.
NOT_IN_SPEC = ("/openapi.json", "/docs", "/", "/console/<name>")
PROTECTED = {
    ("POST", "/api/v1/messages"): "/api/v1/messages",
    ("GET", "/api/v1/messages/conversations"): "/api/v1/messages/conversations",
    ("GET", "/api/v1/messages/conversations/<node_id>"): f"/api/v1/messages/conversations/{NODE}",
    ("GET", "/api/v1/messages/<message_id>"): f"/api/v1/messages/{UNKNOWN}",
    ("DELETE", "/api/v1/messages/<message_id>"): f"/api/v1/messages/{UNKNOWN}",
    ("GET", "/api/v1/stream"): "/api/v1/stream",
    ("WEBSOCKET", "/api/v1/stream"): "/api/v1/stream",
    ("GET", "/api/v1/me"): "/api/v1/me",
    ("POST", "/api/v1/api-keys"): "/api/v1/api-keys",
    ("GET", "/api/v1/api-keys"): "/api/v1/api-keys",
    ("DELETE", "/api/v1/api-keys/<key_id>"): f"/api/v1/api-keys/{UNKNOWN}",
    ("POST", "/api/v1/webhooks"): "/api/v1/webhooks",
    ("GET", "/api/v1/webhooks"): "/api/v1/webhooks",
    ("DELETE", "/api/v1/webhooks/<webhook_id>"): f"/api/v1/webhooks/{UNKNOWN}",
    ("GET", "/api/v1/webhooks/<webhook_id>/deliveries"): f"/api/v1/webhooks/{UNKNOWN}/deliveries",
}
PROTECTED_HTTP = [(method, path) for (method, _), path in PROTECTED.items()
                  if method != "WEBSOCKET"]


class Answer(NamedTuple):
    status: int
    content_type: str | None
    problem_type: str | None
    www_authenticate: str | None
    detail: str | None


def unauthorized(detail: str) -> Answer:
    return Answer(401, PROBLEM, "/problems/unauthorized", "Bearer", detail)


UPGRADE = Answer(426, PROBLEM, "/problems/bad-request", None,
                 "this path serves a websocket: send an upgrade")


def token(sub: Any = WANDERER, *, key: str | None = SECRET, algorithm: str = "HS256",
          drop: tuple[str, ...] = (), **claims: Any) -> str:
    payload = {"sub": str(sub), "exp": int(time.time()) + 60, **claims}
    for name in drop:
        del payload[name]
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(user: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def as_header(user: Any) -> dict[str, str]:
    return {"X-User-ID": str(user)}


def app_routes(mode: str) -> set[tuple[str, str]]:
    app = create_app(Settings(database_url="", auth_mode=mode, jwt_secret=SECRET),
                     Services(None, None, lambda: False, None, trio.Event()))  # type: ignore[arg-type]
    return {("WEBSOCKET" if rule.websocket else method, rule.rule)
            for rule in app.url_map.iter_rules()
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}


def documented_routes() -> dict[tuple[str, str], bool]:
    """The endpoint table of docs/http-api.md: (method, rule) -> needs a caller. The websocket's
    row also stands for the plain GET on its path, which answers in its place."""
    table = {}
    for method, path, auth in re.findall(r"^\| (GET|POST|DELETE|GET \(websocket\)) \| `([^`]+)` \| "
                                         r"(yes|no) \|", DOC.read_text(), re.MULTILINE):
        rule = re.sub(r"\{(\w+)\}", r"<\1>", path)
        if method == "GET (websocket)":
            table["WEBSOCKET", rule] = auth == "yes"
            method = "GET"
        table[method, rule] = auth == "yes"
    return table


def answer_of(status: int, headers: dict[str, str], body: bytes) -> Answer:
    problem = json.loads(body) if headers.get("content-type") == PROBLEM else {}
    return Answer(status, headers.get("content-type"), problem.get("type"),
                  headers.get("www-authenticate"), problem.get("detail"))


async def handshake(gateway: Gateway, headers: dict[str, str],
                    query: dict[str, str] | None = None) -> Answer | None:
    """The websocket's refusal as an Answer, or None when the handshake was accepted."""
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    refused = None
    try:
        async with connect(gateway, headers=raw, **(query or {})) as ws:
            await ws.ping()
    except* ConnectionRejected as group:
        refused = group.exceptions[0]
    if refused is None:
        return None
    assert isinstance(refused, ConnectionRejected)
    return answer_of(refused.status_code,
                     {k.decode().lower(): v.decode() for k, v in refused.headers},
                     refused.body or b"")


async def protected_answers(gateway: Gateway, headers: dict[str, str],
                            query: dict[str, str] | None = None) -> dict[str, Answer | None]:
    """What each protected endpoint answers to these credentials."""
    out: dict[str, Answer | None] = {}
    for (method, rule), path in PROTECTED.items():
        if method == "WEBSOCKET":
            out[f"{method} {rule}"] = await handshake(gateway, headers, query)
            continue
        response = await gateway.client.request(method, path, headers=headers, params=query,
                                                json=SEND if method == "POST" else None)
        out[f"{method} {rule}"] = answer_of(response.status_code,
                                            {k.lower(): v for k, v in response.headers.items()},
                                            response.content)
    return out


def everywhere(answer: Answer) -> dict[str, Answer | None]:
    return {f"{method} {rule}": answer for method, rule in PROTECTED}


def stream(websocket: Answer | None) -> dict[str, Answer | None]:
    """The stream's answers: a plain GET that passes the credentials check is told to upgrade;
    ``None`` is an accepted handshake."""
    return {"GET /api/v1/stream": UPGRADE if websocket is None else websocket,
            "WEBSOCKET /api/v1/stream": websocket}


def nothing_written(sql: Any) -> bool:
    return all(db_value(sql, f"SELECT count(*) FROM {table}") == 0
               for table in ("messages", "message_status_history", "quota_usage"))


@pytest.fixture
async def jwt_gateway(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[Gateway]:
    async with start_gateway(nursery, settings.replace(auth_mode="jwt", jwt_secret=SECRET)) as gw:
        yield gw


@pytest.fixture
async def bridge(mqtt_url: str, topic_root: str) -> AsyncIterator[FakeBridgeLink]:
    link = FakeBridgeLink(mqtt_url, topic_root)
    yield link
    link.close()


# The route matrix.

@pytest.mark.parametrize("mode", ["header", "jwt"])
def test_every_route_is_classified_public_or_protected(mode: str):
    assert not set(PUBLIC) & set(PROTECTED)
    assert app_routes(mode) == set(PUBLIC) | set(PROTECTED)


def test_the_documented_endpoint_table_agrees():
    expected = {route: False for route in PUBLIC} | {route: True for route in PROTECTED}
    assert documented_routes() == expected


@pytest.mark.parametrize("mode", ["header", "jwt"])
async def test_public_routes_need_no_credentials(nursery, settings: Settings, mode):
    async with start_gateway(nursery, settings.replace(auth_mode=mode,
                                                       jwt_secret=SECRET)) as gateway:
        answered = {path: (await gateway.client.get(path)).status_code
                    for path in PUBLIC.values()}
        spec = (await gateway.client.get("/openapi.json")).json()
    assert answered == {path: 200 for path in PUBLIC.values()}
    # The description says the same: public operations need no scheme, the rest the global one.
    # An API key is the other credential, in both modes.
    assert spec["security"] == [{"user_id" if mode == "header" else "bearer": []},
                                {"api_key": []}]
    needs = {(method.upper(), path.replace("{", "<").replace("}", ">")): op.get("security")
             for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert needs == {route: ([] if route in PUBLIC else None) for route in needs}
    assert {route for route in needs if route in PUBLIC} == {
        route for route in PUBLIC if route[1] not in NOT_IN_SPEC}


# No credentials.

@pytest.mark.parametrize(("mode", "detail"), [
    pytest.param("header", "send the X-User-ID header", id="header"),
    pytest.param("jwt", "send Authorization: Bearer <token>", id="jwt"),
])
async def test_protected_endpoints_refuse_no_credentials(nursery, settings: Settings, sql,
                                                         mode, detail):
    async with start_gateway(nursery, settings.replace(auth_mode=mode,
                                                       jwt_secret=SECRET)) as gateway:
        assert await protected_answers(gateway, {}) == everywhere(unauthorized(detail))
        heads = {path: (await gateway.client.head(path)) for method, path in PROTECTED_HTTP
                 if method == "GET"}
        assert gateway.running.events.statistics().subscribers == 0
    assert {path: (r.status_code, r.headers["Content-Type"], r.headers["WWW-Authenticate"])
            for path, r in heads.items()} == {path: (401, PROBLEM, "Bearer") for path in heads}
    assert nothing_written(sql)


async def test_options_reveal_only_the_allowed_methods(gateway: Gateway):
    for method, path in PROTECTED_HTTP:
        response = await gateway.client.options(path)
        assert (response.status_code, response.content) == (200, b""), path
        assert method in response.headers["Allow"], path


# jwt mode: bad tokens.

NO_BEARER = "send Authorization: Bearer <token>"
NOT_VALID = "the token is not valid"


@pytest.mark.parametrize(("headers", "detail"), [
    pytest.param(lambda: {"Authorization": f"Bearer {token(exp=int(time.time()) - 10)}"},
                 "the token has expired", id="expired"),
    pytest.param(lambda: {"Authorization": f"Bearer {token(key=None, algorithm='none')}"},
                 NOT_VALID, id="unsigned-alg-none"),
    pytest.param(lambda: {"Authorization": "Bearer " + token(
        key="another-secret-of-sufficient-length")}, NOT_VALID, id="other-secret"),
    pytest.param(lambda: {"Authorization": "Bearer " + token(
        key=SECRET + SECRET, algorithm="HS512")}, NOT_VALID, id="other-algorithm"),
    pytest.param(lambda: {"Authorization": f"Bearer {token(drop=('sub',))}"}, NOT_VALID,
                 id="no-sub"),
    pytest.param(lambda: {"Authorization": f"Bearer {token(drop=('exp',))}"}, NOT_VALID,
                 id="no-exp"),
    pytest.param(lambda: {"Authorization": f"Bearer {token(sub='alice')}"},
                 "the token's sub must be a user id (UUID)", id="sub-not-uuid"),
    pytest.param(lambda: {"Authorization": "Bearer " + jwt.encode(
        {"sub": 11, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")}, NOT_VALID,
        id="sub-not-a-string"),
    pytest.param(lambda: {"Authorization": f"Bearer {token(nbf=int(time.time()) + 600)}"},
                 NOT_VALID, id="not-yet-valid"),
    pytest.param(lambda: {"Authorization": f"Bearer {token(iat=int(time.time()) + 600)}"},
                 NOT_VALID, id="issued-in-the-future"),
    pytest.param(lambda: {"Authorization": f"Bearer {token(aud='someone-else')}"}, NOT_VALID,
                 id="audience"),
    pytest.param(lambda: {"Authorization": "Bearer not.a.token"}, NOT_VALID, id="garbage"),
    pytest.param(lambda: {"Authorization": f"Bearer {token()[:-4]}"}, NOT_VALID,
                 id="truncated"),
    pytest.param(lambda: {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}, NO_BEARER,
                 id="basic-scheme"),
    pytest.param(lambda: {"Authorization": token()}, NO_BEARER, id="no-scheme"),
    pytest.param(lambda: {"Authorization": "Bearer"}, NO_BEARER, id="empty-bearer"),
    pytest.param(lambda: {"Authorization": ""}, NO_BEARER, id="empty-header"),
    pytest.param(lambda: as_header(WANDERER), NO_BEARER, id="x-user-id"),
])
async def test_bad_tokens_are_refused_everywhere(jwt_gateway: Gateway, sql, headers, detail):
    assert await protected_answers(jwt_gateway, headers()) == everywhere(unauthorized(detail))
    assert nothing_written(sql)


@pytest.mark.parametrize(("query", "on_the_stream"), [
    pytest.param(lambda: {"token": "not.a.token"}, unauthorized(NOT_VALID), id="garbage"),
    pytest.param(lambda: {"token": ""}, unauthorized(NO_BEARER), id="empty"),
    pytest.param(lambda: {"user_id": str(WANDERER)}, unauthorized(NO_BEARER), id="user-id"),
    pytest.param(lambda: {"token": token()}, None, id="valid"),
])
async def test_query_credentials_count_only_on_the_stream(jwt_gateway: Gateway, sql, query,
                                                          on_the_stream):
    answers = await protected_answers(jwt_gateway, {}, query())
    assert answers == everywhere(unauthorized(NO_BEARER)) | stream(on_the_stream)
    assert nothing_written(sql)


async def test_a_valid_token_works_on_every_endpoint(jwt_gateway: Gateway):
    auth = bearer(WANDERER)
    async with connect(jwt_gateway, headers=[(b"Authorization", auth["Authorization"].encode())]
                       ) as by_header, connect(jwt_gateway, token=token()) as by_query:
        created = await jwt_gateway.client.post("/api/v1/messages", headers=auth, json=SEND)
        assert created.status_code == 201, created.text
        message_id = created.json()["message_id"]
        for ws in (by_header, by_query):
            assert lifecycle(await events(ws, 1)) == [("message.created", message_id, "pending")]
    reads = {
        "/api/v1/messages/conversations": 200,
        f"/api/v1/messages/conversations/{NODE}": 200,
        created.headers["Location"]: 200,
        "/api/v1/stream": 426,
    }
    answered = {path: (await jwt_gateway.client.get(path, headers=auth)).status_code
                for path in reads}
    assert answered == reads


async def test_only_the_tokens_sub_names_the_caller(jwt_gateway: Gateway, sql):
    claimed = [(b"Authorization", f"Bearer {token(GUARDIAN)}".encode()),
               (b"X-User-ID", str(WANDERER).encode())]
    async with connect(jwt_gateway, headers=claimed, user_id=WANDERER) as ws:
        theirs = await jwt_gateway.client.post("/api/v1/messages", headers=bearer(WANDERER),
                                               json=SEND)
        created = await jwt_gateway.client.post(
            "/api/v1/messages", headers={**bearer(GUARDIAN), **as_header(WANDERER)},
            json={**SEND, "user_id": str(WANDERER)})
        assert (theirs.status_code, created.status_code) == (201, 201), created.text
        assert (await next_event(ws))["message"]["message_id"] == created.json()["message_id"]
    owner = db_value(sql, "SELECT user_id FROM messages WHERE id = %s",
                     created.json()["message_id"])
    assert owner == GUARDIAN
    listing = await jwt_gateway.client.get("/api/v1/messages/conversations",
                                           headers={**bearer(WANDERER), **as_header(GUARDIAN)})
    assert [c["last_message"]["message_id"] for c in listing.json()["conversations"]] == [
        theirs.json()["message_id"]]
    assert db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s", WANDERER) == 1


# header mode: the X-User-ID header, or ?user_id= on the stream only.

@pytest.mark.parametrize(("headers", "query", "detail"), [
    pytest.param(lambda: {"X-User-ID": "alice"}, dict, "X-User-ID must be a UUID",
                 id="not-uuid"),
    pytest.param(lambda: {"X-User-ID": ""}, dict, "send the X-User-ID header", id="empty"),
    pytest.param(lambda: bearer(WANDERER), dict, "send the X-User-ID header", id="bearer-token"),
    pytest.param(dict, lambda: {"token": token()}, "send the X-User-ID header",
                 id="query-token"),
])
async def test_bad_header_credentials_are_refused_everywhere(gateway: Gateway, sql, headers,
                                                             query, detail):
    answers = await protected_answers(gateway, headers(), query())
    assert answers == everywhere(unauthorized(detail))
    assert nothing_written(sql)


async def test_user_id_in_the_query_counts_only_on_the_stream(gateway: Gateway, sql):
    answers = await protected_answers(gateway, {}, {"user_id": str(WANDERER)})
    assert answers == everywhere(unauthorized("send the X-User-ID header")) | stream(None)
    assert nothing_written(sql)


# Another user's data.

class History(NamedTuple):
    theirs: list[str]  # the owner's outbound messages and the reply threaded to them
    others: list[str]  # the other user's message to the same node
    unassigned: str  # a reply nobody owns


async def queued(gateway: Gateway, sql: Any, user: Any, node: str = NODE) -> str:
    response = await gateway.send(user, node, f"from {user}")
    assert response.status_code == 201, response.text
    message_id: str = response.json()["message_id"]
    await wait_for(lambda: status_of(sql, message_id) == "queued")
    return message_id


async def inbound(bridge: FakeBridgeLink, sql: Any, node: str, packet_id: int,
                  reply_to: int | None = None) -> str:
    bridge.reply(node, "answer", packet_id, reply_to=reply_to)
    query = "SELECT id FROM messages WHERE direction = 'inbound' AND packet_id = %s"
    await wait_for(lambda: db_value(sql, query, packet_id) is not None)
    return str(db_value(sql, query, packet_id))


async def two_users(gateway: Gateway, sql: Any, bridge: FakeBridgeLink) -> History:
    """WANDERER messages two nodes and gets a reply from one; GUARDIAN then messages the same
    node; a third node's reply is unassigned."""
    first = await queued(gateway, sql, WANDERER)
    sql.execute("UPDATE messages SET packet_id = 1001 WHERE id = %s", (first,))
    second = await queued(gateway, sql, WANDERER, "!deadbeef")
    others = await queued(gateway, sql, GUARDIAN)
    reply = await inbound(bridge, sql, NODE, 5001, reply_to=1001)
    assert db_value(sql, "SELECT user_id FROM messages WHERE id = %s", reply) == WANDERER
    unassigned = await inbound(bridge, sql, "!0badf00d", 5002)
    return History([first, second, reply], [others], unassigned)


def snapshot(sql: Any, user: Any) -> tuple[list[Any], list[Any], list[Any]]:
    messages = sql.execute("SELECT id, status, text, updated_at, charged FROM messages"
                           " WHERE user_id = %s ORDER BY id", (user,)).fetchall()
    history = sql.execute("SELECT h.id, h.status FROM message_status_history h JOIN messages m"
                          " ON m.id = h.message_id WHERE m.user_id = %s ORDER BY h.id",
                          (user,)).fetchall()
    quota = sql.execute("SELECT period_start, used FROM quota_usage WHERE user_id = %s",
                        (user,)).fetchall()
    return messages, history, quota


async def test_another_users_message_is_not_found(gateway: Gateway, sql, bridge):
    history = await two_users(gateway, sql, bridge)
    unknown = await gateway.get(f"/api/v1/messages/{UNKNOWN}", GUARDIAN)
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "no such message"
    for message_id in [*history.theirs, history.unassigned]:
        response = await gateway.get(f"/api/v1/messages/{message_id}", GUARDIAN)
        assert (response.status_code, response.headers["Content-Type"], response.content) == (
            404, PROBLEM, unknown.content), message_id
    for message_id in history.theirs:
        assert (await gateway.get(f"/api/v1/messages/{message_id}", WANDERER)).status_code == 200
    unassigned = await gateway.get(f"/api/v1/messages/{history.unassigned}", WANDERER)
    assert unassigned.status_code == 404


async def test_lists_and_conversations_hold_only_the_callers_messages(gateway: Gateway, sql,
                                                                       bridge):
    history = await two_users(gateway, sql, bridge)

    async def listing(user: Any, path: str, **params: Any) -> dict[str, Any]:
        response = await gateway.get(path, user, params=params)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page

    def ids(page: dict[str, Any]) -> list[str]:
        return [m["message_id"] for m in page["messages"]]

    lists = "/api/v1/messages/conversations"
    node = f"{lists}/{NODE}"
    mine = await listing(GUARDIAN, lists)
    assert [(c["node_id"], c["message_count"], c["last_message"]["message_id"])
            for c in mine["conversations"]] == [(NODE, 1, history.others[0])]
    assert ids(await listing(GUARDIAN, node)) == history.others
    assert ids(await listing(GUARDIAN, f"{lists}/!deadbeef")) == []
    assert ids(await listing(GUARDIAN, f"{lists}/!0badf00d")) == []
    assert ids(await listing(WANDERER, node)) == [history.theirs[0], history.theirs[2]]

    their_page = await listing(WANDERER, node, limit=1)
    assert ids(await listing(GUARDIAN, node, cursor=their_page["next_cursor"])
               ) == history.others
    their_list = await listing(WANDERER, lists, limit=1)
    rest = await listing(GUARDIAN, lists, cursor=their_list["next_cursor"])
    assert {c["last_message"]["message_id"] for c in rest["conversations"]} <= set(
        history.others)


async def test_the_stream_carries_only_the_callers_events(gateway: Gateway, sql, bridge):
    async with connect(gateway, user_id=WANDERER) as theirs, \
            connect(gateway, user_id=GUARDIAN) as mine:
        history = await two_users(gateway, sql, bridge)
        their_events = await events(theirs, 5)
        assert {e["message"]["message_id"] for e in their_events} == set(history.theirs)
        sentinel = (await gateway.send(GUARDIAN, NODE, "sentinel")).json()["message_id"]
        received = [await next_event(mine)]
        while received[-1]["message"]["message_id"] != sentinel:
            received.append(await next_event(mine))
    assert lifecycle(received) == [("message.created", history.others[0], "pending"),
                                   ("message.status", history.others[0], "queued"),
                                   ("message.created", sentinel, "pending")]

    async with connect(gateway, user_id=GUARDIAN, since="0") as resumed:
        replayed = [await next_event(resumed)]
        while replayed[-1]["message"]["message_id"] != sentinel or replayed[-1]["type"] != (
                "message.status"):
            replayed.append(await next_event(resumed))
        live = (await gateway.send(GUARDIAN, NODE, "live")).json()["message_id"]
        assert lifecycle(await events(resumed, 1)) == [("message.created", live, "pending")]
    assert {e["message"]["message_id"] for e in replayed} == {history.others[0], sentinel}
    assert not {e["event_id"] for e in their_events} & {e["event_id"] for e in replayed}


async def test_nothing_another_user_does_changes_yours(gateway: Gateway, sql, bridge):
    history = await two_users(gateway, sql, bridge)
    before = snapshot(sql, WANDERER)
    mine_before = db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s", GUARDIAN)

    forged = await gateway.client.post(
        "/api/v1/messages", headers=as_header(GUARDIAN),
        json={**SEND, "user_id": str(WANDERER), "message_id": history.theirs[0],
              "status": "delivered"})
    assert forged.status_code == 201, forged.text
    created = forged.json()
    assert created["message_id"] not in history.theirs
    assert created["status"] == "pending"
    assert db_value(sql, "SELECT user_id FROM messages WHERE id = %s",
                    created["message_id"]) == GUARDIAN
    for message_id in history.theirs:
        path = f"/api/v1/messages/{message_id}"
        for method in ("DELETE", "PUT", "PATCH", "POST"):
            answer = await gateway.client.request(method, path, headers=as_header(GUARDIAN),
                                                  json={"status": "failed"})
            unknown = await gateway.client.request(method, f"/api/v1/messages/{UNKNOWN}",
                                                   headers=as_header(GUARDIAN),
                                                   json={"status": "failed"})
            # DELETE (cancel) is a route of its own: another user's message is not found.
            assert answer.status_code == (404 if method == "DELETE" else 405), (method,
                                                                                answer.text)
            assert answer.content == unknown.content
        assert (await gateway.get(path, GUARDIAN)).status_code == 404
    async with connect(gateway, user_id=GUARDIAN, since="0") as ws:
        await next_event(ws)
    await wait_for(lambda: status_of(sql, created["message_id"]) == "queued")

    assert snapshot(sql, WANDERER) == before
    assert db_value(sql, "SELECT used FROM quota_usage WHERE user_id = %s",
                    GUARDIAN) == mine_before + 1


# Header mode is never a default.

def test_jwt_is_the_default_auth_mode():
    assert Settings(database_url="").auth_mode == "jwt"
    assert OPTIONS["auth_mode"].default == "jwt"
    assert load({"KOSMO_DATABASE_URL": "postgresql://u@h/db"}).auth_mode == "jwt"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    kosmo = Path(sys.executable).with_name("kosmo")
    return subprocess.run([str(kosmo), *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("auth", [
    pytest.param({}, id="nothing-set"),
    pytest.param({"KOSMO_AUTH_MODE": "jwt"}, id="jwt-without-secret"),
    pytest.param({"KOSMO_JWT_SECRET": ""}, id="empty-secret"),
])
def test_the_gateway_will_not_serve_without_a_jwt_secret(database_url, mqtt_url, topic_root,
                                                         auth):
    result = cli({"KOSMO_DATABASE_URL": database_url, "KOSMO_MQTT_URL": mqtt_url,
                  "KOSMO_MQTT_TOPIC_ROOT": topic_root, "KOSMO_HTTP_BIND": "127.0.0.1:0", **auth},
                 "gateway")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "kosmo: error: KOSMO_JWT_SECRET is not set: jwt auth mode needs a secret "
        "(or set KOSMO_AUTH_MODE=header for development)"]


class _Stopped(Exception):
    pass


class _Service:
    implementation = "stub"

    def __init__(self, url: str) -> None:
        self.url = url

    def stop(self) -> None:
        pass


async def test_kosmo_up_serves_header_mode_only_because_it_sets_it(monkeypatch, tmp_path):
    """``kosmo up`` hands the gateway header mode even when the environment asks for jwt; the
    same environment without up's own setting loads as jwt. tests/test_up.py runs it whole."""
    handed: list[Settings] = []

    async def serve(settings: Settings, shutdown: trio.Event, **_: Any) -> None:
        handed.append(settings)
        raise _Stopped

    monkeypatch.setattr(up, "start_postgres", lambda _: _Service("postgresql://u@h/db"))
    monkeypatch.setattr(up, "start_broker", lambda _: _Service("mqtt://127.0.0.1:1"))
    monkeypatch.setattr(migrate, "migrate", lambda _: [])
    monkeypatch.setattr(migrate, "seed", lambda _: None)
    monkeypatch.setattr(gateway, "run_gateway", serve)  # up imports it when it runs
    args = build_parser().parse_args(["up", "--data-dir", str(tmp_path)])
    assert not hasattr(args, "auth_mode")
    environ = {"KOSMO_AUTH_MODE": "jwt"}
    with pytest.RaisesGroup(_Stopped, allow_unwrapped=True, flatten_subgroups=True):
        await up.run_up(args, environ, trio.Event())
    assert [s.auth_mode for s in handed] == ["header"]
    assert load({**environ, "KOSMO_DATABASE_URL": "postgresql://u@h/db"}, args).auth_mode == "jwt"
