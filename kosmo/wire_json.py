"""How the MQTT contract (kosmo/wire.py) reads and writes JSON, times and text. No I/O.

Rules (docs/mqtt.md):
- Written: compact UTF-8 JSON, non-ASCII as is.
- Read: at most ``MAX_PAYLOAD`` bytes. ``strict`` (the gateway): UTF-8 JSON without NaN,
  Infinity or numbers beyond a float; not strict: any JSON Python reads (the bridge).
- Text the gateway stores has no NUL and no lone surrogate; times it reads are aware, in UTC,
  within the years 1-9999 (ISO 8601 with an offset, or epoch seconds). The bridge reads times
  as finite epoch seconds of any size.
- Every unusable value raises ``BadPayload`` with the reason kept with the dead letter.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

MAX_PAYLOAD = 4096  # bytes; a larger MQTT payload is dead-lettered unread
_ID_MAX = 2**32 - 1  # Meshtastic packet ids are 32-bit


class BadPayload(ValueError):
    """The payload cannot be used; ``str()`` is the reason kept with the dead letter."""



def dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _not_json(literal: str) -> Any:
    raise BadPayload(f"payload is not JSON: {literal} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise BadPayload(f"number {literal[:20]} is out of range")
    return value


def json_object(payload: bytes, *, strict: bool = True,
            bad: type[BadPayload] = BadPayload) -> dict[str, Any]:
    """The payload as a JSON object. ``strict`` (the gateway): no NaN, Infinity or number
    beyond a float, and the reason tells UTF-8 from JSON. Not strict: the bridge's reading."""
    if len(payload) > MAX_PAYLOAD:
        raise bad(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    try:
        text = payload.decode("utf-8")
        data = (json.loads(text, parse_constant=_not_json, parse_float=_finite) if strict
                else json.loads(text))
    except UnicodeDecodeError:
        raise bad("payload is not UTF-8" if strict else "payload is not UTF-8 JSON") from None
    except BadPayload:
        raise
    except (ValueError, RecursionError):
        raise bad("payload is not JSON" if strict else "payload is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise bad("payload is not a JSON object")
    return data


def storable(text: str) -> bool:
    """No NUL (PostgreSQL text refuses it) and no lone surrogate (not UTF-8)."""
    return "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text)


def text_field(data: dict[str, Any], name: str, *, limit: int = 64,
                required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadPayload(f"{name} must be a string of 1..{limit} characters")
    if not storable(value):
        raise BadPayload(f"{name} contains NUL or a lone surrogate")
    return value


def packet_id(data: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _ID_MAX:
        raise BadPayload(f"{name} must be an integer 0..{_ID_MAX}")
    return value


def timestamp(data: dict[str, Any], name: str) -> datetime:
    """A time as the gateway reads it: aware, in UTC, within the years 1-9999."""
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


def epoch(value: object) -> float | None:
    """A time as the bridge reads it: finite epoch seconds, or None."""
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
