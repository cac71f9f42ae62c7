"""The MQTT contract (docs/mqtt.md): the topics, and every payload in both directions. No I/O.

    outbound message   gateway -> a bridge  outbound_payload   parse_outbound (the bridge)
    status report      bridge -> gateway    status_payload     parse_status
    inbound text       bridge -> gateway    inbound_payload    parse_inbound
    bridge state       bridge -> gateway    state_payload      parse_bridge_state (retained),
                                                                parse_pace (its pace, credit)
    nodes heard        bridge -> gateway    heard_payloads     parse_heard (chunked)

Rules:
- Every topic starts with the configured root (``kosmo`` by default).
- Written: compact UTF-8 JSON (``,`` and ``:`` without spaces, non-ASCII as is), keys in the
  order docs/mqtt.md shows, an optional key left out rather than null; times ISO 8601 in UTC
  with ``Z``, the fraction only when it is not zero (``kosmo.clock.iso``). Old gateways and
  bridges read and write these very bytes.
- Read: a JSON object of at most 4 KiB. A payload that cannot be used raises ``BadPayload``
  with the reason (the gateway keeps it as a dead letter); on the bridge ``BadOutbound``, which
  carries the ``message_id`` when that much was readable, so the message can still be reported
  ``failed``.
- Each side reads by its own rules, which differ and are kept as they are. The gateway refuses
  NaN, Infinity and numbers beyond a float anywhere in the payload, times outside the years
  1-9999 in UTC, and NUL or lone surrogates in text it stores. The bridge reads any JSON Python
  reads, takes NUL in a text (harmless on the air), refuses lone surrogates, and reads
  ``expires_at`` as finite epoch seconds of any size.
- Nodes heard are written in chunks (``heard_payloads``), each within the 4 KiB limit and
  complete in itself, so a node database of hundreds of nodes needs no larger limit and the
  reader needs no reassembly. Each node's ``last_heard`` is read like ``at`` in a report: a
  time later than its arrival counts as the arrival.
- The text rule for replies (``inbound_text_ok``) is the gateway's: the bridge checks it before
  it publishes, so no reply it sends becomes a dead letter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kosmo.clock import iso
from kosmo.delivery import Report, Status
from kosmo.domain import parse_node_id, parse_uuid
from kosmo.messages import NewMessage, StatusReport
from kosmo.wire_json import MAX_PAYLOAD as MAX_PAYLOAD  # the JSON rules: kosmo/wire_json.py
from kosmo.wire_json import BadPayload as BadPayload
from kosmo.wire_json import dumps as _dumps
from kosmo.wire_json import epoch as _epoch
from kosmo.wire_json import json_object as _object
from kosmo.wire_json import packet_id as _packet_id
from kosmo.wire_json import storable as _storable
from kosmo.wire_json import text_field as _text_field
from kosmo.wire_json import timestamp as _timestamp

MAX_INBOUND_TEXT = 1024  # bytes of UTF-8; radio texts are far smaller
MAX_REASON = 64  # characters of a failure reason that are kept
MAX_HOPS = 7  # Meshtastic's largest hop limit
MAX_SNR = 100.0  # dB, either sign; real radios report about -25 to +20
_REPORTED = {"transmitted": Status.TRANSMITTED, "delivered": Status.DELIVERED,
             "failed": Status.FAILED}


class BadOutbound(BadPayload):
    """An outbound message the bridge cannot use; ``message_id`` when it was readable."""

    def __init__(self, reason: str, message_id: str | None = None) -> None:
        super().__init__(reason)
        self.message_id = message_id


# --- topics -----------------------------------------------------------------------------------

def outbound_topic(root: str, bridge_id: str, node_id: str) -> str:
    """Where the gateway hands one bridge a message for ``node_id``: each bridge has its own."""
    return f"{root}/bridge/{bridge_id}/outbound/{node_id}"


def outbound_filter(root: str, bridge_id: str) -> str:
    """What a bridge subscribes to: the messages handed to it, for every node."""
    return outbound_topic(root, bridge_id, "+")


def status_topic(root: str) -> str:
    return f"{root}/mesh/status"


def inbound_topic(root: str) -> str:
    return f"{root}/mesh/inbound"


def bridge_state_topic(root: str, bridge_id: str = "+") -> str:
    return f"{root}/bridge/{bridge_id}/state"


def heard_topic(root: str, bridge_id: str = "+") -> str:
    return f"{root}/bridge/{bridge_id}/heard"


def is_heard_topic(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) >= 3 and parts[-1] == "heard" and parts[-3] == "bridge"


def parse_bridge_id(topic: str, leaf: str = "state") -> str:
    parts = topic.split("/")
    if len(parts) < 3 or parts[-1] != leaf or parts[-3] != "bridge" or not parts[-2]:
        raise BadPayload(f"not a bridge {leaf} topic")
    return parts[-2]


# --- text -------------------------------------------------------------------------------------

def inbound_text_problem(text: str) -> str | None:
    """Why the gateway would not take ``text`` as a reply, or None when it would."""
    if not text:
        return "text must be a non-empty string"
    if not _storable(text):
        return "text contains NUL or a lone surrogate"
    if len(text.encode("utf-8")) > MAX_INBOUND_TEXT:
        return f"text is over {MAX_INBOUND_TEXT} bytes"
    return None


def inbound_text_ok(text: str) -> bool:
    """What the gateway accepts as a reply text (anything else would be dead-lettered)."""
    return inbound_text_problem(text) is None


# --- outbound message: gateway -> bridges -----------------------------------------------------

@dataclass(frozen=True)
class Outbound:
    """An outbound message as the bridge reads it (``created_at`` is not read)."""

    message_id: str  # canonical UUID text
    target: str  # !xxxxxxxx, lower case
    text: str
    expires_at: float  # epoch seconds


def outbound_payload(message: NewMessage) -> bytes:
    return _dumps({
        "message_id": str(message.message_id),
        "target_node_id": message.node_id,
        "text": message.text,
        "created_at": iso(message.created_at),
        "expires_at": iso(message.expires_at),
    })


def parse_outbound(topic: str, payload: bytes) -> Outbound:
    data = _object(payload, strict=False, bad=BadOutbound)
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
    expires_at = _epoch(data.get("expires_at"))
    if expires_at is None:
        raise BadOutbound("expires_at must be an ISO 8601 time with an offset, or epoch "
                          "seconds", message_id)
    return Outbound(message_id, target, text, expires_at)


# --- status report: bridge -> gateway ---------------------------------------------------------

def status_payload(message_id: str, status: str, *, bridge_id: str, at: datetime,
                   packet_id: int | None = None, reason: str | None = None) -> bytes:
    body: dict[str, Any] = {"message_id": message_id, "status": status}
    if reason is not None:
        body["reason"] = reason[:MAX_REASON]
    body["bridge_id"] = bridge_id
    if packet_id is not None:
        body["packet_id"] = packet_id
    body["at"] = iso(at)
    return _dumps(body)


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
    return StatusReport(message_id, Report(status, reason[:MAX_REASON] if reason else None), at,
                        _packet_id(data, "packet_id", required=False), bridge_id)


# --- inbound text: bridge -> gateway ----------------------------------------------------------

@dataclass(frozen=True)
class InboundPacket:
    from_node_id: str
    text: str
    packet_id: int
    bridge_id: str
    rx_time: datetime
    reply_to_packet_id: int | None


def inbound_payload(from_node_id: str, text: str, *, packet_id: int, bridge_id: str,
                    rx_time: datetime, reply_to: int | None) -> bytes:
    """``reply_to`` 0 is the radio's "not a reply" and is left out, like None."""
    body: dict[str, Any] = {"from_node_id": from_node_id, "text": text, "packet_id": packet_id,
                            "bridge_id": bridge_id, "rx_time": iso(rx_time)}
    if reply_to:
        body["reply_to_packet_id"] = reply_to
    return _dumps(body)


def parse_inbound(payload: bytes) -> InboundPacket:
    data = _object(payload)
    node_id = parse_node_id(data.get("from_node_id"))
    if node_id is None:
        raise BadPayload("from_node_id must be ! and 8 hex digits")
    text = data.get("text")
    if not isinstance(text, str):
        raise BadPayload("text must be a non-empty string")
    problem = inbound_text_problem(text)
    if problem is not None:
        raise BadPayload(problem)
    return InboundPacket(node_id, text, _packet_id(data, "packet_id", required=True) or 0,
                         _text_field(data, "bridge_id") or "", _timestamp(data, "rx_time"),
                         _packet_id(data, "reply_to_packet_id", required=False))


# --- bridge state: bridge -> gateway, retained ------------------------------------------------

@dataclass(frozen=True)
class BridgeState:
    bridge_id: str  # from the topic
    state: str  # online or offline
    info: dict[str, Any]  # the other members, shown as they are


def state_payload(state: str, info: dict[str, Any] | None = None) -> bytes:
    return _dumps({"state": state, **(info or {})})


@dataclass(frozen=True)
class Pace:
    """What a bridge's state says of its radio's pace, for the gateway's schedule.

    ``credit``: texts the bridge holds unsent at most (the gateway hands it no more);
    ``min_gap_s``: real seconds between two texts' starts; ``duty_cycle``: the share of each
    rolling ``window_s`` the radio may transmit (None: no limit) of which ``airtime_used_s`` is
    spent; ``busy_s``: real seconds until the radio has sent what it holds; ``region`` and
    ``modem_preset`` price a text's airtime (kosmo.airtime), in radio seconds: divided by
    ``time_scale`` (radio seconds per real second; only a sped-up simulated radio says it) it
    is in real seconds like the rest."""

    credit: int = 2
    min_gap_s: float = 2.0
    duty_cycle: float | None = None
    window_s: float = 3600.0
    airtime_used_s: float = 0.0
    busy_s: float = 0.0
    region: str = "UNSET"
    modem_preset: str = "LONG_FAST"
    time_scale: float = 1.0


MAX_CREDIT = 100_000  # the contract's bound; a bridge's own setting is far smaller


def _number(info: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = info.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= value <= high:
        raise BadPayload(f"{key} must be a number from {low:g} to {high:g}")
    return float(value)


def parse_pace(info: dict[str, Any]) -> Pace:
    """The pace members of an ``online`` state (``BridgeState.info``); a member left out takes
    its default (an older bridge says none of them: credit 2, one text per 2 s, no limit)."""
    credit = info.get("credit", Pace.credit)
    if isinstance(credit, bool) or not isinstance(credit, int) or not 1 <= credit <= MAX_CREDIT:
        raise BadPayload(f"credit must be an integer 1..{MAX_CREDIT}")
    duty = info.get("duty_cycle_percent")
    if duty is not None:
        duty = _number(info, "duty_cycle_percent", 100.0, 0.01, 100.0) / 100.0
    region, preset = info.get("region", Pace.region), info.get("modem_preset", Pace.modem_preset)
    if not isinstance(region, str) or not isinstance(preset, str):
        raise BadPayload("region and modem_preset must be strings")
    return Pace(credit=credit,
                min_gap_s=_number(info, "min_gap_s", Pace.min_gap_s, 0.0, 3600.0),
                duty_cycle=duty,
                window_s=_number(info, "window_s", Pace.window_s, 1.0, 86400.0),
                airtime_used_s=_number(info, "airtime_used_s", 0.0, 0.0, 86400.0),
                busy_s=_number(info, "estimated_wait_s", 0.0, 0.0, 10.0 * 86400.0),
                region=region, modem_preset=preset,
                time_scale=_number(info, "time_scale", 1.0, 0.001, 10_000.0))


def parse_bridge_state(topic: str, payload: bytes) -> BridgeState:
    bridge_id = parse_bridge_id(topic)
    data = _object(payload)
    state = data.get("state")
    if state not in ("online", "offline"):
        raise BadPayload("state must be online or offline")
    return BridgeState(bridge_id, state, {k: v for k, v in data.items() if k != "state"})


# --- nodes heard: bridge -> gateway, in chunks ------------------------------------------------

@dataclass(frozen=True)
class Heard:
    """One node the bridge's radio heard: when last, how well and how far, when known."""

    node_id: str  # !xxxxxxxx, lower case
    last_heard: datetime
    snr: float | None = None  # dB, to 0.01 dB (radios report quarters)
    hops_away: int | None = None  # 0: a direct neighbour


@dataclass(frozen=True)
class HeardReport:
    bridge_id: str  # from the topic
    nodes: tuple[Heard, ...]


def _heard_entry(node: Heard) -> bytes:
    body: dict[str, Any] = {"node_id": node.node_id, "last_heard": iso(node.last_heard)}
    if node.snr is not None:
        body["snr"] = round(float(node.snr), 2)
    if node.hops_away is not None:
        body["hops_away"] = node.hops_away
    return _dumps(body)


def heard_payloads(nodes: Iterable[Heard]) -> list[bytes]:
    """The observations as few payloads as fit, each at most ``MAX_PAYLOAD`` bytes, in order
    (one holds about 45 nodes). Each payload stands alone: the reader needs no other chunk."""
    head, tail = b'{"nodes":[', b"]}"
    payloads: list[bytes] = []
    chunk: list[bytes] = []
    size = len(head) + len(tail)
    for entry in map(_heard_entry, nodes):
        if chunk and size + 1 + len(entry) > MAX_PAYLOAD:
            payloads.append(head + b",".join(chunk) + tail)
            chunk, size = [], len(head) + len(tail)
        size += len(entry) + (1 if chunk else 0)
        chunk.append(entry)
    if chunk:
        payloads.append(head + b",".join(chunk) + tail)
    return payloads


def _snr(entry: dict[str, Any]) -> float | None:
    value = entry.get("snr")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not -MAX_SNR <= value <= MAX_SNR:
        raise BadPayload(f"snr must be a number from -{MAX_SNR:g} to {MAX_SNR:g}")
    return round(float(value), 2)  # no SNR is finer; and no underflow in the database


def _hops(entry: dict[str, Any]) -> int | None:
    value = entry.get("hops_away")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_HOPS:
        raise BadPayload(f"hops_away must be an integer 0..{MAX_HOPS}")
    return value


def parse_heard(topic: str, payload: bytes) -> HeardReport:
    """A chunk of nodes heard. A ``last_heard`` later than its arrival is read as the arrival
    (a radio's clock may run ahead, or be unset and read as any time)."""
    bridge_id = parse_bridge_id(topic, "heard")
    if len(bridge_id) > 64 or not _storable(bridge_id):
        raise BadPayload("bridge id in the topic must be 1..64 characters without NUL")
    data = _object(payload)
    entries = data.get("nodes")
    if not isinstance(entries, list):
        raise BadPayload("nodes must be a list")
    now = datetime.now(UTC)
    nodes: list[Heard] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadPayload(f"nodes[{i}] is not an object")
        node_id = parse_node_id(entry.get("node_id"))
        if node_id is None:
            raise BadPayload(f"nodes[{i}].node_id must be ! and 8 hex digits")
        try:
            at = min(_timestamp(entry, "last_heard"), now)
            nodes.append(Heard(node_id, at, _snr(entry), _hops(entry)))
        except BadPayload as exc:
            raise BadPayload(f"nodes[{i}].{exc}") from None
    return HeardReport(bridge_id, tuple(nodes))
