"""The delivery state machine of an outbound message. Sans-IO: no clock, no database, no Trio.

Theory of operation
-------------------
An outbound message starts ``pending`` (stored and debited). Reports move it forward; the user
may cancel it while it waits:

    pending -> queued -> transmitted -> delivered
       |  |       |          |
       |  +-------+----------+--> failed (reason)          pending/queued --> expired (reason)
       |
       +--> canceled (reason "canceled"): only while waiting (pending, not handed to a bridge)

Rules:
- Forward only. A report that would move a message backwards, or repeats its status, changes
  nothing (duplicates and late reports are idempotent no-ops).
- ``delivered`` implies ``transmitted``: a delivery report that arrives first adds an inferred
  ``transmitted`` entry to the history before ``delivered``.
- ``failed``, ``expired``, ``canceled`` and ``delivered`` are final. A report for an expired or
  a canceled message is kept in the history as a note and changes neither status nor quota.
- ``failed`` and ``expired`` carry a reason (``unknown`` when a failure report has none).
- Refund rule: a message that never reached the air (``failed`` or ``expired`` straight from
  ``pending``/``queued``) is refunded, and since both are final this happens exactly once.
  ``transmitted -> failed`` is not refunded: the radio sent it.
- ``expired`` does not apply once a message is ``transmitted`` (it reached the air in time).
- ``cancel`` is the user's request, not a report: it applies only to a message that *waits*
  (``pending`` and not yet handed to a bridge, which the caller says with ``handed``), whose
  text no radio can have; it ends ``canceled`` and is refunded. Anything else (handed, queued,
  on air, final) is unchanged: the text may already be on its way.
- Reporting a status that is not a report (``pending``, ``received``) is a protocol error:
  ``InvalidReport``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    TRANSMITTED = "transmitted"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELED = "canceled"
    RECEIVED = "received"  # inbound messages only; never part of a transition


FINAL = frozenset({Status.DELIVERED, Status.FAILED, Status.EXPIRED, Status.CANCELED})
NOTED = frozenset({Status.EXPIRED, Status.CANCELED})  # final; later reports become notes
ON_AIR = frozenset({Status.TRANSMITTED, Status.DELIVERED})
REPORTS = frozenset({Status.QUEUED, Status.TRANSMITTED, Status.DELIVERED, Status.FAILED,
                     Status.EXPIRED})
_RANK = {Status.PENDING: 0, Status.QUEUED: 1, Status.TRANSMITTED: 2, Status.DELIVERED: 3}
UNKNOWN_REASON = "unknown"
CANCELED_REASON = "canceled"


class InvalidReport(ValueError):
    """A report that no message can receive (e.g. ``pending``)."""


@dataclass(frozen=True)
class Report:
    status: Status
    reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        if self.status not in REPORTS:
            raise InvalidReport(f"{self.status!r} is not a delivery report")


@dataclass(frozen=True)
class Entry:
    """One line of the status history."""

    status: Status
    reason: str | None = None
    note: bool = False  # recorded for the record; did not change the status


@dataclass(frozen=True)
class Transition:
    before: Status
    after: Status
    history: tuple[Entry, ...] = ()
    refund: bool = False

    @property
    def changed(self) -> bool:
        return self.after is not self.before


def _unchanged(status: Status, *history: Entry) -> Transition:
    return Transition(status, status, history)


def apply(status: Status, report: Report) -> Transition:
    """What ``report`` does to a message whose status is ``status``."""
    status = Status(status)
    if status not in _RANK and status not in FINAL:
        raise InvalidReport(f"a message in status {status!r} takes no delivery reports")
    target, reason = report.status, report.reason
    if target in (Status.FAILED, Status.EXPIRED) and not reason:
        reason = UNKNOWN_REASON if target is Status.FAILED else "ttl"

    if status in NOTED:
        return _unchanged(status, Entry(target, reason, note=True))
    if status in FINAL:
        return _unchanged(status)

    if target is Status.FAILED:
        return Transition(status, target, (Entry(target, reason),),
                          refund=status not in ON_AIR)
    if target is Status.EXPIRED:
        if status in ON_AIR:
            return _unchanged(status)
        return Transition(status, target, (Entry(target, reason),), refund=True)

    if _RANK[target] <= _RANK[status]:
        return _unchanged(status)
    history: tuple[Entry, ...] = (Entry(target),)
    if target is Status.DELIVERED and status is not Status.TRANSMITTED:
        history = (Entry(Status.TRANSMITTED, "inferred"), *history)
    return Transition(status, target, history)


def cancel(status: Status, handed: bool) -> Transition:
    """What the user's cancel does to a message in ``status``; ``handed``: a bridge has it."""
    status = Status(status)
    if status is Status.PENDING and not handed:
        return Transition(status, Status.CANCELED, (Entry(Status.CANCELED, CANCELED_REASON),),
                          refund=True)
    return _unchanged(status)
