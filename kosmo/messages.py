"""The values that travel between the actors, the MQTT wire and the store.

Rules: frozen, plain data, no I/O; times are aware datetimes in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from kosmo.delivery import Report


@dataclass(frozen=True)
class NewMessage:
    """A message the ledger accepted; once the dispatcher handed it to a bridge (``bridge_id``),
    what a conversation actor publishes on that bridge's topic."""

    message_id: UUID
    user_id: UUID
    node_id: str
    text: str
    created_at: datetime
    expires_at: datetime
    bridge_id: str | None = None
    # The admission's estimate when accepted (``Admission``); stored with the row.
    queue_position: int | None = None
    estimated_transmit_at: datetime | None = None
    weight: int = 1  # the sender's plan weight when accepted: its share of a radio


@dataclass(frozen=True)
class Admission:
    """What the dispatcher says of a send before it is debited: accepted (``retry_after`` None)
    with its place in the queue of the radio it would go to and when it would go on air (each
    None when unknown, e.g. with no bridge online), or refused for now (``mesh-congested``)."""

    bridge_id: str | None = None  # the radio's bridge it would go to
    queue_position: int | None = None  # 1 = next to be handed to that bridge
    estimated_transmit_at: datetime | None = None
    retry_after: float | None = None  # set: refused, mesh-congested, retry after s


@dataclass(frozen=True)
class StatusReport:
    """A bridge's (or the expiry's) report about one message."""

    message_id: UUID
    report: Report
    at: datetime
    packet_id: int | None = None
    bridge_id: str | None = None

