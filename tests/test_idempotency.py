"""Idempotency-Key on POST /api/v1/messages: a retry of the same request gets the first answer
again and sends nothing, in one gateway process or across two on one database; another request
with the key is refused (422), one still in flight too (409); bad keys are 400; refusals are not
stored; records count for 24 h."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
import trio

from kosmo import idempotency
from kosmo.clock import utcnow
from kosmo.config import Settings
from kosmo.domain import Refusal
from kosmo.embedded import EmbeddedPostgres, start_postgres
from kosmo.idempotency import Claim
from kosmo.ledger_store import Refused, accept_sends
from kosmo.messages import NewMessage
from tests import test_db_outage
from tests.conftest import FREE, GUARDIAN, SANCTUARY, WANDERER, Gateway, db_value, start_gateway
from tests.test_views import served_spec

own_postgres = test_db_outage.own_postgres  # a server of the test's own, to stop and start
URL = "/api/v1/messages"
SEND = {"target_node_id": "!a1b2c3d4", "text": "hello"}


def body_of(fields: dict[str, Any] = SEND) -> bytes:
    return json.dumps(fields).encode()


async def post(gateway: Gateway, key: str | bytes | None, body: bytes = body_of(),
               user: uuid.UUID = WANDERER) -> httpx.Response:
    headers: dict[str, Any] = {"X-User-ID": str(user), "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await gateway.client.post(URL, content=body, headers=headers)


def counts(sql: psycopg.Connection[Any], user: uuid.UUID = WANDERER) -> tuple[int, int]:
    """(messages stored, quota used) of ``user``."""
    return (db_value(sql, "SELECT count(*) FROM messages WHERE user_id = %s", user),
            db_value(sql, "SELECT coalesce(sum(used), 0) FROM quota_usage WHERE user_id = %s",
                     user))


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == f"/problems/{slug}"


async def test_a_retry_gets_the_first_answer_and_sends_nothing(gateway: Gateway, sql):
    first = await post(gateway, "order-1")
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = await post(gateway, "order-1")
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Content-Type"] == "application/json"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counts(sql) == (1, 1)
    row = sql.execute("SELECT status, message_id::text, locked_until FROM idempotency_keys"
                      " WHERE user_id = %s AND key = 'order-1'", (WANDERER,)).fetchone()
    assert row == (201, first.json()["message_id"], None)


async def test_a_request_without_the_header_is_unchanged(gateway: Gateway, sql):
    answers = [await post(gateway, None), await post(gateway, None)]
    assert [a.status_code for a in answers] == [201, 201]
    assert all("Idempotent-Replayed" not in a.headers for a in answers)
    assert answers[0].json()["message_id"] != answers[1].json()["message_id"]
    assert counts(sql) == (2, 2)
    assert db_value(sql, "SELECT count(*) FROM idempotency_keys") == 0


async def test_the_same_key_with_another_body_is_422(gateway: Gateway, sql):
    assert (await post(gateway, "k")).status_code == 201
    other = await post(gateway, "k", body_of({**SEND, "text": "hello!"}))
    assert_problem(other, 422, "idempotency-key-reused")
    # The same fields written differently are another body: bytes are compared, not meaning.
    spaced = await post(gateway, "k", json.dumps(SEND, indent=1).encode())
    assert_problem(spaced, 422, "idempotency-key-reused")
    assert counts(sql) == (1, 1)


async def test_keys_belong_to_their_user(gateway: Gateway, sql):
    assert (await post(gateway, "shared", user=WANDERER)).status_code == 201
    theirs = await post(gateway, "shared", user=SANCTUARY)
    assert theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert counts(sql, SANCTUARY)[0] == 1


def hold_key(sql: psycopg.Connection[Any], key: str, body: bytes, lease: timedelta) -> None:
    """Claim ``key`` as another request (or process) would while it is being sent."""
    sql.execute(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, token, created_at,"
        " locked_until) VALUES (%s, %s, %s, %s, now(), now() + %s)",
        (WANDERER, key, idempotency.fingerprint("POST", URL, body), uuid.uuid4(), lease))


async def test_a_request_still_in_flight_is_409_until_its_lease_runs_out(gateway: Gateway, sql):
    hold_key(sql, "busy", body_of(), timedelta(seconds=20))
    busy = await post(gateway, "busy")
    assert_problem(busy, 409, "idempotency-key-in-flight")
    assert 1 <= int(busy.headers["Retry-After"]) <= 20
    # Another body with that key is refused as reused, in flight or not.
    assert_problem(await post(gateway, "busy", body_of({**SEND, "text": "x"})), 422,
                   "idempotency-key-reused")
    assert counts(sql) == (0, 0)
    # The holder died: once its lease ran out, the next request takes the key over.
    sql.execute("UPDATE idempotency_keys SET locked_until = now() - interval '1 s'")
    taken = await post(gateway, "busy")
    assert taken.status_code == 201, taken.text
    assert "Idempotent-Replayed" not in taken.headers
    assert counts(sql) == (1, 1)
    assert (await post(gateway, "busy")).headers["Idempotent-Replayed"] == "true"


def test_a_send_whose_claim_was_taken_over_stores_nothing(sql, database_url: str):
    now = utcnow()
    with psycopg.connect(database_url) as conn:
        first = idempotency.claim(conn, WANDERER, "k", b"print", now, timedelta(seconds=1))
        assert isinstance(first, Claim)
    later = now + timedelta(seconds=2)  # the first holder's lease ran out
    with psycopg.connect(database_url) as conn:
        second = idempotency.claim(conn, WANDERER, "k", b"print", later)
        assert isinstance(second, Claim)
    sends = [NewMessage(uuid.uuid4(), WANDERER, "!a1b2c3d4", t, later, later + timedelta(hours=1))
             for t in ("late", "taker")]
    with psycopg.connect(database_url) as conn:
        results, _ = accept_sends(conn, sends, later, [first, second])
    assert results[0] == Refused(Refusal.IDEMPOTENCY_KEY_IN_FLIGHT)
    assert not isinstance(results[1], Refused)
    assert db_value(sql, "SELECT text FROM messages") == "taker"
    assert db_value(sql, "SELECT message_id FROM idempotency_keys") == sends[1].message_id


async def test_fifty_concurrent_requests_with_one_key_make_one_message(gateway: Gateway, sql):
    answers: list[httpx.Response] = []

    async def one() -> None:
        answers.append(await post(gateway, "burst"))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert_one_sent(answers)
    assert counts(sql) == (1, 1)


def assert_one_sent(answers: list[httpx.Response]) -> None:
    """One answer sent the message; every other one replays it or says it is in flight."""
    assert {a.status_code for a in answers} <= {201, 409}, [a.text for a in answers]
    created = [a for a in answers if a.status_code == 201]
    assert len([a for a in created if "Idempotent-Replayed" not in a.headers]) == 1
    assert len({a.content for a in created}) == 1
    for busy in (a for a in answers if a.status_code == 409):
        assert busy.json()["type"] == "/problems/idempotency-key-in-flight"


async def test_two_gateway_processes_on_one_database(nursery, settings: Settings, sql):
    other = settings.replace(mqtt_client_id=f"{settings.mqtt_client_id}-b")
    async with start_gateway(nursery, settings) as one, start_gateway(nursery, other) as two:
        first = await post(one, "both")
        assert first.status_code == 201, first.text
        again = await post(two, "both")
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.content == first.content
        assert_problem(await post(two, "both", body_of({**SEND, "text": "x"})), 422,
                       "idempotency-key-reused")

        answers: list[httpx.Response] = []

        async def one_to(gateway: Gateway) -> None:
            answers.append(await post(gateway, "race"))

        async with trio.open_nursery() as racers:
            for i in range(40):
                racers.start_soon(one_to, (one, two)[i % 2])
        assert_one_sent(answers)
    assert counts(sql) == (2, 2)


@pytest.mark.parametrize("key", [
    "", "x" * 256, b"caf\xc3\xa9", "tab\there", b"high\x80byte",
])
async def test_bad_keys_are_400(gateway: Gateway, sql, key):
    assert_problem(await post(gateway, key), 400, "invalid-idempotency-key")
    assert counts(sql) == (0, 0)
    assert db_value(sql, "SELECT count(*) FROM idempotency_keys") == 0


async def test_two_keys_are_400_and_the_longest_key_and_every_printable_is_fine(gateway: Gateway,
                                                                                sql):
    headers = [("X-User-ID", str(WANDERER)), ("Content-Type", "application/json"),
               ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    twice = await gateway.client.post(URL, content=body_of(), headers=headers)
    assert_problem(twice, 400, "invalid-idempotency-key")
    assert (await post(gateway, "x" * 255)).status_code == 201
    printable = "".join(chr(c) for c in range(0x21, 0x7F)) + " inner space"
    assert (await post(gateway, printable)).status_code == 201
    assert (await post(gateway, printable)).headers["Idempotent-Replayed"] == "true"
    assert counts(sql) == (2, 2)


async def test_the_key_is_judged_after_the_credentials(gateway: Gateway):
    response = await gateway.client.post(URL, content=body_of(), headers={
        "Content-Type": "application/json", "Idempotency-Key": ""})
    assert_problem(response, 401, "unauthorized")


async def test_refusals_are_not_stored_and_a_retry_can_succeed(gateway: Gateway, sql):
    refused = await post(gateway, "later", body_of({**SEND, "target_node_id": "!deadbeef"}),
                         user=GUARDIAN)
    assert_problem(refused, 403, "node-not-whitelisted")
    assert db_value(sql, "SELECT count(*) FROM idempotency_keys") == 0
    sql.execute("INSERT INTO node_whitelist (user_id, node_id) VALUES (%s, '!deadbeef')",
                (GUARDIAN,))
    retried = await post(gateway, "later", body_of({**SEND, "target_node_id": "!deadbeef"}),
                         user=GUARDIAN)
    assert retried.status_code == 201, retried.text
    assert "Idempotent-Replayed" not in retried.headers

    assert_problem(await post(gateway, "never", user=FREE), 403, "receive-only")
    assert db_value(sql, "SELECT count(*) FROM idempotency_keys WHERE user_id = %s", FREE) == 0


async def test_a_429_is_not_stored_and_the_retry_after_the_reset_succeeds(gateway: Gateway, sql):
    sql.execute("UPDATE subscriptions SET quota_override = 1 WHERE user_id = %s", (WANDERER,))
    assert (await post(gateway, None)).status_code == 201
    assert_problem(await post(gateway, "next"), 429, "quota-exceeded")
    sql.execute("UPDATE subscriptions SET quota_override = 2 WHERE user_id = %s", (WANDERER,))
    retried = await post(gateway, "next")
    assert retried.status_code == 201, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert counts(sql) == (2, 2)


async def test_a_record_counts_for_24_hours(gateway: Gateway, sql):
    first = await post(gateway, "daily")
    sql.execute("UPDATE idempotency_keys SET created_at = created_at - interval '23 h 59 min'")
    assert (await post(gateway, "daily")).headers["Idempotent-Replayed"] == "true"
    sql.execute("UPDATE idempotency_keys SET created_at = created_at - interval '2 min'")
    fresh = await post(gateway, "daily")
    assert fresh.status_code == 201, fresh.text
    assert "Idempotent-Replayed" not in fresh.headers
    assert fresh.json()["message_id"] != first.json()["message_id"]
    assert counts(sql) == (2, 2)
    # Another body may use an expired key too.
    sql.execute("UPDATE idempotency_keys SET created_at = created_at - interval '25 h'")
    assert (await post(gateway, "daily", body_of({**SEND, "text": "new"}))).status_code == 201


def test_the_sweep_deletes_records_past_24_hours(sql):
    hold_key(sql, "young", b"", timedelta(seconds=1))
    hold_key(sql, "old", b"", timedelta(seconds=1))
    sql.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 h',"
                " locked_until = NULL, status = 201 WHERE key = 'old'")
    assert idempotency.sweep(sql, utcnow()) == 1
    assert [r[0] for r in sql.execute("SELECT key FROM idempotency_keys")] == ["young"]


def test_key_rules():
    assert idempotency.key_problem(["k"]) is None
    assert idempotency.key_problem(["~" * 255]) is None
    assert idempotency.key_problem([""]) is not None
    assert idempotency.key_problem(["a", "a"]) is not None
    assert idempotency.key_problem(["\x7f"]) is not None
    fingerprint = idempotency.fingerprint
    assert fingerprint("POST", "/a", b"b") != fingerprint("POST", "/ab", b"")


async def test_openapi_lists_the_header_and_the_problem_answers():
    operation = (await served_spec())["paths"]["/api/v1/messages"]["post"]
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"].lower() == "idempotency-key"
    assert header["schema"]["maxLength"] == 255
    assert {"400", "409", "422"} <= set(operation["responses"])


async def test_keyed_sends_are_still_grouped_into_transactions(gateway: Gateway, sql):
    before = gateway.running.ledger.batches
    answers: list[httpx.Response] = []

    async def one(i: int) -> None:
        answers.append(await post(gateway, f"k{i}", body_of({**SEND, "text": f"t{i}"}),
                                  user=SANCTUARY))

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(one, i)
    assert [a.status_code for a in answers] == [201] * 100
    assert counts(sql, SANCTUARY) == (100, 100)
    assert db_value(sql, "SELECT count(*) FROM idempotency_keys WHERE status = 201") == 100
    assert gateway.running.ledger.batches - before < 100


async def test_the_expiry_sweep_deletes_old_records(gateway: Gateway, sql):
    assert (await post(gateway, "old")).status_code == 201
    assert (await post(gateway, "young")).status_code == 201
    sql.execute("UPDATE idempotency_keys SET created_at = created_at - interval '25 h'"
                " WHERE key = 'old'")
    await gateway.running.expiry.sweep()
    assert [r[0] for r in sql.execute("SELECT key FROM idempotency_keys")] == ["young"]


async def test_a_database_outage_is_not_stored(nursery, settings: Settings,
                                               own_postgres: EmbeddedPostgres):
    settings = settings.replace(database_url=own_postgres.url, start_timeout=10.0)
    async with start_gateway(nursery, settings) as gateway:
        await trio.to_thread.run_sync(own_postgres.stop)
        down = await post(gateway, "through-outage")
        assert_problem(down, 503, "service-unavailable")
        await trio.to_thread.run_sync(start_postgres, own_postgres.data_dir)
        with trio.fail_after(30):
            while (await gateway.client.get("/readyz")).status_code != 200:
                await trio.sleep(0.1)
        retried = await post(gateway, "through-outage")
        assert retried.status_code == 201, retried.text
        assert "Idempotent-Replayed" not in retried.headers
        assert (await post(gateway, "through-outage")).headers["Idempotent-Replayed"] == "true"


async def test_a_bad_key_is_judged_before_the_content_type(gateway: Gateway, sql):
    response = await gateway.client.post(URL, content=b"{not json", headers={
        "X-User-ID": str(WANDERER), "Content-Type": "text/plain", "Idempotency-Key": "x" * 300})
    assert_problem(response, 400, "invalid-idempotency-key")
    # A body that fails its own checks never touches the key: the key stays free.
    assert_problem(await post(gateway, "free", b"[]"), 422, "invalid-fields")
    assert db_value(sql, "SELECT count(*) FROM idempotency_keys") == 0
    assert (await post(gateway, "free")).status_code == 201
