"""What the radio's routing results mean for the texts we handed to it. Sans-IO: no clock, no
radio, no database; time is passed in (radio seconds).

Theory of operation
-------------------
A text handed to the radio is a *flight*, known by the packet id the radio sent it as. The radio
reports on it with ROUTING_APP packets whose ``requestId`` is that id:

    from our own node, NONE       -> a neighbour rebroadcast it (implicit ACK): ``transmitted``
    from our own node, an error   -> the radio gave up or refused it: ``failed`` (the reason)
    from the destination, NONE    -> the destination acknowledged it: ``delivered``
    from the destination, error   -> it was heard, so it was on air: ``transmitted`` (if not
                                     yet reported), then ``failed`` (the reason)
    from another node, NONE       -> heard and relayed: ``transmitted``
    from another node, an error   -> as from the destination: ``transmitted``, ``failed``

Rules:
- Forward only: ``handed -> transmitted -> delivered/failed``. ``delivered`` and ``failed`` end
  the flight; a result for an ended or unknown flight changes nothing.
- ``transmitted`` is reported exactly when the text is known to have been on air: a result from
  any node but our own proves it (only a node that heard the packet answers it). The gateway
  refunds a failure that never was ``transmitted``, so an error from another node is reported
  ``transmitted`` first: the airtime was spent.
- The reason of a failure is the firmware's error name, except where a name of our own says
  what the user can do about it (``REASONS``): ``PKI_SEND_FAIL_PUBLIC_KEY`` (firmware 2.7, our
  radio holds no public key for the destination and refuses the DM without sending it) and
  ``PKI_UNKNOWN_PUBKEY`` (the destination could not decrypt it, lacking our key) both become
  ``no_public_key``. The first comes from our own node before the air: refunded; the second
  from the destination after it: ``transmitted`` first, not refunded.
- A local refusal that means the text never went on air (RATE_LIMIT_EXCEEDED,
  DUTY_CYCLE_LIMIT) before it was transmitted sends the text back to the queue, at most
  ``max_attempts`` hand-overs in all; then it fails with that reason.
- A result may arrive before the hand-over returns and the flight is added: it is kept as an
  orphan (a bounded number, for ``orphan_ttl``) and applied when the flight is added.
- A flight an earlier run of the bridge left (link 0) is known by the packet id it committed
  before its hand-over, whether or not the hand-over finished (bridge/sender.py ``restored``):
  the radio's results for that id end it as they would a flight of this run.
- Deadline (``result_timeout`` after the hand-over, or after the start for a flight an earlier
  run of the bridge left): every flight ends by then with exactly one final report. One still
  ``handed`` fails with ``no_routing_result`` (``unknown_after_restart`` for an earlier run's:
  its result went to that run, or it never reached the radio); one ``transmitted`` (it reached
  the air, but the destination's ACK never came: lost on the way back, or written to a bridge
  that was killed) fails with ``no_delivery_ack``. A result that comes later changes nothing
  (forward only).
- Only flights handed over the current radio link count as in flight: a reconnected or
  rebooted radio reports its own queue afresh.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from bridge.rows import RowState

RETRYABLE = frozenset({"RATE_LIMIT_EXCEEDED", "DUTY_CYCLE_LIMIT"})
NO_PUBLIC_KEY = "no_public_key"
# firmware error name -> the reason reported
REASONS = {"PKI_SEND_FAIL_PUBLIC_KEY": NO_PUBLIC_KEY, "PKI_UNKNOWN_PUBKEY": NO_PUBLIC_KEY}
NO_RESULT = "no_routing_result"
NO_DELIVERY_ACK = "no_delivery_ack"
UNKNOWN_AFTER_RESTART = "unknown_after_restart"


class Phase(enum.StrEnum):
    """Where a flight is; its row is in the state of the same name (or ``sending``, for a
    flight an earlier run left mid-hand-over)."""

    HANDED = RowState.HANDED.value
    TRANSMITTED = RowState.TRANSMITTED.value


class Next(enum.StrEnum):
    """What becomes of the message's row: the state it moves to (bridge/rows.py)."""

    TRANSMITTED = RowState.TRANSMITTED.value  # still awaiting delivery
    DONE = RowState.DONE.value
    REQUEUE = RowState.QUEUED.value

    @property
    def row(self) -> RowState:
        return RowState(self.value)


@dataclass(frozen=True)
class Outcome:
    message_id: str
    packet_id: int
    next: Next
    status: str | None = None  # the report: transmitted, delivered, failed; None to requeue
    reason: str | None = None


@dataclass
class Flight:
    message_id: str
    packet_id: int
    destination: int
    deadline: float
    attempts: int
    link: int  # the radio link epoch it was handed over, 0 for an earlier run
    phase: Phase = Phase.HANDED


@dataclass(frozen=True)
class _Orphan:
    from_node: int
    error: str
    at: float


class Tracker:
    def __init__(self, *, own_node: int = 0, max_attempts: int = 3, max_orphans: int = 256,
                 orphan_ttl: float = 60.0) -> None:
        self.own_node = own_node
        self._max_attempts = max_attempts
        self._max_orphans, self._orphan_ttl = max_orphans, orphan_ttl
        self._flights: dict[int, Flight] = {}
        self._orphans: OrderedDict[int, list[_Orphan]] = OrderedDict()

    def add(self, flight: Flight, now: float) -> list[Outcome]:
        """Track a handed text; apply any results that came before its packet id was known."""
        self._flights[flight.packet_id] = flight
        outcomes: list[Outcome] = []
        for orphan in self._orphans.pop(flight.packet_id, []):
            if now - orphan.at <= self._orphan_ttl:
                outcomes += self.result(flight.packet_id, orphan.from_node, orphan.error, now)
        return outcomes

    def result(self, packet_id: int, from_node: int, error: str, now: float) -> list[Outcome]:
        flight = self._flights.get(packet_id)
        if flight is None:
            self._keep_orphan(packet_id, _Orphan(from_node, error, now))
            return []
        ok = error == "NONE"
        local = from_node == self.own_node
        if from_node == flight.destination and not local and ok:
            return [self._end(flight, "delivered", None)]
        if ok or not local:  # heard by another node: it was on air
            outcomes = self._transmitted(flight)
            return outcomes if ok else [*outcomes, self._end(flight, "failed", error)]
        if (error in RETRYABLE and flight.phase is Phase.HANDED
                and flight.attempts < self._max_attempts):
            del self._flights[packet_id]
            return [Outcome(flight.message_id, packet_id, Next.REQUEUE, reason=error)]
        return [self._end(flight, "failed", error)]

    def expire(self, now: float) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for flight in [f for f in self._flights.values() if f.deadline <= now]:
            if flight.phase is Phase.HANDED:
                reason = UNKNOWN_AFTER_RESTART if flight.link == 0 else NO_RESULT
            else:
                reason = NO_DELIVERY_ACK
            outcomes.append(self._end(flight, "failed", reason))
        for packet_id, orphans in list(self._orphans.items()):
            if all(now - o.at > self._orphan_ttl for o in orphans):
                del self._orphans[packet_id]
        return outcomes

    def in_flight(self, link: int) -> int:
        return sum(1 for f in self._flights.values()
                   if f.link == link and f.phase is Phase.HANDED)

    def next_deadline(self) -> float | None:
        return min((f.deadline for f in self._flights.values()), default=None)

    def __len__(self) -> int:
        return len(self._flights)

    def _transmitted(self, flight: Flight) -> list[Outcome]:
        if flight.phase is Phase.TRANSMITTED:
            return []
        flight.phase = Phase.TRANSMITTED
        return [Outcome(flight.message_id, flight.packet_id, Next.TRANSMITTED, "transmitted")]

    def _end(self, flight: Flight, status: str, reason: str | None) -> Outcome:
        del self._flights[flight.packet_id]
        reason = REASONS.get(reason, reason) if reason is not None else None
        return Outcome(flight.message_id, flight.packet_id, Next.DONE, status, reason)

    def _keep_orphan(self, packet_id: int, orphan: _Orphan) -> None:
        self._orphans.setdefault(packet_id, []).append(orphan)
        self._orphans.move_to_end(packet_id)
        while len(self._orphans) > self._max_orphans:
            self._orphans.popitem(last=False)
