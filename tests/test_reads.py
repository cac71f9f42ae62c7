"""Reads: a message with its history, conversations, pagination, and no leak across users."""

from __future__ import annotations

import trio

from tests.conftest import GUARDIAN, SANCTUARY, WANDERER, Gateway


async def test_message_detail_has_status_history(gateway: Gateway):
    created = (await gateway.send(WANDERER, "!a1b2c3d4", "hi")).json()
    detail = (await gateway.get(f"/api/v1/messages/{created['message_id']}", WANDERER)).json()
    assert detail["message_id"] == created["message_id"]
    assert detail["text"] == "hi"
    assert detail["status_history"][0]["status"] == "pending"
    assert detail["status_history"][0]["at"] == created["created_at"]


async def test_another_users_message_is_not_found(gateway: Gateway):
    created = (await gateway.send(WANDERER)).json()
    response = await gateway.get(f"/api/v1/messages/{created['message_id']}", SANCTUARY)
    assert response.status_code == 404
    assert response.json()["type"] == "/problems/not-found"
    unknown = await gateway.get("/api/v1/messages/8a6e0804-2bd0-4672-b79d-d97358571b11",
                                SANCTUARY)
    assert unknown.json() == response.json()  # the same answer: nothing leaks


async def test_two_users_messaging_one_node_see_only_their_own(gateway: Gateway):
    await gateway.send(WANDERER, "!a1b2c3d4", "from wanderer")
    await gateway.send(GUARDIAN, "!a1b2c3d4", "from guardian")
    for user, text in [(WANDERER, "from wanderer"), (GUARDIAN, "from guardian")]:
        listing = (await gateway.get("/api/v1/messages/conversations", user)).json()
        assert [c["node_id"] for c in listing["conversations"]] == ["!a1b2c3d4"]
        assert listing["conversations"][0]["message_count"] == 1
        assert listing["conversations"][0]["last_message"]["text"] == text
        thread = (await gateway.get("/api/v1/messages/conversations/!A1B2C3D4", user)).json()
        assert [m["text"] for m in thread["messages"]] == [text]


async def test_conversations_most_recent_first_with_cursor(gateway: Gateway):
    nodes = [f"!0000000{i}" for i in range(5)]
    for node in nodes:
        assert (await gateway.send(SANCTUARY, node)).status_code == 201
    await gateway.send(SANCTUARY, nodes[1], "again")
    seen, cursor = [], None
    with trio.fail_after(10):
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await gateway.get("/api/v1/messages/conversations", SANCTUARY,
                                      params=params)).json()
            seen += [(c["node_id"], c["message_count"]) for c in page["conversations"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen == [("!00000001", 2), ("!00000004", 1), ("!00000003", 1), ("!00000002", 1),
                    ("!00000000", 1)]


async def test_conversation_messages_oldest_first_with_cursor(gateway: Gateway):
    texts = [f"m{i}" for i in range(7)]
    for text in texts:
        await gateway.send(SANCTUARY, "!a1b2c3d4", text)
    await gateway.send(SANCTUARY, "!deadbeef", "elsewhere")
    got, cursor = [], None
    for _ in range(10):
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await gateway.get("/api/v1/messages/conversations/!a1b2c3d4", SANCTUARY,
                                  params=params)).json()
        assert page["node_id"] == "!a1b2c3d4"
        got += [m["text"] for m in page["messages"]]
        assert all(m["direction"] == "outbound" for m in page["messages"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert got == texts


async def test_empty_lists(gateway: Gateway):
    listing = (await gateway.get("/api/v1/messages/conversations", WANDERER)).json()
    assert listing == {"conversations": [], "next_cursor": None}
    thread = (await gateway.get("/api/v1/messages/conversations/!a1b2c3d4", WANDERER)).json()
    assert thread == {"node_id": "!a1b2c3d4", "messages": [], "next_cursor": None}


async def test_health_readiness_and_openapi(gateway: Gateway):
    assert (await gateway.client.get("/healthz")).json()["status"] == "ok"
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    spec = (await gateway.client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert "/api/v1/messages" in paths
    assert "/api/v1/messages/conversations/{node_id}" in paths
    assert "requestBody" in paths["/api/v1/messages"]["post"]


async def test_problem_types_resolve_and_405_says_what_is_allowed(gateway: Gateway):
    described = (await gateway.client.get("/problems/quota-exceeded")).json()
    assert described["type"] == "/problems/quota-exceeded"
    assert described["title"]
    assert (await gateway.client.get("/problems/no-such-thing")).status_code == 404
    response = await gateway.client.delete("/api/v1/messages")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


async def test_openapi_declares_problems_and_auth(gateway: Gateway):
    spec = (await gateway.client.get("/openapi.json")).json()
    post = spec["paths"]["/api/v1/messages"]["post"]
    assert {"201", "401", "403", "413", "415", "422", "429"} <= set(post["responses"])
    assert "user_id" in spec["components"]["securitySchemes"]
