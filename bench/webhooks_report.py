"""The figures of bench/webhooks.py: one step's measurements, and the printed report with the
medians over rounds and the targets."""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

RATE_TARGET = 500.0  # deliveries/s sustained
P99_TARGET_MS = 100.0  # at 200 events/s
DEAD_TARGET = 0.20  # most relative change of the live endpoints' p99 with a dead one beside
SUSTAINED = 0.95  # achieved / offered, with every delivery in


@dataclass
class Step:
    name: str
    offered: float  # deliveries/s to the live endpoints
    events: int
    received: int
    missing: int
    achieved: float  # deliveries / (last arrival - first scheduled event)
    p50_ms: float
    p99_ms: float
    max_ms: float
    lag_p99_ms: float  # producer: commit time - scheduled time
    stages: dict[str, float] = field(default_factory=dict)  # p50/p99 of each stage, ms
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def sustained(self) -> bool:
        return self.missing == 0 and self.achieved >= SUSTAINED * self.offered


def report(args: argparse.Namespace, steps: list[Step], problems: list[str]) -> str:
    out = [f"Webhook benchmark - code {args.code}, {args.hooks} live endpoints, "
           f"{args.rounds} rounds x {args.seconds:g} s, {time.strftime('%Y-%m-%d %H:%M')}", "",
           f"{'step':<10}{'offered/s':>10}{'achieved/s':>11}{'in':>7}{'missing':>8}"
           f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'lag p99':>9}{'gw CPU':>8}{'machine':>8}"]
    for s in steps:
        out.append(f"{s.name:<10}{s.offered:>10.0f}{s.achieved:>11.0f}{s.received:>7}"
                   f"{s.missing:>8}{s.p50_ms:>9.1f}{s.p99_ms:>9.1f}{s.max_ms:>9.1f}"
                   f"{s.lag_p99_ms:>9.1f}{s.cpu['gateway']:>7.0f}%{s.cpu['machine']:>7.0f}%")
    out += ["", "where the time went, ms (p50 / p99): enqueue = event -> delivery row (tailer), "
            "claim = row -> first attempt (deliverer), post = attempt -> arrival"]
    for s in steps:
        out.append(f"{s.name:<10}" + "   ".join(
            f"{k} {s.stages[k + ' p50']:.1f} / {s.stages[k + ' p99']:.1f}"
            for k in ("enqueue", "claim", "post")))
    alone = [s for s in steps if s.name == "alone"]
    dead = [s for s in steps if s.name == "dead"]
    ratios = [d.p99_ms / a.p99_ms for a, d in zip(alone, dead, strict=True)]
    old = [s for s in steps if s.name == "dead+old"]
    old_ratios = [d.p99_ms / a.p99_ms for a, d in zip(alone, old, strict=True)]
    rounds = _by_round(steps)
    best = [max((s.offered for s in r if s.sustained and s.name.endswith("/s")), default=0.0)
            for r in rounds]
    p99 = statistics.median(s.p99_ms for s in alone)
    p50 = statistics.median(s.p50_ms for s in alone)
    ratio = statistics.median(ratios)
    sustained = statistics.median(best)
    tops = [max((s for s in r if s.name.endswith("/s")), key=lambda s: s.offered, default=None)
            for r in rounds]
    capacity = [s.achieved for s in tops if s is not None]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out += ["", f"medians over {args.rounds} rounds:",
            f"  sustained deliveries/s (highest offered rate sustained): {sustained:.0f} "
            f"(rounds: {', '.join(f'{b:.0f}' for b in best)}); achieved at the highest step "
            f"offered: {', '.join(f'{c:.0f}' for c in capacity)}",
            f"  alone, {args.rate:g} events/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"(rounds: {', '.join(f'{s.p99_ms:.0f}' for s in alone)})",
            f"  with a dead endpoint: p99 {statistics.median(s.p99_ms for s in dead):.1f} ms; "
            f"ratio dead / alone {ratio:.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})",
        ] + ([
            f"  with a dead endpoint owed {args.dead_backlog} deliveries: p99 "
            f"{statistics.median(s.p99_ms for s in old):.1f} ms; ratio to alone "
            f"{statistics.median(old_ratios):.2f} (rounds: "
            f"{', '.join(f'{r:.2f}' for r in old_ratios)})"] if old else []) + [
            "", "targets:",
            f"  >= {RATE_TARGET:.0f} deliveries/s sustained: {sustained:.0f} - "
            f"{met(sustained >= RATE_TARGET)}",
            f"  p99 <= {P99_TARGET_MS:.0f} ms at {args.rate:g} events/s: {p99:.1f} ms - "
            f"{met(p99 <= P99_TARGET_MS)}",
            f"  dead endpoint changes the others' p99 by < {DEAD_TARGET:.0%}: "
            f"{ratio - 1:+.0%} - {met(abs(ratio - 1) < DEAD_TARGET)}"] + ([
            f"    (dead a while, owed {args.dead_backlog}: "
            f"{statistics.median(old_ratios) - 1:+.0%} - "
            f"{met(abs(statistics.median(old_ratios) - 1) < DEAD_TARGET)})"] if old else []) + [
            "", f"gateway log: {len(problems)} warnings/errors"]
    out += [f"  {line}" for line in problems[:10]]
    return "\n".join(out)


def _by_round(steps: list[Step]) -> list[list[Step]]:
    rounds: list[list[Step]] = []
    for s in steps:
        if s.name == "alone":
            rounds.append([])
        rounds[-1].append(s)
    return rounds


