"""Webhooks: which events are sent, what a delivery carries, how it is signed and retried.
Sans-IO: no clock, no database, no network.

Rules:
- Event types: ``message.<status>`` for every status an outbound message passes through after
  it was accepted (``queued``, ``transmitted``, ``delivered``, ``failed``, ``expired``,
  ``canceled``), inferred ones included, and ``message.received`` for a reply in one of the
  user's conversations. ``pending`` (accepted) is not a webhook event. One event per row of
  ``message_status_history`` (``kosmo.events``), its id the stream's event id.
- Body: ``{"type", "timestamp", "data"}``; ``timestamp`` is the event's time, ``data`` the
  message as the API shows it, as it was at that event. The body is fixed once, so every
  attempt sends the same bytes.
- Signing is Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id`` (the event
  id, the same on every attempt), ``webhook-timestamp`` (Unix seconds of the attempt) and
  ``webhook-signature`` = ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` keyed with the
  base64-decoded part of the secret after ``whsec_``. The standard library does it (a few lines,
  no runtime dependency); the tests verify with the reference ``standardwebhooks`` package.
- An answer 2xx delivers; 410 Gone disables the webhook; anything else (another status, a
  timeout, a refused or failed connection) is retried after the next delay of the schedule,
  each delay scaled by a random factor in [0.9, 1.1]; after the last delay the delivery is
  given up.
- A URL is at most ``MAX_URL`` characters, ``https://`` (``http://`` too when private
  addresses are allowed), has a host, and carries no credentials nor fragment. Where it
  connects is checked at each connection (``kosmo.ssrf``), not here.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit

from kosmo.clock import iso
from kosmo.delivery import Status
from kosmo.events import Event

EVENT_TYPES = tuple(f"message.{status.value}" for status in (
    Status.QUEUED, Status.TRANSMITTED, Status.DELIVERED, Status.FAILED, Status.EXPIRED,
    Status.CANCELED, Status.RECEIVED))
ALL = "*"
MAX_URL = 2048
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
JITTER = 0.1


class Outcome(enum.StrEnum):
    """What became of one attempt (and so of its delivery)."""

    DELIVERED = "delivered"
    RETRYING = "retrying"
    GIVEN_UP = "given_up"
    DISABLED = "disabled"  # 410 Gone: the webhook is disabled, nothing more is sent to it


def event_type(event: Event) -> str | None:
    """The webhook event type of a stream event, or None when it is not one (``pending``)."""
    status = event.message.status
    if status is Status.PENDING:
        return None
    return f"message.{status.value}"


def body(event_type: str, event: Event) -> str:
    return json.dumps({"type": event_type, "timestamp": iso(event.message.updated_at),
                       "data": event.message.to_json()}, separators=(",", ":"))


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature(secret: str, msg_id: str, timestamp: int, payload: str) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.{payload}".encode()
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, payload: str) -> dict[str, str]:
    return {"content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, msg_id, timestamp, payload)}


def judge(status_code: int | None) -> Outcome:
    """The outcome of an answer (None: no answer), before the schedule is consulted."""
    if status_code is not None and 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code == 410:
        return Outcome.DISABLED
    return Outcome.RETRYING


def retry_delay(schedule: Sequence[float], attempt: int, jitter: float) -> float | None:
    """Seconds until the attempt after ``attempt`` (1-based), or None once the schedule is used
    up. ``jitter`` is a random number in [0, 1)."""
    if attempt > len(schedule):
        return None
    return schedule[attempt - 1] * (1 - JITTER + 2 * JITTER * jitter)


def check_url(url: object, allow_private: bool) -> str:
    """The URL if a webhook may use it; else ValueError saying why."""
    if not isinstance(url, str) or not url:
        raise ValueError("must be a URL")
    if len(url) > MAX_URL:
        raise ValueError(f"must be at most {MAX_URL} characters")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("must be printable ASCII without spaces (punycode a domain name)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (parses the port; raises on a bad one)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise ValueError("must be an https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("must not carry credentials")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.fragment or url.endswith("#"):
        raise ValueError("must not have a fragment")
    return url


def check_events(events: object) -> list[str]:
    """The event types if valid (``["*"]`` or known types, no repeats); else ValueError."""
    if not isinstance(events, list) or not events:
        raise ValueError(f'must be a non-empty list of event types, or ["{ALL}"]')
    if events == [ALL]:
        return [ALL]
    unknown = [e for e in events if not isinstance(e, str) or e not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event types {unknown!r}; known: {', '.join(EVENT_TYPES)}"
                         f' or ["{ALL}"]')
    if len(set(events)) != len(events):
        raise ValueError("lists an event type twice")
    return list(events)


def wants(events: Sequence[str], event_type: str) -> bool:
    return ALL in events or event_type in events
