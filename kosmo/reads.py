"""Read queries of the HTTP API: one message with its history, conversations, and cursors.

Rules:
- Every query is scoped to the caller's ``user_id``: a message of another user is "not found".
- Lists page with opaque cursors (base64url of the last row's sort key). A cursor that does not
  decode is a client error (``BadCursor``), never a server error.
- Conversations are listed most recent first; a conversation's messages oldest first.
- A message is written as its ``kosmo.views.MessageView``; the detail adds ``status_history``.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from kosmo.clock import iso
from kosmo.views import COLUMNS, MessageView

MAX_LIMIT = 200
DEFAULT_LIMIT = 50


class BadCursor(ValueError):
    pass


def encode_cursor(*key: object) -> str:
    raw = json.dumps([k.isoformat() if isinstance(k, datetime) else str(k) for k in key])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError):
        raise BadCursor("cursor is not one this API issued") from None
    if not (isinstance(key, list) and len(key) == size and all(isinstance(k, str) for k in key)):
        raise BadCursor("cursor is not one this API issued")
    return key


def _timestamp(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise BadCursor("cursor is not one this API issued") from None
    if at.tzinfo is None:
        raise BadCursor("cursor is not one this API issued")
    return at


def message(conn: psycopg.Connection[Any], user_id: UUID, message_id: UUID
            ) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE id = %s AND user_id = %s",
                       (message_id, user_id)).fetchone()
    if row is None:
        return None
    out = MessageView.from_row(row).to_json()
    history = conn.execute(
        "SELECT status, at, reason, note FROM message_status_history"
        " WHERE message_id = %s ORDER BY id", (message_id,)).fetchall()
    out["status_history"] = [
        {"status": h[0], "at": iso(h[1]), "reason": h[2], **({"note": True} if h[3] else {})}
        for h in history]
    return out


def conversations(conn: psycopg.Connection[Any], user_id: UUID, limit: int,
                  cursor: str | None) -> dict[str, Any]:
    after = ""
    params: dict[str, Any] = {"user": user_id, "limit": limit + 1}
    if cursor is not None:
        at, node = decode_cursor(cursor, 2)
        params.update(at=_timestamp(at), node=node)
        after = "WHERE (updated_at, node_id) < (%(at)s, %(node)s)"
    rows = conn.execute(f"""
        WITH per_node AS (
            SELECT node_id, count(*) AS message_count, max(created_at) AS updated_at
            FROM messages WHERE user_id = %(user)s GROUP BY node_id)
        SELECT node_id, message_count, updated_at FROM per_node {after}
        ORDER BY updated_at DESC, node_id DESC LIMIT %(limit)s""", params).fetchall()
    page, more = rows[:limit], len(rows) > limit
    lasts: dict[str, MessageView] = {}
    if page:
        for row in conn.execute(f"""
                SELECT DISTINCT ON (node_id) {COLUMNS} FROM messages
                WHERE user_id = %s AND node_id = ANY(%s)
                ORDER BY node_id, created_at DESC, id DESC""",
                (user_id, [r[0] for r in page])).fetchall():
            last = MessageView.from_row(row)
            lasts[last.node_id] = last
    return {
        "conversations": [
            {"node_id": r[0], "last_message": lasts[r[0]].to_json(), "message_count": r[1],
             "updated_at": iso(r[2])} for r in page],
        "next_cursor": encode_cursor(page[-1][2], page[-1][0]) if more else None,
    }


def conversation(conn: psycopg.Connection[Any], user_id: UUID, node_id: str, limit: int,
                 cursor: str | None) -> dict[str, Any]:
    after = ""
    params: dict[str, Any] = {"user": user_id, "node": node_id, "limit": limit + 1}
    if cursor is not None:
        at, last_id = decode_cursor(cursor, 2)
        try:
            params.update(at=_timestamp(at), id=UUID(last_id))
        except ValueError:
            raise BadCursor("cursor is not one this API issued") from None
        after = "AND (created_at, id) > (%(at)s, %(id)s)"
    rows = conn.execute(f"""
        SELECT {COLUMNS} FROM messages
        WHERE user_id = %(user)s AND node_id = %(node)s {after}
        ORDER BY created_at, id LIMIT %(limit)s""", params).fetchall()
    page, more = [MessageView.from_row(r) for r in rows[:limit]], len(rows) > limit
    return {
        "node_id": node_id,
        "messages": [m.to_json() for m in page],
        "next_cursor": encode_cursor(page[-1].created_at, page[-1].message_id) if more else None,
    }


def ping(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT 1")
