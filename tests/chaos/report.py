"""The chaos run's figures: what was sent and answered, each fault and its recovery, what was
found afterwards, the invariants (``ChaosResult.violations``) and the printed table.

No I/O here: tests/chaos/harness.py fills these in.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.chaos.harness import ChaosConfig


@dataclass
class Fault:
    kind: str
    start: float  # the harness clock, seconds since the run started
    part: str = ""  # what was hit: the kind, or "gateway 2" when there are several
    back: float = 0.0  # the part runs again
    ready: float = 0.0  # the gateway(s) answer /readyz 200 again
    api_back: float | None = None
    air_back: float | None = None
    caught_up: float | None = None
    slowest: float = 0.0  # the slowest answer (or give-up) to a send made while it lasted
    # Gateway kills only:
    nodes_back: float | None = None  # until every node answering has a text sent since on air
    publish_wait: float | None = None  # the longest from a 201 to its publish, while it was down
    recovered: int = 0  # texts handed to a bridge before the kill, first published after it
    recovered_by: float | None = None  # the last of those first publishes, from the kill
    owned: int | None = None  # nodes the killed process published (membership tables only)
    adopted: float | None = None  # until none of them is the dead process's any more
    drained: float | None = None  # its MQTT session drained by another while it was down


@dataclass
class Send:
    user: int
    text: str
    sent: float
    answered: float
    status: int | None  # None: no answer (connection refused or reset, timeout)
    message_id: str | None = None
    retry_after: str | None = None
    gateway: int = 0  # the gateway that answered (index)
    node: str = ""
    on_air: float | None = None  # when the radio first took it
    published: float | None = None  # when it was first seen on a bridge's topic


@dataclass
class ChaosResult:
    config: ChaosConfig
    duration: float = 0.0
    settle: float = 0.0
    sends: list[Send] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    final: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    unanswered_stored: int = 0  # stored, but the client got no 201 (the gateway died first)
    stuck: list[str] = field(default_factory=list)
    duplicates_on_air: list[str] = field(default_factory=list)
    unknown_on_air: list[str] = field(default_factory=list)
    quota: dict[str, dict[str, int]] = field(default_factory=dict)
    bad_5xx: list[str] = field(default_factory=list)
    sim: dict[str, Any] = field(default_factory=dict)
    error_logs: dict[str, list[str]] = field(default_factory=dict)  # part -> ERROR lines
    exits: list[str] = field(default_factory=list)  # a part that exited by itself
    # On the bridges' outbound topics, by message id (broker redeliveries to the harness's
    # own subscriber left out): the bridge dedupes these, so they are not a violation.
    published: int = 0  # message ids seen
    published_twice: list[str] = field(default_factory=list)
    publish_copies: int = 0  # every publish seen
    unpublished: list[str] = field(default_factory=list)  # on air, never seen published

    @property
    def accepted(self) -> int:
        return sum(1 for s in self.sends if s.status == 201)

    def statuses(self) -> Counter[str]:
        return Counter("no answer" if s.status is None else str(s.status) for s in self.sends)

    def by_gateway(self) -> Counter[int]:
        return Counter(s.gateway + 1 for s in self.sends if s.status == 201)

    def quota_mismatches(self) -> list[str]:
        return [user for user, q in self.quota.items()
                if not q["used"] == q["on_air"] == q["charged"]]

    def violations(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} accepted messages missing: {self.lost[:5]}")
        if self.stuck:
            out.append(f"{len(self.stuck)} messages not final: {self.stuck[:5]}")
        if self.duplicates_on_air:
            out.append(f"{len(self.duplicates_on_air)} texts on air twice: "
                       f"{self.duplicates_on_air[:5]}")
        if self.unknown_on_air:
            out.append(f"{len(self.unknown_on_air)} texts on air unknown to the database")
        for user in self.quota_mismatches():
            out.append(f"quota mismatch for {user}: {self.quota[user]}")
        out += self.bad_5xx
        out += self.exits
        for part, lines in self.error_logs.items():
            if lines:
                out.append(f"{len(lines)} ERROR lines in the {part} log, first: {lines[0]}")
        if self.accepted == 0:
            out.append("no message was accepted at all")
        return out

    def table(self) -> str:
        statuses = self.statuses()
        spread = self.by_gateway()
        rows = [
            ("faults injected", ", ".join(f.part or f.kind for f in self.faults)),
            ("sends", f"{len(self.sends)} ({_counts(statuses)})"),
            ("accepted (201)", str(self.accepted)
             + (f" (by gateway {_counts(spread)})" if len(spread) > 1 else "")),
            ("stored, client got no answer", str(self.unanswered_stored)),
            ("final states", _counts(self.final)),
            ("failure reasons", _counts(self.reasons) or "-"),
            ("lost", str(len(self.lost))),
            ("stuck (not final)", str(len(self.stuck))),
            ("on air twice", str(len(self.duplicates_on_air))),
            ("on air, unknown", str(len(self.unknown_on_air))),
            ("quota mismatches", f"{len(self.quota_mismatches())} of {len(self.quota)} users"),
            ("published twice (bridge dedupes)",
             f"{len(self.published_twice)} of {self.published} message ids "
             f"({self.publish_copies} publishes)"),
            ("on air, never seen published", str(len(self.unpublished))),
            ("5xx other than 503 in an outage", str(len(self.bad_5xx))),
            ("parts that exited by themselves", str(len(self.exits))),
            ("ERROR log lines", ", ".join(f"{k}: {len(v)}" for k, v in self.error_logs.items())),
            ("run / settle", f"{self.duration:.0f} s / {self.settle:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += ["", "| fault | at (s) | down (s) | ready (s) | API back (s) | air back (s) "
                      "| caught up (s) | slowest answer (s) |", "|---|---|---|---|---|---|---|---|"]
        for f in self.faults:
            lines.append(f"| {f.part or f.kind} | {f.start:.1f} | {f.back - f.start:.1f} | "
                         f"{f.ready - f.start:.2f} | {_seconds(f.api_back)} | "
                         f"{_seconds(f.air_back)} | {_seconds(f.caught_up)} | {f.slowest:.2f} |")
        for kind in dict.fromkeys(f.kind for f in self.faults):
            mine = [f for f in self.faults if f.kind == kind]
            if len(mine) > 1:
                columns = [[f.ready - f.start for f in mine],
                           [f.api_back for f in mine if f.api_back is not None],
                           [f.air_back for f in mine if f.air_back is not None],
                           [f.caught_up for f in mine if f.caught_up is not None],
                           [f.slowest for f in mine]]
                lines.append(f"| {kind}: median, max | | | "
                             + " | ".join(_spread(c) for c in columns) + " |")
        kills = [f for f in self.faults if f.kind == "gateway"]
        if kills:
            lines += ["", "| gateway kill | at (s) | down (s) | nodes back (s) | longest wait "
                          "to publish (s) | texts recovered | last recovered (s) "
                          "| nodes it published | adopted (s) | session drained (s) |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for f in kills:
                lines.append(f"| {f.part} | {f.start:.1f} | {f.back - f.start:.1f} | "
                             f"{_seconds(f.nodes_back)} | {_seconds(f.publish_wait)} | "
                             f"{f.recovered} | "
                             f"{_seconds(f.recovered_by)} | "
                             f"{'-' if f.owned is None else f.owned} | {_seconds(f.adopted)} | "
                             f"{_seconds(f.drained)} |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "sends": len(self.sends), "statuses": dict(self.statuses()),
            "accepted": self.accepted, "accepted_by_gateway": dict(self.by_gateway()),
            "unanswered_stored": self.unanswered_stored,
            "final": dict(self.final), "reasons": dict(self.reasons),
            "lost": len(self.lost), "stuck": len(self.stuck),
            "duplicates_on_air": len(self.duplicates_on_air),
            "unknown_on_air": len(self.unknown_on_air),
            "quota_mismatches": len(self.quota_mismatches()), "quota": self.quota,
            "published": self.published, "published_twice": self.published_twice,
            "publish_copies": self.publish_copies, "unpublished": self.unpublished,
            "bad_5xx": self.bad_5xx, "exits": self.exits, "error_logs": self.error_logs,
            "duration": self.duration, "settle": self.settle,
            "faults": [vars(f) for f in self.faults], "sim": self.sim,
            "slow_sends": [vars(s) for s in self.sends if s.answered - s.sent > 1.0],
            "send_times": [[s.gateway + 1, s.node, s.status, round(s.sent, 3),
                            *(None if t is None else round(t, 3)
                              for t in (s.published, s.on_air))] for s in self.sends],
            "violations": self.violations(),
        }


def bad_5xx(sends: list[Send], outages: list[list[float]]) -> list[str]:
    """Every 5xx but a 503 with Retry-After answered within a database outage (from the stop
    until the gateways were ready again, plus a second)."""
    out = []
    for send in sends:
        if send.status is None or send.status < 500:
            continue
        in_outage = any(a <= send.sent and send.answered <= b + 1.0 for a, b in outages)
        if send.status != 503 or not send.retry_after or not in_outage:
            out.append(f"{send.status} at {send.sent:.1f} s (Retry-After {send.retry_after}, "
                       f"in a database outage: {in_outage})")
    return out


def _counts(counter: Counter[str] | Counter[int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items()))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}, {max(values):.2f}" if values else "-"
