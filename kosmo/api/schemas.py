"""Request and response shapes of the HTTP API, declared for the OpenAPI document.

The handlers validate requests by hand (the error precedence is part of the contract, see
``actors.http.app``); these models are what ``/openapi.json`` shows clients. ``MessageOut`` is
the JSON of ``kosmo.views.MessageView``: the same fields in the same order (tests/test_views.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from kosmo.delivery import Status
from kosmo.views import Direction


def _no_default(schema: dict[str, Any]) -> None:
    """For a field left out when unset (rather than written null): no default to show."""
    schema.pop("default", None)


class SendMessage(BaseModel):
    target_node_id: str = Field(pattern=r"^![0-9a-fA-F]{8}$", examples=["!a1b2c3d4"])
    text: str = Field(min_length=1, examples=["Hello mesh"])


class SendHeaders(BaseModel):
    idempotency_key: str | SkipJsonSchema[None] = Field(
        None, min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$",
        examples=["9f1c2a7e-3b4d-4e5f-8a6b-7c8d9e0f1a2b"], json_schema_extra=_no_default,
        description="Makes a retry safe: the same request with the same key within 24 h gets"
                    " the first answer again (header Idempotent-Replayed: true) and sends"
                    " nothing.")


class QuotaOut(BaseModel):
    used: int
    limit: int | None
    remaining: int | None
    resets_at: str


class HistoryEntry(BaseModel):
    status: Status
    at: datetime
    reason: str | None  # always present, null when unset
    # Present (true) only on an entry recorded for the record that changed nothing.
    note: bool | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)


class MessageOut(BaseModel):
    message_id: UUID
    direction: Direction
    node_id: str
    text: str
    status: Status
    created_at: datetime
    updated_at: datetime
    # Present only when set, never null.
    reason: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    # Always present; null until an outbound message is handed to a bridge.
    bridge_id: str | None = Field(examples=["pi-north"])
    # On every outbound message (null when unknown or no longer waiting), never on an inbound.
    queue_position: int | None = Field(default=None, ge=1, json_schema_extra=_no_default)
    estimated_transmit_at: datetime | None = Field(default=None, json_schema_extra=_no_default)


class MessageCreated(MessageOut):
    quota: QuotaOut


class MessageDetail(MessageOut):
    status_history: list[HistoryEntry]


class Conversation(BaseModel):
    node_id: str
    last_message: MessageOut
    message_count: int
    updated_at: str


class ConversationList(BaseModel):
    conversations: list[Conversation]
    next_cursor: str | None


class ConversationMessages(BaseModel):
    node_id: str
    messages: list[MessageOut]
    next_cursor: str | None


class Page(BaseModel):
    cursor: str | None = None
    limit: int | None = Field(default=None, ge=1, le=200)


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    detail: str | None = None


class Bridge(BaseModel):
    bridge_id: str
    state: str
    last_seen: str
    nodes_heard: int | None = None  # left out while the database is down


class Health(BaseModel):
    status: str
    bridges: list[Bridge] = []


class SubscriptionOut(BaseModel):
    status: str = Field(examples=["active"])
    current_period_start: datetime
    current_period_end: datetime


class Me(BaseModel):
    user_id: UUID
    plan: str | None = Field(examples=["sanctuary"])  # null: no subscription at all
    scope: Literal["any", "whitelist", "receive_only"]
    whitelist: list[str]  # node ids; empty unless the plan is whitelist-scoped
    subscription: SubscriptionOut | None
    quota: QuotaOut | None


class ConsoleConfig(BaseModel):
    auth_mode: Literal["jwt", "header"]
    max_text_bytes: int = Field(examples=[200])  # the longest message text, in UTF-8 bytes


class NewApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=100, examples=["dispatch system"])


class ApiKeyOut(BaseModel):
    key_id: UUID
    name: str
    prefix: str = Field(examples=["kosmo_sk_Xk3v9QaB"])
    created_at: datetime
    last_used_at: datetime | None  # to the minute; null until first used


class ApiKeyCreated(BaseModel):
    key_id: UUID
    name: str
    prefix: str = Field(examples=["kosmo_sk_Xk3v9QaB"])
    created_at: datetime
    secret: str = Field(pattern=r"^kosmo_sk_[A-Za-z0-9_-]{43}$")  # shown once


class ApiKeyList(BaseModel):
    api_keys: list[ApiKeyOut]
