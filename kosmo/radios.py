"""One radio (one bridge) as the gateway's dispatcher sees it. No I/O.

Rules:
- A radio has the pace its bridge last said (``kosmo.wire.Pace``), whether it is online, its
  fair queue of waiting messages (``kosmo.fair_queue``) and how many messages of each text
  size its bridge holds (``held``; ``holding`` in all).
- A text's cost is its airtime on this radio's LoRa settings (``kosmo.airtime``, radio seconds)
  divided by the bridge's time scale: real seconds, like the rest of the pace.
- Its schedule (``lay_out``) lays the queue in fair order, then one more text of the largest
  size, on its pace (``kosmo.schedule``), after the held messages (which only move where the
  queue starts: they are passed over by size, smallest first, in constant time per size
  without a duty cycle). ``start(i)`` is when the i-th of the queue (0: its head) starts;
  past the laid-out schedule (messages that arrived since), it extrapolates at the radio's
  sustained pace.
- The fair queue's quantum is the largest text's cost, fixed when the radio is first seen.
- Estimates (``estimates``): each waiting message's place in its online radio's fair order
  (1 = next) and its start on that radio's schedule; none for a message no online radio has.
  One is written again (``moved``) when its place changed or its time moved by more than
  ``WRITE_SLACK`` seconds or 5 % of the wait left.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from uuid import UUID

from kosmo import airtime, wire
from kosmo.fair_queue import FairQueue
from kosmo.schedule import RadioPace, lane_at, lay, pass_over

WRITE_SLACK = 0.5  # seconds
Estimate = tuple[int | None, datetime | None]  # queue position, estimated transmit time


def radio_params(pace: wire.Pace) -> airtime.LoraParams:
    """The LoRa settings of the bridge's radio; an unknown preset is costed as LONG_SLOW."""
    wide = pace.region.startswith("LORA_24")
    try:
        return airtime.preset_params(pace.modem_preset, wide=wide)
    except (KeyError, ValueError):
        return airtime.preset_params("LONG_SLOW")


@dataclass
class Radio:
    bridge_id: str
    pace: wire.Pace
    online: bool
    queue: FairQueue
    held: Counter[int] = field(default_factory=Counter)  # text size -> messages its bridge holds
    params: airtime.LoraParams = field(default_factory=lambda: airtime.preset_params("LONG_FAST"))
    starts: list[float] = field(default_factory=list)  # queue + one more, epoch s
    dirty: bool = True  # its queue or held changed since ``starts`` was laid out

    @classmethod
    def new(cls, bridge_id: str, pace: wire.Pace, *, online: bool) -> Radio:
        params = radio_params(pace)
        quantum = airtime.text_airtime(params, airtime.MAX_TEXT_BYTES) / pace.time_scale
        return cls(bridge_id, pace, online, FairQueue(quantum), params=params)

    def cost(self, size: int) -> float:
        """Real seconds of airtime of a text of ``size`` bytes on this radio."""
        return airtime.text_airtime(self.params, size) / self.pace.time_scale

    def holding(self) -> int:
        """Messages its bridge holds: its credit in use."""
        return self.held.total()

    def radio_pace(self) -> RadioPace:
        p = self.pace
        return RadioPace(p.min_gap_s, p.duty_cycle, p.window_s, p.airtime_used_s)

    def lay_out(self, now: float) -> None:
        """Lay the queue on the pace after the held messages, from ``now`` (epoch s)."""
        pace = self.radio_pace()
        lane = lane_at(pace, now)
        for size, count in sorted(self.held.items()):
            lane = pass_over(pace, lane, self.cost(size), count)
        costs = [e.cost for e in self.queue.order()]
        costs.append(self.cost(airtime.MAX_TEXT_BYTES))
        self.starts = lay(pace, lane, costs)[0]
        self.dirty = False

    def start(self, index: int, cost: float) -> float:
        """When the text at ``index`` of the queue (0: its head) starts, epoch seconds; past the
        layout, the radio's sustained pace for texts of ``cost``."""
        if index < len(self.starts):
            return self.starts[index]
        pace = self.pace
        step = max(pace.min_gap_s, cost, cost / pace.duty_cycle if pace.duty_cycle else 0.0)
        return self.starts[-1] + (index - len(self.starts) + 1) * step

    def wait(self, now: float) -> float:
        """Seconds until the radio would send one more text, as last laid out."""
        return max(0.0, self.starts[-1] - now) if self.starts else 0.0


def estimates(radios: Iterable[Radio], waiting: Iterable[UUID], tz: tzinfo | None
              ) -> dict[UUID, Estimate]:
    """The place and time of every waiting message, as the online radios are laid out."""
    found: dict[UUID, Estimate] = {}
    for radio in radios:
        if radio.online:
            for i, entry in enumerate(radio.queue.order()):
                start = radio.start(i, entry.cost)
                found[entry.message_id] = (i + 1, datetime.fromtimestamp(start, tz))
    return {m: found.get(m, (None, None)) for m in waiting}


def moved(old: Estimate | None, new: Estimate, now: datetime) -> bool:
    """Whether an estimate written as ``old`` should be written again as ``new``."""
    if old is None or old[0] != new[0] or (old[1] is None) != (new[1] is None):
        return True
    if old[1] is None or new[1] is None:
        return False
    left = (new[1] - now).total_seconds()
    return abs((old[1] - new[1]).total_seconds()) > max(WRITE_SLACK, 0.05 * left)
