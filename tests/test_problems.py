"""Malformed input: every error is RFC 9457 problem+json, in the documented precedence."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio

from kosmo.api.problems import TITLES
from tests.conftest import WANDERER, Gateway, db_value

DOC = Path(__file__).resolve().parent.parent / "docs" / "http-api.md"

URL = "/api/v1/messages"
USER = {"X-User-ID": str(WANDERER)}
JSON = {"Content-Type": "application/json"}
GOOD = json.dumps({"target_node_id": "!a1b2c3d4", "text": "hi"}).encode()


def assert_problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == status
    assert body["title"]
    return body


@pytest.mark.parametrize(("headers", "body", "status", "slug"), [
    # 413 wins over everything: the body is judged before the caller.
    ({}, b"x" * (16 * 1024 + 1), 413, "body-too-large"),
    # 401 before 415.
    ({"Content-Type": "text/plain"}, GOOD, 401, "unauthorized"),
    ({**USER, "Content-Type": "text/plain"}, GOOD, 415, "unsupported-media-type"),
    ({**USER}, GOOD, 415, "unsupported-media-type"),
    # 415 before 400.
    ({**USER, "Content-Type": "text/plain"}, b"{not json", 415, "unsupported-media-type"),
    ({**USER, **JSON}, b"{not json", 400, "invalid-json"),
    ({**USER, **JSON}, b"\xff\xfe{}", 400, "invalid-json"),
    ({**USER, **JSON}, b"", 400, "invalid-json"),
    ({**USER, **JSON}, b"[" * 8000 + b"]" * 8000, 400, "invalid-json"),
    ({**USER, **JSON}, b"[]", 422, "invalid-fields"),
    ({**USER, **JSON}, b'"text"', 422, "invalid-fields"),
    ({**USER, **JSON}, b"{}", 422, "invalid-fields"),
    ({"X-User-ID": "not-a-uuid", **JSON}, GOOD, 401, "unauthorized"),
])
async def test_precedence(gateway: Gateway, sql, headers, body, status, slug):
    response = await gateway.client.post(URL, content=body, headers=headers)
    assert_problem(response, status, slug)
    assert db_value(sql, "SELECT count(*) FROM messages") == 0


@pytest.mark.parametrize(("fields", "field"), [
    ({"target_node_id": "a1b2c3d4", "text": "hi"}, "target_node_id"),
    ({"target_node_id": "!a1b2c3d", "text": "hi"}, "target_node_id"),
    ({"target_node_id": "!a1b2c3dg", "text": "hi"}, "target_node_id"),
    ({"target_node_id": "!a1b2c3d4\n", "text": "hi"}, "target_node_id"),  # not the same node
    ({"target_node_id": 12345678, "text": "hi"}, "target_node_id"),
    ({"target_node_id": None, "text": "hi"}, "target_node_id"),
    ({"target_node_id": "!a1b2c3d4", "text": ""}, "text"),
    ({"target_node_id": "!a1b2c3d4", "text": 5}, "text"),
    ({"target_node_id": "!a1b2c3d4", "text": ["hi"]}, "text"),
    ({"target_node_id": "!a1b2c3d4", "text": "x" * 201}, "text"),
    ({"target_node_id": "!a1b2c3d4", "text": "é" * 101}, "text"),  # 202 bytes
    ({"target_node_id": "!a1b2c3d4", "text": "bell\x07"}, "text"),
    ({"target_node_id": "!a1b2c3d4", "text": "nul\x00"}, "text"),
    ({"target_node_id": "!a1b2c3d4", "text": "del\x7f"}, "text"),
    ({"target_node_id": "!a1b2c3d4", "text": "c1\x85"}, "text"),
    ({"target_node_id": "!a1b2c3d4", "text": "lone \ud800"}, "text"),
    ({"text": "hi"}, "target_node_id"),
])
async def test_invalid_fields(gateway: Gateway, sql, fields, field):
    body = json.dumps(fields).encode()
    response = await gateway.client.post(URL, content=body, headers={**USER, **JSON})
    problem = assert_problem(response, 422, "invalid-fields")
    assert field in [e["field"] for e in problem["errors"]]
    assert db_value(sql, "SELECT count(*) FROM quota_usage") == 0


@pytest.mark.parametrize("text", ["x" * 200, "é" * 100, "line\nnext\ttab", "emoji 🛰️ ok"])
async def test_valid_texts_are_accepted(gateway: Gateway, text):
    response = await gateway.send(WANDERER, "!a1b2c3d4", text)
    assert response.status_code == 201, response.text
    assert response.json()["text"] == text


async def test_chunked_body_over_the_limit_is_413(gateway: Gateway):
    async def chunks():
        for _ in range(20):
            yield b"x" * 1024

    response = await gateway.client.post(URL, content=chunks(), headers={**USER, **JSON})
    assert_problem(response, 413, "body-too-large")


@pytest.mark.parametrize(("method", "path", "status", "slug"), [
    ("GET", "/nope", 404, "not-found"),
    ("GET", "/api/v1/messages/not-a-uuid", 404, "not-found"),
    ("GET", "/api/v1/messages/00000000-0000-0000-0000-000000000000", 404, "not-found"),
    ("GET", "/api/v1/messages/conversations/not-a-node", 404, "not-found"),
    ("GET", "/api/v1/messages/conversations?limit=0", 422, "invalid-fields"),
    ("GET", "/api/v1/messages/conversations?limit=201", 422, "invalid-fields"),
    ("GET", "/api/v1/messages/conversations?limit=abc", 422, "invalid-fields"),
    ("GET", "/api/v1/messages/conversations?limit=%C2%B2", 422, "invalid-fields"),  # "²"
    ("GET", "/api/v1/messages/conversations?cursor=%%%", 422, "invalid-fields"),
    ("GET", "/api/v1/messages/conversations?cursor=WyJ4Il0", 422, "invalid-fields"),
    ("GET", "/api/v1/messages/conversations/!a1b2c3d4?cursor=WyJ4IiwieSJd", 422,
     "invalid-fields"),
    ("DELETE", "/api/v1/messages", 405, "method-not-allowed"),
    ("DELETE", "/api/v1/messages/not-a-uuid", 404, "not-found"),
    ("DELETE", "/api/v1/messages/00000000-0000-0000-0000-000000000000", 404, "not-found"),
    ("PUT", "/api/v1/messages/00000000-0000-0000-0000-000000000000", 405, "method-not-allowed"),
    ("PUT", "/api/v1/messages/conversations", 405, "method-not-allowed"),
])
async def test_path_and_query_errors(gateway: Gateway, method, path, status, slug):
    response = await gateway.client.request(method, path, headers=USER)
    assert_problem(response, status, slug)


async def test_missing_credentials_on_reads(gateway: Gateway):
    for path in ["/api/v1/messages/conversations", "/api/v1/messages/conversations/!a1b2c3d4",
                 "/api/v1/messages/00000000-0000-0000-0000-000000000000"]:
        assert_problem(await gateway.client.get(path), 401, "unauthorized")
    assert_problem(await gateway.client.delete(
        "/api/v1/messages/00000000-0000-0000-0000-000000000000"), 401, "unauthorized")


async def test_garbage_requests_never_yield_500(gateway: Gateway):
    bodies = [b"\x00" * 100, b'{"target_node_id": "!a1b2c3d4", "text": "' + b"\\ud800" + b'"}',
              b'{"target_node_id": "!a1b2c3d4", "text": "a", "text": 1}', b"1e999999",
              b'{"target_node_id": {"$gt": ""}, "text": "x"}', b"null", b"NaN"]
    async with trio.open_nursery() as nursery:
        for body in bodies:
            for ctype in ["application/json", "application/json; charset=utf-8",
                          "multipart/form-data"]:
                async def one(body=body, ctype=ctype):
                    response = await gateway.client.post(
                        URL, content=body, headers={**USER, "Content-Type": ctype})
                    assert response.status_code < 500, (body, ctype, response.text)
                    if response.status_code >= 400:
                        assert response.headers["Content-Type"] == "application/problem+json"
                nursery.start_soon(one)


async def test_an_error_before_the_body_was_read_does_not_wedge_keep_alive(gateway: Gateway):
    # A 405 (or 413) is answered before the request body is read; the same keep-alive client
    # must still get its next answer at once.
    body = {"target_node_id": "!a1b2c3d4", "text": "hi"}
    for method, content in [("PUT", None), ("PATCH", None), ("POST", b"x" * (17 * 1024))]:
        with trio.fail_after(5):
            first = await gateway.client.request(
                method, URL, headers={**USER, **JSON},
                content=content if content is not None else json.dumps(body).encode())
            assert first.status_code in (405, 413)
            second = await gateway.client.post(URL, headers=USER, json=body)
        assert second.status_code == 201


def test_every_problem_type_is_documented_with_its_title():
    rows = re.findall(r"^\| `/problems/([a-z-]+)` \| [^|]+ \| ([^|]+) \|", DOC.read_text(),
                      re.MULTILINE)
    assert {slug: title.strip() for slug, title in rows} == TITLES
