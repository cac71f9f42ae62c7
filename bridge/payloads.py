"""The bridge's side of the MQTT contract (docs/mqtt.md): topics, and JSON in and out. No I/O.

Rules:
- Outbound payloads are checked field by field; one that cannot be used raises ``BadOutbound``
  with the reason, and carries the ``message_id`` when that much was readable, so the bridge
  can still report the message ``failed`` instead of leaving it unanswered.
- Timestamps are written as ISO 8601 UTC with ``Z``; read as ISO 8601 with an offset or epoch
  seconds, like the gateway.
- Payloads are compact UTF-8 JSON, non-ASCII written as is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kosmo.clock import iso
from kosmo.domain import parse_node_id, parse_uuid

MAX_PAYLOAD = 4096
MAX_INBOUND_TEXT = 1024  # bytes, the gateway's limit


def outbound_filter(root: str) -> str:
    return f"{root}/mesh/outbound/+"


def status_topic(root: str) -> str:
    return f"{root}/mesh/status"


def inbound_topic(root: str) -> str:
    return f"{root}/mesh/inbound"


def state_topic(root: str, bridge_id: str) -> str:
    return f"{root}/bridge/{bridge_id}/state"


class BadOutbound(ValueError):
    def __init__(self, reason: str, message_id: str | None = None) -> None:
        super().__init__(reason)
        self.message_id = message_id


@dataclass(frozen=True)
class Outbound:
    message_id: str
    target: str  # !xxxxxxxx, lower case
    text: str
    expires_at: float  # epoch seconds


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _timestamp(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            return None
        # NaN would be stored as NULL by SQLite; neither it nor Infinity is a time.
        return seconds if math.isfinite(seconds) else None
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return None
        if at.tzinfo is not None:
            return at.timestamp()
    return None


def parse_outbound(topic: str, payload: bytes) -> Outbound:
    if len(payload) > MAX_PAYLOAD:
        raise BadOutbound(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadOutbound("payload is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise BadOutbound("payload is not a JSON object")
    uuid = parse_uuid(data.get("message_id"))
    if uuid is None:
        raise BadOutbound("message_id must be a UUID")
    message_id = str(uuid)
    target = parse_node_id(data.get("target_node_id"))
    if target is None:
        raise BadOutbound("target_node_id must be ! and 8 hex digits", message_id)
    if parse_node_id(topic.rsplit("/", 1)[-1]) != target:
        raise BadOutbound("target_node_id does not match the topic", message_id)
    text = data.get("text")
    if not isinstance(text, str) or not text:
        raise BadOutbound("text must be a non-empty string", message_id)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadOutbound("text is not valid Unicode", message_id) from None
    expires_at = _timestamp(data.get("expires_at"))
    if expires_at is None:
        raise BadOutbound("expires_at must be an ISO 8601 time with an offset, or epoch "
                          "seconds", message_id)
    return Outbound(message_id, target, text, expires_at)


def status_payload(message_id: str, status: str, *, bridge_id: str, at: datetime,
                   packet_id: int | None = None, reason: str | None = None) -> bytes:
    body: dict[str, Any] = {"message_id": message_id, "status": status}
    if reason is not None:
        body["reason"] = reason[:64]
    body["bridge_id"] = bridge_id
    if packet_id is not None:
        body["packet_id"] = packet_id
    body["at"] = iso(at)
    return _dumps(body)


def inbound_payload(from_node_id: str, text: str, *, packet_id: int, bridge_id: str,
                    rx_time: datetime, reply_to: int | None) -> bytes:
    body: dict[str, Any] = {"from_node_id": from_node_id, "text": text, "packet_id": packet_id,
                            "bridge_id": bridge_id, "rx_time": iso(rx_time)}
    if reply_to:
        body["reply_to_packet_id"] = reply_to
    return _dumps(body)


def inbound_text_ok(text: str) -> bool:
    """What the gateway accepts as a reply text (anything else would be dead-lettered)."""
    if not text or "\x00" in text or any("\ud800" <= c <= "\udfff" for c in text):
        return False
    return len(text.encode("utf-8")) <= MAX_INBOUND_TEXT


def state_payload(state: str, info: dict[str, Any] | None = None) -> bytes:
    return _dumps({"state": state, **(info or {})})


def now() -> datetime:
    return datetime.now(UTC)
