"""SQL of the mesh's replies: store each packet once, thread it to one user, keep dead letters.

Threading rule (docs/threading.md), applied in this order for a reply from node N:
1. ``reply_to_packet_id`` names one of our outbound packets sent TO node N: that message's user.
2. Otherwise the user whose outbound message to N is the most recent one, if it was created
   within the thread window (any status counts).
3. Otherwise nobody: the reply is kept unassigned and no user sees it.
So a reply reaches at most one user, and only a user who messaged that node.

Rules: the same packet (node, packet id) heard by several bridges is stored once; the first
copy wins. Everything runs in the caller's transaction, with the dead letters of the batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from kosmo.events import Event
from kosmo.ledger_store import HistoryRow, record_history
from kosmo.wire import InboundPacket


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    payload: bytes
    reason: str


@dataclass(frozen=True)
class Stored:
    packet: InboundPacket
    message_id: UUID | None  # None: a copy of a packet already stored
    user_id: UUID | None


def _owner(conn: psycopg.Connection[Any], packet: InboundPacket, since: datetime) -> UUID | None:
    if packet.reply_to_packet_id is not None:
        row = conn.execute(
            "SELECT user_id FROM messages WHERE direction = 'outbound' AND node_id = %s"
            " AND packet_id = %s ORDER BY created_at DESC LIMIT 1",
            (packet.from_node_id, packet.reply_to_packet_id)).fetchone()
        if row is not None:
            return row[0]  # type: ignore[no-any-return]
    row = conn.execute(
        "SELECT user_id FROM messages WHERE direction = 'outbound' AND node_id = %s"
        " AND created_at >= %s ORDER BY created_at DESC LIMIT 1",
        (packet.from_node_id, since)).fetchone()
    return None if row is None else row[0]


def store_inbound(conn: psycopg.Connection[Any], packets: list[InboundPacket],
                  dead: list[DeadLetter], now: datetime, window: float
                  ) -> tuple[list[Stored], list[Event]]:
    if dead:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO dead_letters (topic, payload, reason, received_at)"
                            " VALUES (%s, %s, %s, %s)",
                            [(d.topic, d.payload, d.reason, now) for d in dead])
    since = now - timedelta(seconds=window)
    stored: list[Stored] = []
    history: list[HistoryRow] = []
    for packet in packets:
        owner = _owner(conn, packet, since)
        message_id = uuid.uuid4()
        row = conn.execute("""
            INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at,
                                  updated_at, packet_id, bridge_id, reply_to_packet_id, rx_time)
            VALUES (%s, 'inbound', %s, %s, %s, 'received', %s, %s, %s, %s, %s, %s)
            ON CONFLICT (node_id, packet_id) WHERE direction = 'inbound' DO NOTHING
            RETURNING id""",
            (message_id, owner, packet.from_node_id, packet.text, now, now, packet.packet_id,
             packet.bridge_id, packet.reply_to_packet_id, packet.rx_time)).fetchone()
        if row is None:
            stored.append(Stored(packet, None, None))
            continue
        stored.append(Stored(packet, message_id, owner))
        history.append(HistoryRow(message_id, owner, "inbound", packet.from_node_id,
                                  packet.text, now, "received", None, now))
    return stored, record_history(conn, history)
