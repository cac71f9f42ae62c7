"""What the API shows of a message: one view, and the one JSON it is written as.

Rules:
- ``MessageView.to_json()`` is the message JSON of every answer and event: the reads (one
  message, a conversation's messages, a conversation's last message), the send's ``201`` and the
  stream's events. Nothing else writes a message as JSON.
- Keys in this order: ``message_id``, ``direction``, ``node_id``, ``text``, ``status``,
  ``created_at``, ``updated_at``, then ``reason`` only when it is set (never ``null``), then
  ``bridge_id``, ``queue_position``, ``estimated_transmit_at``. Times are written by
  ``kosmo.clock.iso``.
- A key is left out when it can never apply to the message, and written (``null`` when unset)
  when it can: ``reason`` only when set; ``bridge_id`` always (an outbound message's bridge is
  null until it is handed to one, an inbound message's is the bridge that heard it);
  ``queue_position`` and ``estimated_transmit_at`` on every outbound message and never on an
  inbound one (a reply does not wait for airtime).
- ``queue_position`` is null unless the message waits (``pending``; the dispatcher clears it
  when it hands the message to a bridge); ``estimated_transmit_at`` is null once the message
  left ``pending``/``queued`` (transmitted, or final). The view enforces both whatever the row
  holds, so a stale column never shows.
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
COLUMNS = ("id, direction, node_id, text, status, reason, created_at, updated_at, bridge_id,"
           " queue_position, estimated_transmit_at")
_ESTIMATED = frozenset({Status.PENDING, Status.QUEUED})  # not yet on the air, nor final


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
    bridge_id: str | None = None
    queue_position: int | None = None
    estimated_transmit_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not Status.PENDING or self.direction is Direction.INBOUND:
            object.__setattr__(self, "queue_position", None)
        if self.status not in _ESTIMATED or self.direction is Direction.INBOUND:
            object.__setattr__(self, "estimated_transmit_at", None)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> MessageView:
        """A row of ``SELECT {COLUMNS}`` (or of other columns in that order)."""
        (message_id, direction, node_id, text, status, reason, created_at, updated_at,
         bridge_id, queue_position, estimated_transmit_at) = row
        return cls(message_id, Direction(direction), node_id, text, Status(status), created_at,
                   updated_at, reason, bridge_id, queue_position, estimated_transmit_at)

    @classmethod
    def accepted(cls, message: NewMessage) -> MessageView:
        """A message the ledger has just accepted: ``pending`` since its creation, with the
        admission's estimate; no bridge has it yet."""
        return cls(message.message_id, Direction.OUTBOUND, message.node_id, message.text,
                   Status.PENDING, message.created_at, message.created_at,
                   queue_position=message.queue_position,
                   estimated_transmit_at=message.estimated_transmit_at)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "message_id": str(self.message_id), "direction": self.direction.value,
            "node_id": self.node_id, "text": self.text, "status": self.status.value,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
        }
        if self.reason is not None:
            out["reason"] = self.reason
        out["bridge_id"] = self.bridge_id
        if self.direction is Direction.OUTBOUND:
            out["queue_position"] = self.queue_position
            out["estimated_transmit_at"] = (None if self.estimated_transmit_at is None
                                            else iso(self.estimated_transmit_at))
        return out
