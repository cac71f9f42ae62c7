"""When the next text may be handed to the radio. Sans-IO: time is passed in, in radio seconds.

Rules (all must hold before a text is handed over; the earliest instant they do is the answer,
so a backlog is sent at the allowed limit, not below it):
- Gap: at least ``min_gap`` (2 s) after the previous hand-over finished. Firmware 2.7+ drops a
  text that follows the previous one by less than 2 s (RATE_LIMIT_EXCEEDED); measuring from the
  end of the previous write keeps the gap at the radio >= 2 s whatever the write took.
- In flight: fewer than ``max_in_flight`` texts handed over and still without a routing result
  (the radio's transmit queue holds 16 packets). The sender also holds back while the radio
  reports its queue full (it relays other nodes' packets too).
- Airtime: in any rolling ``window`` (one hour) the airtime of our texts, this one included,
  stays within ``duty_cycle * window``. Each text is charged once, at its hand-over, with the
  airtime of its first transmission. Retransmissions, acknowledgements and other traffic of the
  radio are not counted; the firmware enforces the legal limit on all of it and refuses what is
  over (DUTY_CYCLE_LIMIT): then the sender ``hold``s everything for a while and retries.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kosmo.airtime import DUTY_WINDOW

_EPSILON = 1e-9
_AFTER = 1e-6  # "just after" an old send leaves the window, robust to float rounding


@dataclass(frozen=True)
class PacingRules:
    min_gap: float = 2.0
    max_in_flight: int = 16
    duty_cycle: float | None = None  # share of the window, None: no limit
    window: float = DUTY_WINDOW

    @property
    def budget(self) -> float | None:
        return None if self.duty_cycle is None else self.duty_cycle * self.window


class Pacer:
    def __init__(self, rules: PacingRules) -> None:
        self.rules = rules
        self._sends: deque[tuple[float, float]] = deque()  # (hand-over start, airtime), in order
        self._last_end: float | None = None
        self._hold_until = -math.inf

    def hold(self, until: float) -> None:
        """Send nothing before ``until`` (the radio refused a text for its own duty cycle)."""
        self._hold_until = max(self._hold_until, until)

    def restore(self, sends: Iterable[tuple[float, float]]) -> None:
        """Charge sends made before a restart (time, airtime), so a restart frees no budget."""
        for at, airtime in sorted(sends):
            self._sends.append((at, airtime))
        if self._sends:
            self._last_end = max(self._last_end or self._sends[-1][0], self._sends[-1][0])

    def used(self, now: float) -> float:
        """Airtime charged within the window that ends at ``now``."""
        self._forget(now)
        return sum(airtime for _at, airtime in self._sends)

    def ready_at(self, now: float, airtime: float, in_flight: int) -> float | None:
        """The earliest time >= now at which a text of ``airtime`` may be handed over, or None
        while ``in_flight`` is at the limit (wait for a routing result)."""
        if in_flight >= self.rules.max_in_flight:
            return None
        self._forget(now)
        at = max(now, self._hold_until)
        if self._last_end is not None:
            at = max(at, self._last_end + self.rules.min_gap)
        return self._fits_at(self._sends, at, airtime)

    def started(self, at: float, airtime: float) -> None:
        """A hand-over of a text of ``airtime`` began at ``at``."""
        self._sends.append((at, airtime))

    def finished(self, at: float) -> None:
        """The hand-over ended (the radio has the bytes, or the write failed)."""
        self._last_end = at if self._last_end is None else max(self._last_end, at)

    def estimate(self, now: float, airtimes: Sequence[float]) -> float:
        """Seconds until the last of ``airtimes`` (the queue, in order) is handed over if each
        goes at the earliest allowed time and results come back in time."""
        if not airtimes:
            return 0.0
        self._forget(now)
        sends = deque(self._sends)
        used = sum(airtime for _at, airtime in sends)
        budget = self.rules.budget
        at = max(now, self._hold_until)
        last_end = self._last_end
        for airtime in airtimes:
            if last_end is not None:
                at = max(at, last_end + self.rules.min_gap)
            while sends and sends[0][0] <= at - self.rules.window:
                used -= sends.popleft()[1]
            if budget is not None:
                while sends and used + airtime > budget + _EPSILON:
                    old_at, old_airtime = sends.popleft()
                    used -= old_airtime
                    at = max(at, old_at + self.rules.window + _AFTER)
            sends.append((at, airtime))
            used += airtime
            last_end = at
        return at - now

    def _forget(self, now: float) -> None:
        while self._sends and self._sends[0][0] <= now - self.rules.window:
            self._sends.popleft()

    def _fits_at(self, sends: Iterable[tuple[float, float]], at: float, airtime: float) -> float:
        budget = self.rules.budget
        if budget is None:
            return at
        window = [(t, a) for t, a in sends if t > at - self.rules.window]
        excess = sum(a for _t, a in window) + airtime - budget
        if excess <= _EPSILON:
            return at
        for t, a in window:  # oldest first: wait until enough of them leave the window
            excess -= a
            if excess <= _EPSILON:
                return t + self.rules.window + _AFTER
        # Longer than the whole budget: send once everything else has left the window.
        return window[-1][0] + self.rules.window + _AFTER if window else at
