"""The MQTT contract: topic names and JSON payloads exchanged with bridges (docs/mqtt.md).

Rules: every topic starts with the configured root (``kosmo`` by default); payloads are UTF-8
JSON objects; timestamps are ISO 8601 in UTC. This module builds and parses; it does no I/O.
"""

from __future__ import annotations

import json

from kosmo.clock import iso
from kosmo.ledger_store import NewMessage


def outbound_topic(root: str, node_id: str) -> str:
    return f"{root}/mesh/outbound/{node_id}"


def outbound_payload(message: NewMessage) -> bytes:
    return json.dumps({
        "message_id": str(message.message_id),
        "target_node_id": message.node_id,
        "text": message.text,
        "created_at": iso(message.created_at),
        "expires_at": iso(message.expires_at),
    }, ensure_ascii=False, separators=(",", ":")).encode()

