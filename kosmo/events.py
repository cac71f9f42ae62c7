"""Events of the live stream: what they say, how their ids are written, how they are replayed.

Rules:
- Every row of ``message_status_history`` that is not a note is one event; its id is the row id,
  written as a zero-padded decimal string so that ids sort as strings in event order.
- Writers assign history ids in commit order (see ``lock_event_order``), so "everything after
  event N" is a stable set once N has been seen.
- An event carries the message as it was at that event (a ``kosmo.views.MessageView``): its
  status and reason then, and ``updated_at`` = the time of the event. Its ``bridge_id`` is null
  on a ``pending`` event (a bridge is assigned when the message is handed, after its creation,
  and never changes) and the message's bridge otherwise.
- The waiting fields (``queue_position``, ``estimated_transmit_at``) are not kept per event: a
  live event carries them as the writer knew them at that event, a replayed one as the message
  has them when it is replayed (the view clears them for a status they do not apply to).
- A commit that writes history rows notifies ``CHANNEL`` with its largest history id (see
  ``kosmo.ledger_store.record_history``); listeners read the rows after the last id they read.
- Event types follow the message: ``message.created`` (an outbound message accepted,
  ``pending``), ``message.status`` (every later status of an outbound message, ``canceled``
  included), ``message.inbound`` (a reply threaded to its user).
- An event belongs to one user (the message's owner). Unassigned inbound messages have no
  owner and produce no event anyone can see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

from kosmo import locks
from kosmo.delivery import Status
from kosmo.views import Direction, MessageView

CHANNEL = "kosmo_events"  # NOTIFY channel: payload = the largest history id a commit wrote
_ID_WIDTH = 20


class BadEventId(ValueError):
    pass


def encode_event_id(history_id: int) -> str:
    return str(history_id).zfill(_ID_WIDTH)


def decode_event_id(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= _ID_WIDTH):
        raise BadEventId("since must be an event_id this API sent")
    return int(text)


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: UUID
    message: MessageView  # as it was at this event

    @property
    def type(self) -> str:
        if self.message.direction is Direction.INBOUND:
            return "message.inbound"
        return "message.created" if self.message.status is Status.PENDING else "message.status"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "event_id": self.event_id, "message": self.message.to_json()}


def make_event(history_id: int, user_id: UUID, message: MessageView) -> Event:
    """The event of history row ``history_id``; ``message`` as it was at that row."""
    return Event(encode_event_id(history_id), user_id, message)


def lock_event_order(conn: psycopg.Connection[Any]) -> None:
    """Call in a transaction just before inserting history rows: ids follow commit order."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (locks.EVENT_ORDER,))


# After the history id, the columns of ``kosmo.views.COLUMNS`` as they were at that row.
_AT_EVENT = """h.id, m.id, m.direction, m.node_id, m.text, h.status, h.reason, m.created_at,
               h.at, h.bridge_id, h.queue_position, h.estimated_transmit_at"""


def events_since(conn: psycopg.Connection[Any], user_id: UUID, after: int,
                 limit: int = 1000) -> list[Event]:
    """The user's events strictly after history id ``after``, oldest first."""
    rows = conn.execute(f"""
        SELECT {_AT_EVENT}
        FROM message_status_history h JOIN messages m ON m.id = h.message_id
        WHERE h.user_id = %s AND h.id > %s AND NOT h.note
        ORDER BY h.id LIMIT %s""", (user_id, after, limit)).fetchall()
    return [make_event(r[0], user_id, MessageView.from_row(r[1:])) for r in rows]


def events_after(conn: psycopg.Connection[Any], after: int,
                 limit: int = 1000) -> tuple[list[Event], int]:
    """Every user's events after history id ``after``, oldest first, from at most ``limit``
    history rows; and the last history id read (``after`` when there was none), notes and
    unassigned inbound messages included, so a reader resumes after it."""
    # The page of history first, then each row's message by its key: a lateral lookup, which
    # the planner cannot turn into a join. As a plain join, planned from missing or stale
    # statistics (a fresh database, until autovacuum analyzes it), this read hashed every
    # message and scanned the whole history: 3-22 ms per read with 10,000 rows, against
    # 0.3-0.7 ms; with statistics, both forms cost the same.
    rows = conn.execute(f"""
        SELECT h.note, h.user_id, {_AT_EVENT}
        FROM (SELECT * FROM message_status_history WHERE id > %s ORDER BY id LIMIT %s) h
        CROSS JOIN LATERAL (SELECT * FROM messages WHERE messages.id = h.message_id LIMIT 1) m
        ORDER BY h.id""", (after, limit)).fetchall()
    events = [make_event(r[2], r[1], MessageView.from_row(r[3:])) for r in rows
              if not r[0] and r[1] is not None]
    return events, (rows[-1][2] if rows else after)


def last_history_id(conn: psycopg.Connection[Any]) -> int:
    """The largest history id committed so far (0 when there is none)."""
    row = conn.execute("SELECT coalesce(max(id), 0) FROM message_status_history").fetchone()
    return int(row[0]) if row else 0
