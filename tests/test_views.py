"""The message view: one JSON for every answer and event, and the OpenAPI schema that says so."""

from __future__ import annotations

import itertools
import json
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import jsonschema_rs
import pytest
import trio

from actors.http.app import create_app
from actors.http.services import Services
from kosmo.api import schemas
from kosmo.config import Settings
from kosmo.delivery import Report, Status
from kosmo.events import make_event
from kosmo.messages import NewMessage, StatusReport
from kosmo.views import COLUMNS, Direction, MessageView
from tests.conftest import WANDERER, Gateway

MESSAGE_ID = UUID("2b667622-67af-4db2-861b-de3cbfebee65")
CREATED = datetime(2026, 11, 27, 14, 33, 41, 164774, tzinfo=UTC)
UPDATED = datetime(2026, 11, 27, 15, 33, 44, tzinfo=timezone(timedelta(hours=1)))  # 14:33:44Z


ESTIMATE = datetime(2026, 11, 27, 14, 40, tzinfo=UTC)


def view(direction: Direction = Direction.OUTBOUND, status: Status = Status.FAILED,
         reason: str | None = "no_ack", bridge_id: str | None = "pi-north",
         queue_position: int | None = 3, estimated: datetime | None = ESTIMATE) -> MessageView:
    return MessageView(MESSAGE_ID, direction, "!a1b2c3d4", "Hello \"mesh\" ✓", status, CREATED,
                       UPDATED, reason, bridge_id, queue_position, estimated)


async def served_spec() -> dict[str, Any]:
    app = create_app(Settings(database_url="", auth_mode="header"),
                     Services(None, None, lambda: False, None, trio.Event()))  # type: ignore[arg-type]
    async with app.test_app():
        response = await app.test_client().get("/openapi.json")
        spec = await response.get_json()
    assert isinstance(spec, dict)
    return spec


def validator(spec: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in ``spec``."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]},
                                              validate_formats=True)


def test_to_json_writes_the_documented_keys_order_and_times():
    assert json.dumps(view().to_json()) == (
        '{"message_id": "2b667622-67af-4db2-861b-de3cbfebee65", "direction": "outbound", '
        '"node_id": "!a1b2c3d4", "text": "Hello \\"mesh\\" \\u2713", "status": "failed", '
        '"created_at": "2026-11-27T14:33:41.164774Z", "updated_at": "2026-11-27T14:33:44Z", '
        '"reason": "no_ack", "bridge_id": "pi-north", "queue_position": null, '
        '"estimated_transmit_at": null}')
    without = view(status=Status.QUEUED, reason=None).to_json()
    assert "reason" not in without
    assert list(without) == ["message_id", "direction", "node_id", "text", "status",
                             "created_at", "updated_at", "bridge_id", "queue_position",
                             "estimated_transmit_at"]


@pytest.mark.parametrize(("status", "position", "estimate"), [
    (Status.PENDING, 3, "2026-11-27T14:40:00Z"),
    (Status.QUEUED, None, "2026-11-27T14:40:00Z"),
    *((status, None, None) for status in (Status.TRANSMITTED, Status.DELIVERED, Status.FAILED,
                                          Status.EXPIRED, Status.CANCELED)),
])
def test_the_waiting_fields_show_only_while_they_apply(status, position, estimate):
    out = view(status=status, bridge_id=None).to_json()
    assert (out["bridge_id"], out["queue_position"], out["estimated_transmit_at"]) == (
        None, position, estimate)


def test_an_inbound_message_has_its_bridge_and_no_waiting_fields():
    out = view(Direction.INBOUND, Status.RECEIVED, None).to_json()
    assert out["bridge_id"] == "pi-north"
    assert "queue_position" not in out
    assert "estimated_transmit_at" not in out


def test_from_row_reads_the_columns_in_their_order():
    row = (MESSAGE_ID, "outbound", "!a1b2c3d4", "Hello \"mesh\" ✓", "failed", "no_ack", CREATED,
           UPDATED, "pi-north", 3, ESTIMATE)
    assert len(row) == len(COLUMNS.split(","))
    assert MessageView.from_row(row) == view()
    assert MessageView.from_row(row).status is Status.FAILED


def test_an_accepted_message_is_pending_since_its_creation():
    message = NewMessage(MESSAGE_ID, WANDERER, "!a1b2c3d4", "hi", CREATED,
                         CREATED + timedelta(hours=1), queue_position=2,
                         estimated_transmit_at=ESTIMATE)
    assert MessageView.accepted(message) == MessageView(
        MESSAGE_ID, Direction.OUTBOUND, "!a1b2c3d4", "hi", Status.PENDING, CREATED, CREATED,
        queue_position=2, estimated_transmit_at=ESTIMATE)


@pytest.mark.parametrize(("direction", "status", "kind"), [
    (Direction.OUTBOUND, Status.PENDING, "message.created"),
    (Direction.OUTBOUND, Status.QUEUED, "message.status"),
    (Direction.OUTBOUND, Status.EXPIRED, "message.status"),
    (Direction.INBOUND, Status.RECEIVED, "message.inbound"),
])
def test_an_event_carries_the_view_as_json(direction, status, kind):
    message = view(direction, status)
    event = make_event(3, WANDERER, message)
    assert event.to_json() == {"type": kind, "event_id": "00000000000000000003",
                               "message": message.to_json()}


async def test_every_status_and_direction_validate_against_the_served_schema():
    spec = await served_spec()
    component = spec["components"]["schemas"]["MessageOut"]
    check = validator(spec, component)
    properties, required = set(component["properties"]), set(component["required"])
    waiting = {"queue_position", "estimated_transmit_at"}
    for direction, status in itertools.product(Direction, Status):
        for reason, bridge, position, estimate in itertools.product(
                (None, "ttl"), (None, "pi-north"), (None, 1), (None, ESTIMATE)):
            out = view(direction, status, reason, bridge, position, estimate).to_json()
            check.validate(out)
            expected = required | ({"reason"} if reason else set()) | (
                waiting if direction is Direction.OUTBOUND else set())
            assert set(out) == expected
            assert properties == required | {"reason"} | waiting
    # And it is no looser than to_json: a null reason, a status or a direction no message has,
    # an id or a time that is not one, are refused.
    good = view().to_json()
    for broken in ({"reason": None}, {"status": "sent"}, {"direction": "up"},
                   {"message_id": "42"}, {"created_at": "yesterday"}, {"queue_position": 0},
                   {"queue_position": "1"}, {"estimated_transmit_at": "soon"},
                   {"bridge_id": 7}):
        assert not check.is_valid({**good, **broken}), broken
    # The model lists the view's fields in the order to_json writes them.
    assert list(schemas.MessageOut.model_fields) == [f.name for f in fields(MessageView)]
    assert list(good) == [f.name for f in fields(MessageView)]
    assert not check.is_valid({k: v for k, v in good.items() if k != "bridge_id"})


async def test_the_send_answer_and_the_detail_extend_the_message_schema():
    spec = await served_spec()
    message = set(spec["components"]["schemas"]["MessageOut"]["properties"])
    created = spec["paths"]["/api/v1/messages"]["post"]["responses"]["201"]["content"][
        "application/json"]["schema"]
    detail = spec["paths"]["/api/v1/messages/{message_id}"]["get"]["responses"]["200"][
        "content"]["application/json"]["schema"]
    assert set(created["properties"]) == message | {"quota"}
    assert set(detail["properties"]) == message | {"status_history"}
    for schema in (created, detail):
        for name in message:
            assert schema["properties"][name] == spec["components"]["schemas"]["MessageOut"][
                "properties"][name]


async def test_a_history_entry_always_has_its_reason_and_a_note_only_when_true():
    spec = await served_spec()
    check = validator(spec, spec["components"]["schemas"]["HistoryEntry"])
    entry = {"status": "expired", "at": "2026-11-27T14:33:44Z", "reason": "ttl"}
    for good in (entry, {**entry, "reason": None}, {**entry, "note": True}):
        check.validate(good)
    for bad in ({k: v for k, v in entry.items() if k != "reason"}, {**entry, "note": None},
                {**entry, "status": "sent"}):
        assert not check.is_valid(bad), bad


async def test_what_the_endpoints_answer_validates_against_what_they_declare(gateway: Gateway):
    spec = (await gateway.client.get("/openapi.json")).json()

    def declared(path: str, method: str, status: str) -> jsonschema_rs.Validator:
        return validator(spec, spec["paths"][path][method]["responses"][status]["content"][
            "application/json"]["schema"])

    created = await gateway.send(WANDERER, "!a1b2c3d4", "hi")
    assert created.status_code == 201
    declared("/api/v1/messages", "post", "201").validate(created.json())
    # A reason and a history note too: expired, then a late report kept as a note.
    message_id = UUID(created.json()["message_id"])
    for report in (Report(Status.EXPIRED, "ttl"), Report(Status.TRANSMITTED)):
        await gateway.running.ledger.report(
            StatusReport(message_id, report, datetime.now(UTC)), wait=True)
    detail = (await gateway.get(f"/api/v1/messages/{message_id}", WANDERER)).json()
    assert (detail["status"], detail["reason"]) == ("expired", "ttl")
    assert detail["status_history"][-1]["note"] is True
    declared("/api/v1/messages/{message_id}", "get", "200").validate(detail)
    listing = (await gateway.get("/api/v1/messages/conversations", WANDERER)).json()
    declared("/api/v1/messages/conversations", "get", "200").validate(listing)
    thread = (await gateway.get("/api/v1/messages/conversations/!a1b2c3d4", WANDERER)).json()
    declared("/api/v1/messages/conversations/{node_id}", "get", "200").validate(thread)
    # One message, one JSON: the same message in each answer, as it was when read.
    sent = {k: v for k, v in created.json().items() if k != "quota"}
    same = {k: sent[k] for k in sent if k not in ("status", "updated_at")}
    read = {k: v for k, v in detail.items() if k != "status_history"}
    assert {k: read[k] for k in same} == same
    assert set(read) == set(sent) | {"reason"}
    assert listing["conversations"][0]["last_message"] == thread["messages"][0] == read
