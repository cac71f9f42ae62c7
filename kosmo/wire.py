"""The MQTT contract: topic names and JSON payloads exchanged with bridges (docs/mqtt.md).

Rules: every topic starts with the configured root (``kosmo`` by default); payloads are UTF-8
JSON objects of at most 4 KiB; timestamps are ISO 8601 in UTC. This module builds and parses;
it does no I/O. A payload that cannot be used raises ``BadPayload`` with the reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kosmo.clock import iso
from kosmo.delivery import Report, Status
from kosmo.domain import parse_node_id, parse_uuid
from kosmo.messages import NewMessage, StatusReport


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



MAX_PAYLOAD = 4096  # bytes; a larger MQTT payload is dead-lettered unread
MAX_INBOUND_TEXT = 1024  # bytes of UTF-8; radio texts are far smaller
_ID_MAX = 2**32 - 1  # Meshtastic packet ids are 32-bit
_REPORTED = {"transmitted": Status.TRANSMITTED, "delivered": Status.DELIVERED,
             "failed": Status.FAILED}


class BadPayload(ValueError):
    """The payload cannot be used; ``str()`` is the reason kept with the dead letter."""


def status_topic(root: str) -> str:
    return f"{root}/mesh/status"


def inbound_topic(root: str) -> str:
    return f"{root}/mesh/inbound"


def bridge_state_topic(root: str, bridge_id: str = "+") -> str:
    return f"{root}/bridge/{bridge_id}/state"


@dataclass(frozen=True)
class InboundPacket:
    from_node_id: str
    text: str
    packet_id: int
    bridge_id: str
    rx_time: datetime
    reply_to_packet_id: int | None


@dataclass(frozen=True)
class BridgeState:
    bridge_id: str
    state: str
    info: dict[str, Any]


def _not_json(literal: str) -> Any:
    raise BadPayload(f"payload is not JSON: {literal} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise BadPayload(f"number {literal[:20]} is out of range")
    return value


def _storable(text: str) -> bool:
    """No NUL (PostgreSQL text refuses it) and no lone surrogate (not UTF-8)."""
    return "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text)


def _object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise BadPayload(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_not_json,
                          parse_float=_finite)
    except UnicodeDecodeError:
        raise BadPayload("payload is not UTF-8") from None
    except BadPayload:
        raise
    except (ValueError, RecursionError):
        raise BadPayload("payload is not JSON") from None
    if not isinstance(data, dict):
        raise BadPayload("payload is not a JSON object")
    return data


def _text_field(data: dict[str, Any], name: str, *, limit: int = 64,
                required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadPayload(f"{name} must be a string of 1..{limit} characters")
    if not _storable(value):
        raise BadPayload(f"{name} contains NUL or a lone surrogate")
    return value


def _packet_id(data: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _ID_MAX:
        raise BadPayload(f"{name} must be an integer 0..{_ID_MAX}")
    return value


def _timestamp(data: dict[str, Any], name: str) -> datetime:
    value = data.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise BadPayload(f"{name} is out of range") from None
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            raise BadPayload(f"{name} is not an ISO 8601 time") from None
        if at.tzinfo is not None:
            try:
                return at.astimezone(UTC)
            except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
                raise BadPayload(f"{name} is out of range") from None
    raise BadPayload(f"{name} must be an ISO 8601 time with an offset, or epoch seconds")


def parse_status(payload: bytes) -> StatusReport:
    data = _object(payload)
    message_id = parse_uuid(data.get("message_id"))
    if message_id is None:
        raise BadPayload("message_id must be a UUID")
    raw_status = data.get("status")
    status = _REPORTED.get(raw_status) if isinstance(raw_status, str) else None
    if status is None:
        raise BadPayload("status must be transmitted, delivered or failed")
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadPayload("reason must be a string")
    if reason is not None and not _storable(reason):
        raise BadPayload("reason contains NUL or a lone surrogate")
    bridge_id = _text_field(data, "bridge_id")
    # A bridge's clock may run ahead; an event is never recorded as later than its arrival.
    at = min(_timestamp(data, "at"), datetime.now(UTC))
    return StatusReport(message_id, Report(status, reason[:64] if reason else None), at,
                        _packet_id(data, "packet_id", required=False), bridge_id)


def parse_inbound(payload: bytes) -> InboundPacket:
    data = _object(payload)
    node_id = parse_node_id(data.get("from_node_id"))
    if node_id is None:
        raise BadPayload("from_node_id must be ! and 8 hex digits")
    text = data.get("text")
    if not isinstance(text, str) or not text:
        raise BadPayload("text must be a non-empty string")
    if not _storable(text):
        raise BadPayload("text contains NUL or a lone surrogate")
    if len(text.encode("utf-8")) > MAX_INBOUND_TEXT:
        raise BadPayload(f"text is over {MAX_INBOUND_TEXT} bytes")
    return InboundPacket(node_id, text, _packet_id(data, "packet_id", required=True) or 0,
                         _text_field(data, "bridge_id") or "", _timestamp(data, "rx_time"),
                         _packet_id(data, "reply_to_packet_id", required=False))


def parse_bridge_id(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) < 3 or parts[-1] != "state" or parts[-3] != "bridge" or not parts[-2]:
        raise BadPayload("not a bridge state topic")
    return parts[-2]


def parse_bridge_state(topic: str, payload: bytes) -> BridgeState:
    bridge_id = parse_bridge_id(topic)
    data = _object(payload)
    state = data.get("state")
    if state not in ("online", "offline"):
        raise BadPayload("state must be online or offline")
    return BridgeState(bridge_id, state, {k: v for k, v in data.items() if k != "state"})
