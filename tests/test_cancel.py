"""Cancel and admission through the HTTP app, on the real database.

What this proves:
- ``DELETE /api/v1/messages/{id}`` cancels a waiting message: 200 with the message, status
  ``canceled``, refunded exactly once (a late report changes nothing), one event on the stream,
  the ledger's ``canceled`` hook told; a second DELETE is 409 ``already-on-air``.
- A message handed to a bridge (``handed_at`` set, as the dispatcher's claim does), queued or
  finished is 409 and nothing is refunded; another user's, an unknown or a malformed id is 404,
  the same answer, and changes nothing.
- A cancel racing the dispatcher's claim ends with exactly one winner, every time.
- A send the admission refuses is 503 ``mesh-congested`` with ``Retry-After`` and debits
  nothing; an accepted one carries the admission's queue position and estimate in its 201, its
  event and its row, with ``bridge_id`` null until handed.

The app runs with the database, the event bus and the ledger only (accepted messages are not
handed on), so a message waits until the test says otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
import trio

from actors.events import EventBus
from actors.http.app import create_app
from actors.http.server import HttpFront
from actors.http.services import Services
from actors.ledger import Ledger
from kosmo.config import Settings
from kosmo.db import Database
from kosmo.delivery import Report, Status
from kosmo.messages import Admission, NewMessage, StatusReport
from tests.conftest import SANCTUARY, WANDERER, db_value
from tests.test_stream import connect, next_event

NODE = "!a1b2c3d4"
UNKNOWN = "00000000-0000-4000-8000-000000000000"
PROBLEM = "application/problem+json"
# The dispatcher's claim (actors/dispatcher.py): hand a waiting message to a bridge.
CLAIM = ("UPDATE messages SET handed_at = now(), bridge_id = 'pi-north', queue_position = NULL"
         " WHERE id = %s AND status = 'pending' AND handed_at IS NULL")

Admit = Callable[[UUID, str, str], Awaitable[Admission]]


@dataclass
class Front:
    url: str
    client: httpx.AsyncClient
    ledger: Ledger
    canceled: list[UUID] = field(default_factory=list)

    def headers(self, user: UUID) -> dict[str, str]:
        return {"X-User-ID": str(user)}

    async def send(self, user: UUID = WANDERER, text: str = "hello") -> httpx.Response:
        return await self.client.post("/api/v1/messages", headers=self.headers(user),
                                      json={"target_node_id": NODE, "text": text})

    async def sent(self, user: UUID = WANDERER) -> str:
        response = await self.send(user)
        assert response.status_code == 201, response.text
        return str(response.json()["message_id"])

    async def cancel(self, message_id: str, user: UUID = WANDERER) -> httpx.Response:
        return await self.client.delete(f"/api/v1/messages/{message_id}",
                                        headers=self.headers(user))


async def run_front(settings: Settings, shutdown: trio.Event, admit: Admit | None, *,
                    task_status: trio.TaskStatus[tuple[str, Ledger, list[UUID]]]
                    = trio.TASK_STATUS_IGNORED) -> None:
    """The HTTP app over the database, the event bus and the ledger, until ``shutdown``."""
    db = Database(settings.database_url, size=4)
    await db.open(within=10)
    canceled: list[UUID] = []

    async def keep(messages: list[NewMessage]) -> None:
        pass  # accepted messages wait: nothing hands them to a bridge here

    async def dropped(ids: list[UUID]) -> None:
        canceled.extend(ids)

    try:
        async with trio.open_nursery() as nursery:
            events = EventBus()
            await nursery.start(events.run)
            ledger = Ledger(db, dispatch=keep, message_ttl=settings.message_ttl, events=events,
                            canceled=dropped)
            await nursery.start(ledger.run)
            services = Services(db, ledger, lambda: True, events, shutdown,
                                **({"admit": admit} if admit else {}))
            front = HttpFront(create_app(settings, services), settings.http_bind,
                              shutdown=shutdown)
            async with trio.open_nursery() as http:
                binds = await http.start(front.run)
                task_status.started((binds[0], ledger, canceled))
            nursery.cancel_scope.cancel()
    finally:
        await db.close()


async def start(nursery: trio.Nursery, settings: Settings, shutdown: trio.Event,
                admit: Admit | None = None) -> Front:
    url, ledger, canceled = await nursery.start(run_front, settings, shutdown, admit)
    return Front(url, httpx.AsyncClient(base_url=url, timeout=10), ledger, canceled)


@pytest.fixture
async def front(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[Front]:
    shutdown = trio.Event()
    app = await start(nursery, settings, shutdown)
    async with app.client:
        yield app
    shutdown.set()


def used(sql: Any, user: UUID = WANDERER) -> int:
    return int(db_value(sql, "SELECT coalesce(sum(used), 0) FROM quota_usage WHERE user_id = %s",
                        user))


def row(sql: Any, message_id: str) -> tuple[Any, ...]:
    found = sql.execute("SELECT status, reason, charged, handed_at IS NOT NULL, queue_position,"
                        " estimated_transmit_at FROM messages WHERE id = %s",
                        (message_id,)).fetchone()
    assert found is not None
    return tuple(found)


def history(sql: Any, message_id: str) -> list[tuple[str, bool]]:
    return [(r[0], r[1]) for r in sql.execute(
        "SELECT status, note FROM message_status_history WHERE message_id = %s ORDER BY id",
        (message_id,)).fetchall()]


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert (body["type"], body["status"]) == (f"/problems/{slug}", status)
    return body


async def test_a_waiting_message_is_canceled_refunded_once_with_an_event(front: Front, sql):
    async with connect(front, user_id=WANDERER) as ws:  # type: ignore[arg-type]
        message_id = await front.sent()
        assert used(sql) == 1
        created = await next_event(ws)
        assert (created["type"], created["message"]["status"]) == ("message.created", "pending")

        response = await front.cancel(message_id)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["message_id"], body["status"], body["reason"]) == (
            message_id, "canceled", "canceled")
        assert (body["bridge_id"], body["queue_position"], body["estimated_transmit_at"]) == (
            None, None, None)
        event = await next_event(ws)
        assert event["type"] == "message.status"
        assert event["message"] == body
    assert used(sql) == 0
    assert row(sql, message_id) == ("canceled", "canceled", False, False, None, None)
    assert front.canceled == [UUID(message_id)]

    again = await front.cancel(message_id)
    assert_problem(again, 409, "already-on-air")
    # A late report changes nothing: kept as a note, no second refund.
    for report in (Report(Status.FAILED, "radio off"), Report(Status.EXPIRED)):
        await front.ledger.report(StatusReport(UUID(message_id), report, datetime.now(UTC)),
                                  wait=True)
    assert used(sql) == 0
    assert history(sql, message_id) == [("pending", False), ("canceled", False),
                                        ("failed", True), ("expired", True)]
    detail = (await front.client.get(f"/api/v1/messages/{message_id}",
                                     headers=front.headers(WANDERER))).json()
    assert (detail["status"], detail["reason"]) == ("canceled", "canceled")
    assert front.canceled == [UUID(message_id)]


@pytest.mark.parametrize("how", ["handed", "queued", "expired"])
async def test_a_message_no_longer_waiting_is_409_and_not_refunded(front: Front, sql, how):
    message_id = await front.sent()
    if how == "handed":
        assert sql.execute(CLAIM, (message_id,)).rowcount == 1
    else:
        sql.execute(CLAIM, (message_id,))
        report = Report(Status.QUEUED) if how == "queued" else Report(Status.EXPIRED, "ttl")
        await front.ledger.report(StatusReport(UUID(message_id), report, datetime.now(UTC)),
                                  wait=True)
    before = (row(sql, message_id), history(sql, message_id), used(sql))
    problem = assert_problem(await front.cancel(message_id), 409, "already-on-air")
    assert problem["title"]
    assert (row(sql, message_id), history(sql, message_id), used(sql)) == before
    assert used(sql) == (0 if how == "expired" else 1)
    assert front.canceled == []


async def test_another_users_unknown_or_malformed_is_404_and_changes_nothing(front: Front, sql):
    message_id = await front.sent(WANDERER)
    unknown = await front.cancel(UNKNOWN, SANCTUARY)
    assert_problem(unknown, 404, "not-found")
    for path_id in (message_id, "not-a-uuid", UNKNOWN):
        response = await front.cancel(path_id, SANCTUARY)
        assert (response.status_code, response.content) == (404, unknown.content), path_id
    assert row(sql, message_id)[0] == "pending"
    assert (used(sql), used(sql, SANCTUARY)) == (1, 0)
    assert history(sql, message_id) == [("pending", False)]
    nobody = await front.client.delete(f"/api/v1/messages/{message_id}")
    assert_problem(nobody, 401, "unauthorized")


async def test_a_cancel_racing_the_claim_has_exactly_one_winner(front: Front, sql,
                                                                 database_url: str):
    def claim(message_id: str) -> int:
        with psycopg.connect(database_url, autocommit=True) as conn:
            return conn.execute(CLAIM, (message_id,)).rowcount

    outcomes = {"claimed": 0, "canceled": 0}
    for i in range(40):
        message_id = await front.sent()
        results: dict[str, Any] = {}

        async def claimer(message_id: str = message_id, results: dict[str, Any] = results
                          ) -> None:
            results["claim"] = await trio.to_thread.run_sync(claim, message_id)

        async def canceler(message_id: str = message_id, results: dict[str, Any] = results
                           ) -> None:
            results["cancel"] = (await front.cancel(message_id)).status_code

        async with trio.open_nursery() as nursery:
            first, second = (claimer, canceler) if i % 2 else (canceler, claimer)
            nursery.start_soon(first)
            nursery.start_soon(second)
        status, _, charged, handed, _, _ = row(sql, message_id)
        if results["claim"] == 1:
            assert (results["cancel"], status, charged, handed) == (409, "pending", True, True)
            outcomes["claimed"] += 1
        else:
            assert (results["claim"], results["cancel"]) == (0, 200)
            assert (status, charged, handed) == ("canceled", False, False)
            outcomes["canceled"] += 1
    assert used(sql) == outcomes["claimed"]
    assert len(front.canceled) == outcomes["canceled"]


async def test_a_claim_holding_the_row_makes_the_cancel_wait_and_lose(front: Front, sql,
                                                                       database_url: str):
    message_id = await front.sent()
    with psycopg.connect(database_url) as claimer:
        assert claimer.execute(CLAIM, (message_id,)).rowcount == 1  # locked, not committed
        async with trio.open_nursery() as nursery:
            answer: list[int] = []

            async def cancel() -> None:
                answer.append((await front.cancel(message_id)).status_code)

            nursery.start_soon(cancel)
            with trio.fail_after(10):  # the cancel waits on the claim's row lock
                while not db_value(sql, "SELECT count(*) FROM pg_stat_activity"
                                   " WHERE datname = current_database()"
                                   " AND wait_event_type = 'Lock'"):
                    await trio.sleep(0.01)
            await trio.to_thread.run_sync(claimer.commit)
    assert answer == [409]
    assert (row(sql, message_id)[:4], used(sql)) == (("pending", None, True, True), 1)


async def test_a_refused_admission_is_503_with_retry_after_and_debits_nothing(
        nursery: trio.Nursery, settings: Settings, sql):
    asked: list[tuple[UUID, str, str]] = []

    async def congested(user: UUID, node: str, text: str) -> Admission:
        asked.append((user, node, text))
        return Admission(bridge_id="pi-north", queue_position=40, retry_after=2.2)

    shutdown = trio.Event()
    front = await start(nursery, settings, shutdown, congested)
    async with front.client:
        response = await front.client.post("/api/v1/messages", headers=front.headers(WANDERER),
                                           json={"target_node_id": "!A1B2C3D4", "text": "hi"})
        invalid = await front.client.post("/api/v1/messages", headers=front.headers(WANDERER),
                                          json={"target_node_id": "nope", "text": "hi"})
    shutdown.set()
    problem = assert_problem(response, 503, "mesh-congested")
    assert response.headers["Retry-After"] == "3"
    assert "3 s" in problem["detail"]
    assert_problem(invalid, 422, "invalid-fields")
    assert asked == [(WANDERER, NODE, "hi")]  # asked once validated, with the normalised node
    for table in ("messages", "message_status_history", "quota_usage"):
        assert db_value(sql, f"SELECT count(*) FROM {table}") == 0, table


async def test_an_accepted_send_carries_the_admissions_estimate(nursery: trio.Nursery,
                                                                settings: Settings, sql):
    estimate = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=3)

    async def admit(user: UUID, node: str, text: str) -> Admission:
        return Admission(bridge_id="pi-north", queue_position=4, estimated_transmit_at=estimate)

    shutdown = trio.Event()
    front = await start(nursery, settings, shutdown, admit)
    async with front.client, connect(front, user_id=WANDERER) as ws:  # type: ignore[arg-type]
        response = await front.send()
        assert response.status_code == 201, response.text
        body = response.json()
        created = await next_event(ws)
        detail = (await front.client.get(f"/api/v1/messages/{body['message_id']}",
                                         headers=front.headers(WANDERER))).json()
        sql.execute(CLAIM, (body["message_id"],))
        handed = (await front.client.get(f"/api/v1/messages/{body['message_id']}",
                                         headers=front.headers(WANDERER))).json()
    shutdown.set()
    stamp = estimate.isoformat().replace("+00:00", "Z")
    waiting = {"bridge_id": None, "queue_position": 4, "estimated_transmit_at": stamp}
    assert {k: body[k] for k in waiting} == waiting
    assert created["message"] == {k: v for k, v in body.items() if k != "quota"}
    assert {k: detail[k] for k in waiting} == waiting
    assert row(sql, body["message_id"])[4:] == (None, estimate)  # the claim cleared the place
    assert {k: handed[k] for k in waiting} == {"bridge_id": "pi-north", "queue_position": None,
                                               "estimated_transmit_at": stamp}
