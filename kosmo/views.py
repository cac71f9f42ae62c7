"""What the API shows of a message: one view, and the one JSON it is written as.

Rules:
- ``MessageView.to_json()`` is the message JSON of every answer and event: the reads (one
  message, a conversation's messages, a conversation's last message), the send's ``201`` and the
  stream's events. Nothing else writes a message as JSON.
- Keys in this order: ``message_id``, ``direction``, ``node_id``, ``text``, ``status``,
  ``created_at``, ``updated_at``, then ``reason`` only when it is set (never ``null``). Times are
  written by ``kosmo.clock.iso``.
- A view is the message as it was at one moment: for an event, its status and reason then, and
  ``updated_at`` = the time of the event.
- ``kosmo.api.schemas.MessageOut`` describes this JSON for the OpenAPI document, field for field
  and in the same order; tests/test_views.py holds the two together.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from kosmo.clock import iso
from kosmo.delivery import Status
from kosmo.messages import NewMessage


class Direction(enum.StrEnum):
    OUTBOUND = "outbound"  # from a web user to a node
    INBOUND = "inbound"  # a reply from a node


# The columns of ``messages`` that ``MessageView.from_row`` reads, in its order.
COLUMNS = "id, direction, node_id, text, status, reason, created_at, updated_at"


@dataclass(frozen=True)
class MessageView:
    message_id: UUID
    direction: Direction
    node_id: str
    text: str
    status: Status
    created_at: datetime
    updated_at: datetime
    reason: str | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> MessageView:
        """A row of ``SELECT {COLUMNS}`` (or of other columns in that order)."""
        message_id, direction, node_id, text, status, reason, created_at, updated_at = row
        return cls(message_id, Direction(direction), node_id, text, Status(status), created_at,
                   updated_at, reason)

    @classmethod
    def accepted(cls, message: NewMessage) -> MessageView:
        """A message the ledger has just accepted: ``pending`` since its creation."""
        return cls(message.message_id, Direction.OUTBOUND, message.node_id, message.text,
                   Status.PENDING, message.created_at, message.created_at)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "message_id": str(self.message_id), "direction": self.direction.value,
            "node_id": self.node_id, "text": self.text, "status": self.status.value,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out
