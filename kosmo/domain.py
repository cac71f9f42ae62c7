"""Domain rules of the gateway: node ids, message text, plans, scopes and quota arithmetic.

Rules:
- Pure functions over plain values: no I/O, no clock (``now`` is always passed in).
- A node id is ``!`` + 8 hex digits, normalised to lower case.
- Text is 1..max_bytes UTF-8 bytes with no control characters (Unicode Cc) other than newline and
  tab, and no lone surrogates.
- A subscription is active when its status is ``active`` or ``trialing`` and ``now`` lies inside
  its current period [start, end). Plans are data; their scope is ``none`` (receive only),
  ``any`` or ``whitelist``.
- The quota is debited atomically in SQL (see ``kosmo.ledger_store``); here lives only what the
  debit is checked against and how the quota is shown.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from kosmo.clock import iso

NODE_ID = re.compile(r"![0-9a-fA-F]{8}")
ACTIVE_STATUSES = frozenset({"active", "trialing"})


def parse_node_id(value: object) -> str | None:
    """The normalised node id, or None when ``value`` is not one."""
    if isinstance(value, str) and NODE_ID.fullmatch(value):  # `$` would let "\n" through
        return value.lower()
    return None


def parse_uuid(value: object) -> UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return UUID(value)
    except ValueError:
        return None


def text_problem(text: str, max_bytes: int) -> str | None:
    """Why ``text`` cannot be sent, or None when it can."""
    if not text:
        return "must not be empty"
    for char in text:
        if char in "\n\t":
            continue
        if unicodedata.category(char) in ("Cc", "Cs"):
            return f"contains the control character U+{ord(char):04X}"
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        return f"is {size} bytes in UTF-8; the limit is {max_bytes}"
    return None


class Scope(enum.StrEnum):
    NONE = "none"
    ANY = "any"
    WHITELIST = "whitelist"


class Refusal(enum.StrEnum):
    """Why a send is refused; each value is the last segment of a problem type URI."""

    SUBSCRIPTION_INACTIVE = "subscription-inactive"
    RECEIVE_ONLY = "receive-only"
    NODE_NOT_WHITELISTED = "node-not-whitelisted"
    QUOTA_EXCEEDED = "quota-exceeded"
    MESH_CONGESTED = "mesh-congested"  # the estimate lies beyond the expiry; with retry-after
    IDEMPOTENCY_KEY_IN_FLIGHT = "idempotency-key-in-flight"  # its claim was taken over


@dataclass(frozen=True)
class Subscription:
    """What the gateway reads of a user's subscription for one send."""

    user_id: UUID
    plan: str
    scope: Scope
    status: str
    period_start: datetime
    period_end: datetime
    quota_limit: int | None  # None: unlimited

    def is_active(self, now: datetime) -> bool:
        return self.status in ACTIVE_STATUSES and self.period_start <= now < self.period_end


def check_scope(sub: Subscription | None, node_whitelisted: bool, now: datetime) -> Refusal | None:
    """The refusal for sending to a node under ``sub``, before the quota; None when allowed."""
    if sub is None or not sub.is_active(now):
        return Refusal.SUBSCRIPTION_INACTIVE
    if sub.scope is Scope.NONE or sub.quota_limit == 0:
        return Refusal.RECEIVE_ONLY
    if sub.scope is Scope.WHITELIST and not node_whitelisted:
        return Refusal.NODE_NOT_WHITELISTED
    return None


@dataclass(frozen=True)
class Quota:
    used: int
    limit: int | None
    resets_at: datetime

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)

    def to_json(self) -> dict[str, object]:
        return {
            "used": self.used,
            "limit": self.limit,
            "remaining": self.remaining,
            "resets_at": iso(self.resets_at),
        }
