"""Request and response shapes of the HTTP API, declared for the OpenAPI document.

The handlers validate requests by hand (the error precedence is part of the contract, see
``actors.http.app``); these models are what ``/openapi.json`` shows clients.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class SendMessage(BaseModel):
    target_node_id: str = Field(pattern=r"^![0-9a-fA-F]{8}$", examples=["!a1b2c3d4"])
    text: str = Field(min_length=1, examples=["Hello mesh"])


class QuotaOut(BaseModel):
    used: int
    limit: int | None
    remaining: int | None
    resets_at: str


class HistoryEntry(BaseModel):
    status: str
    at: str
    reason: str | None = None
    note: bool | None = None


class MessageOut(BaseModel):
    message_id: str
    direction: str
    node_id: str
    text: str
    status: str
    reason: str | None = None
    created_at: str
    updated_at: str


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


class Health(BaseModel):
    status: str
    bridges: list[Bridge] = []
