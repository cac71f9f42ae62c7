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

from kosmo.delivery import Status
from kosmo.events import Event
from kosmo.ledger_store import HistoryRow, record_history
from kosmo.views import Direction, MessageView
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


# One round trip for the whole batch: each packet's owner by the threading rule above.
_OWNERS = """
SELECT COALESCE(
    (SELECT m.user_id FROM messages m
     WHERE m.direction = 'outbound' AND m.node_id = p.node AND p.reply_to IS NOT NULL
       AND m.packet_id = p.reply_to ORDER BY m.created_at DESC LIMIT 1),
    (SELECT m.user_id FROM messages m
     WHERE m.direction = 'outbound' AND m.node_id = p.node AND m.created_at >= %s
     ORDER BY m.created_at DESC LIMIT 1))
FROM unnest(%b::text[], %b::bigint[]) WITH ORDINALITY AS p (node, reply_to, ord)
ORDER BY p.ord
"""

# The first copy of a packet wins, also when two copies are in the same batch.
_INSERT_REPLIES = """
INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at, updated_at,
                      packet_id, bridge_id, reply_to_packet_id, rx_time)
SELECT i, 'inbound', u, n, t, 'received', c, c, p, b, r, x
FROM unnest(%b::uuid[], %b::uuid[], %b::text[], %b::text[], %b::timestamptz[], %b::bigint[],
            %b::text[], %b::bigint[], %b::timestamptz[]) WITH ORDINALITY
     AS v (i, u, n, t, c, p, b, r, x, ord)
ORDER BY ord
ON CONFLICT (node_id, packet_id) WHERE direction = 'inbound' DO NOTHING
RETURNING id
"""


def store_inbound(conn: psycopg.Connection[Any], packets: list[InboundPacket],
                  dead: list[DeadLetter], now: datetime, window: float
                  ) -> tuple[list[Stored], list[Event]]:
    """Store the batch's replies and dead letters: a fixed number of statements per batch."""
    if dead:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO dead_letters (topic, payload, reason, received_at)"
                            " VALUES (%s, %s, %s, %s)",
                            [(d.topic, d.payload, d.reason, now) for d in dead])
    if not packets:
        return [], []
    owners = [row[0] for row in conn.execute(_OWNERS, (
        now - timedelta(seconds=window), [p.from_node_id for p in packets],
        [p.reply_to_packet_id for p in packets])).fetchall()]
    ids = [uuid.uuid4() for _ in packets]
    # Strictly increasing times keep the batch's order in conversations.
    times = [now + timedelta(microseconds=i) for i in range(len(packets))]
    inserted = {row[0] for row in conn.execute(_INSERT_REPLIES, (
        ids, owners, [p.from_node_id for p in packets], [p.text for p in packets], times,
        [p.packet_id for p in packets], [p.bridge_id for p in packets],
        [p.reply_to_packet_id for p in packets], [p.rx_time for p in packets])).fetchall()}
    stored = [Stored(p, i, o) if i in inserted else Stored(p, None, None)
              for p, i, o in zip(packets, ids, owners, strict=True)]
    history = [HistoryRow(o, MessageView(i, Direction.INBOUND, p.from_node_id, p.text,
                                         Status.RECEIVED, t, t, bridge_id=p.bridge_id))
               for p, i, o, t in zip(packets, ids, owners, times, strict=True) if i in inserted]
    return stored, record_history(conn, history)
