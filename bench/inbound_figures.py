"""The figures of an inbound benchmark run: one step, one connection of the streams, the whole
run; and the median of a step over the rounds that ran it."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

SUSTAINED = 0.95  # a step is sustained when this share of the offered rate is persisted ...
CATCH_UP_S = 1.0  # ... and the backlog is gone this soon after the step


@dataclass
class Step:
    round: int
    clients: int
    kind: str  # inbound | status | void
    rate: float
    seconds: float
    layout: str = "one"  # one: streams on the writing gateway; two, base: on a second one
    published: int = 0
    acked: int = 0
    persisted: int = 0
    window_rate: float = math.nan  # persisted per second, from 1 s into the step to its end
    drain_s: float | None = None  # end of step -> everything acked is visible; None: never
    stalled: bool = False  # nothing persisted for --stall-seconds with a backlog
    undrained: int = 0  # medians only: rounds whose backlog did not drain
    db_p50: float = math.nan
    db_p99: float = math.nan
    ws_p50: float = math.nan
    ws_p99: float = math.nan
    ws_max: float = math.nan
    fan_p50: float = math.nan  # visible in the database -> received on the stream
    fan_p99: float = math.nan
    pickup_p50: float = math.nan  # scheduled publish -> the consumer took it (created_at)
    ws_expected: int = 0
    ws_received: int = 0
    closed: Counter[int] = field(default_factory=Counter)
    unowned: int = 0
    pub_lag_p99: float = math.nan
    pub_cpu_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        """Acknowledged by the broker, never stored (the gateway was restarted after a stall)."""
        return max(0, self.acked - self.persisted)

    @property
    def sustained(self) -> bool:
        return (self.drain_s is not None and self.drain_s <= CATCH_UP_S
                and self.window_rate >= SUSTAINED * self.rate
                and self.persisted >= self.acked == self.published > 0)

    @property
    def cpu_ms(self) -> float:
        """Gateway CPU per persisted item, ms (the writing gateway)."""
        return 10 * self.cpu.get("gateway", math.nan) / self.window_rate if self.window_rate \
            else math.nan

    @property
    def holder_cpu_ms(self) -> float:
        """CPU of the gateway holding the streams per persisted item, ms."""
        if self.layout == "one":
            return self.cpu_ms
        return 10 * self.cpu.get("holder", math.nan) / self.window_rate if self.window_rate \
            else math.nan


@dataclass
class Connected:
    round: int
    clients: int
    failed: int
    seconds: float
    rss_before: int
    rss_connected: int
    rss_loaded: int = 0
    rss_after: int = 0
    restarted: bool = False  # the gateway was restarted meanwhile: no later RSS figures
    layout: str = "one"


@dataclass
class Results:
    ceiling: Step | None = None
    steps: list[Step] = field(default_factory=list)
    connected: list[Connected] = field(default_factory=list)
    profile: str | None = None
    poll_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # p50, p99, max
    log_problems: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)


def median_step(steps: list[Step]) -> Step:
    med = statistics.median
    m = Step(0, steps[0].clients, steps[0].kind, steps[0].rate, steps[0].seconds,
             steps[0].layout)
    m.published = round(med(s.published for s in steps))
    m.acked = round(med(s.acked for s in steps))
    m.persisted = round(med(s.persisted for s in steps))
    m.stalled = any(s.stalled for s in steps)
    drains = [s.drain_s for s in steps if s.drain_s is not None]
    m.drain_s = med(drains) if len(drains) == len(steps) else None
    m.undrained = len(steps) - len(drains)
    for name in ("window_rate", "db_p50", "db_p99", "ws_p50", "ws_p99", "ws_max", "fan_p50",
                 "fan_p99", "pickup_p50",
                 "pub_lag_p99"):
        values = [getattr(s, name) for s in steps if not math.isnan(getattr(s, name))]
        setattr(m, name, med(values) if values else math.nan)
    m.ws_expected = sum(s.ws_expected for s in steps)
    m.ws_received = sum(s.ws_received for s in steps)
    m.cpu = {k: med(s.cpu[k] for s in steps) for k in steps[0].cpu}
    return m
