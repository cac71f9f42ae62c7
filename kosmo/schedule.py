"""When texts go on air, from a radio's pace. Pure: no I/O, no clock (``now`` is passed in).

The model
---------
A radio sends the texts given to it one after the other, in order:

- The first text starts at ``now``.
- Each next text starts no sooner than the previous start plus ``max(min_gap_s, previous
  cost)``: the bridge's 2 s rule between two starts, and the radio sends one text at a time.
- Under a duty cycle (``duty_cycle`` not None), a token bucket of airtime approximates the
  rolling window: it holds at most ``duty_cycle * window_s`` seconds of airtime, starts with
  that capacity minus ``airtime_used_s`` (floored at 0), and refills at ``duty_cycle`` seconds
  of airtime per second. A text starts only once the bucket holds its cost, which it takes out.
  A text costing more than the whole capacity waits for a full bucket and empties it.

The bucket forgets *when* the window's airtime was spent, so it may let a text go somewhat
sooner or later than the rolling window would; over a long run both allow ``duty_cycle`` of
the time on air, so a radio with a backlog sends ``duty_cycle * 3600 / cost`` texts an hour.
``transmit_times`` is O(len(costs)). A radio's texts already handed to its bridge only move
where its queue starts (a ``Lane``): ``pass_over`` skips a count of them of one cost in O(1)
without a duty cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import repeat


@dataclass(frozen=True)
class RadioPace:
    min_gap_s: float = 2.0  # seconds between two texts' starts, at least
    duty_cycle: float | None = None  # share of airtime allowed per rolling window; None: none
    window_s: float = 3600.0
    airtime_used_s: float = 0.0  # spent within the current window, as the bridge says

    def __post_init__(self) -> None:
        if not self.min_gap_s >= 0:
            raise ValueError(f"min_gap_s must be at least 0, not {self.min_gap_s!r}")
        if self.duty_cycle is not None and not 0 < self.duty_cycle <= 1:
            raise ValueError(f"duty_cycle must be in (0, 1], not {self.duty_cycle!r}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be positive, not {self.window_s!r}")

    @property
    def capacity(self) -> float | None:
        """Seconds of airtime the bucket holds when full (None: no duty cycle)."""
        return None if self.duty_cycle is None else self.duty_cycle * self.window_s


@dataclass(frozen=True)
class Lane:
    """Where a radio's schedule stands: its next text starts no sooner than ``earliest``, and
    its bucket held ``level`` seconds of airtime at ``level_at``."""

    earliest: float
    level: float
    level_at: float


def lane_at(pace: RadioPace, now: float) -> Lane:
    """The schedule of a radio given nothing yet: its first text may start at ``now``."""
    capacity = pace.capacity
    level = 0.0 if capacity is None else min(capacity, max(0.0, capacity - pace.airtime_used_s))
    return Lane(now, level, now)


def lay(pace: RadioPace, lane: Lane, costs: Iterable[float]) -> tuple[list[float], Lane]:
    """Epoch seconds at which each text (in order) is expected to start on air after ``lane``,
    and the lane after them."""
    duty, capacity = pace.duty_cycle, pace.capacity
    earliest, level, level_at = lane.earliest, lane.level, lane.level_at
    starts: list[float] = []
    for cost in costs:
        start = earliest
        if duty is not None and capacity is not None:
            need = min(cost, capacity)
            level = min(capacity, level + duty * (start - level_at))
            if level < need:
                start += (need - level) / duty
                level = need
            level -= need
            level_at = start
        starts.append(start)
        earliest = start + max(pace.min_gap_s, cost)
    return starts, Lane(earliest, level, level_at)


def pass_over(pace: RadioPace, lane: Lane, cost: float, count: int) -> Lane:
    """The lane after ``count`` texts of one ``cost``, whose own starts are not needed: O(1)
    without a duty cycle, O(count) with one."""
    if count <= 0:
        return lane
    if pace.duty_cycle is None:
        return replace(lane, earliest=lane.earliest + count * max(pace.min_gap_s, cost))
    return lay(pace, lane, repeat(cost, count))[1]


def transmit_times(pace: RadioPace, now: float, costs: Sequence[float]) -> list[float]:
    """Epoch seconds at which each text (in order) is expected to start on air."""
    return lay(pace, lane_at(pace, now), costs)[0]


def rate_per_hour(pace: RadioPace, cost: float) -> float:
    """Texts per hour a radio with a backlog of texts of this cost sustains."""
    period = max(pace.min_gap_s, cost)
    if pace.duty_cycle is not None and pace.capacity is not None:
        period = max(period, min(cost, pace.capacity) / pace.duty_cycle)
    return 3600.0 / period
