"""The airtime bench's printed report: one block per region, the figures against their targets.
Percentiles pool every round's samples; ratios per radio are the median of radios and rounds
(the worst beside it)."""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from typing import Any

from airtime_figures import (
    RoundData,
    estimate_errors,
    fairness,
    light_waits,
    radio_use,
    twice,
)
from common import percentile, source_version


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _block(name: str, rounds: list[tuple[RoundData, list[Any]]]) -> list[str]:
    lines = [f"== {name}: {len(rounds)} rounds =="]
    datas = [d for d, _ in rounds]
    sent = sum(len(d.sent) for d in datas)
    canceled = sum(len(d.canceled) for d in datas)
    ended = sum(1 for d in datas for s in d.sent if s.message_id in d.transmitted)
    naks: Counter[str] = sum((d.naks for d in datas), start=Counter())
    lines.append(f"messages accepted {sent}, canceled {canceled}, transmitted {ended}; radio "
                 f"refusals {dict(naks) or 'none'}")

    dup = sum(twice(d) for d in datas)
    lines.append(f"texts on air twice: {dup} (target 0: {_verdict(dup == 0)})")

    lines.append("radio use while backlogged (texts; sent / legal rate allows;"
                 " sent / the bridge's own gap allows):")
    legal: list[float] = []
    for i, d in enumerate(datas, 1):
        use = radio_use(d)
        legal += [u[1] for u in use.values()]
        lines.append(f"  round {i}: " + ", ".join(
            f"{r} {n} texts {a:.3f} / {b:.3f}" for r, (n, a, b) in use.items()))
    if legal:
        med = statistics.median(legal)
        lines.append(f"  median {med:.3f}, worst {min(legal):.3f} (target >= 0.95: "
                     f"{_verdict(med >= 0.95)})")

    lines.append("Jain's index of airtime / weight over users backlogged together"
                 " (index, users, texts in the window):")
    jains: list[float] = []
    for i, d in enumerate(datas, 1):
        fair = fairness(d)
        jains += [f[0] for f in fair.values()]
        lines.append(f"  round {i}: " + ", ".join(
            f"{r} {j:.3f} ({u}, {t})" for r, (j, u, t) in fair.items()))
    if jains:
        med = statistics.median(jains)
        lines.append(f"  median {med:.3f}, worst {min(jains):.3f} (target >= 0.95: "
                     f"{_verdict(med >= 0.95)})")

    waits = [w for d in datas for w in light_waits(d)]
    if waits:
        p99 = percentile([w[1] for w in waits], 99)
        lines.append(
            f"light user's first text, {len(waits)} users: wait p50 "
            f"{percentile([w[0] for w in waits], 50):.2f} s, p99 "
            f"{percentile([w[0] for w in waits], 99):.2f} s; texts on air ahead of it / one "
            f"round's texts (credit + one turn of each user waiting), p99 {p99:.2f}, max "
            f"{max(w[1] for w in waits):.2f}; one round = "
            f"{statistics.median(w[2] for w in waits):.0f} texts (median) (target <= 1: "
            f"{_verdict(p99 <= 1)})")

    errors = [estimate_errors(d) for d in datas]
    by_history = [e for err in errors for e in err[0]]
    by_radio = [e for err in errors for e in err[1]]
    mid = [e for err in errors for e in err[2]]
    mid_radio = [e for err in errors for e in err[3]]
    if by_history:
        p90 = percentile(by_history, 90)
        lines.append(
            f"estimate error |actual - estimated| / wait, from the 201's estimate, "
            f"{len(by_history)} texts: p50 {percentile(by_history, 50):.1%}, p90 {p90:.1%} "
            f"(actual = 'transmitted' in the history; target <= 10 %: {_verdict(p90 <= 0.1)});"
            f" against the radio's on-air time p50 {percentile(by_radio, 50):.1%}, p90 "
            f"{percentile(by_radio, 90):.1%}")
    if mid:
        lines.append(
            f"  the row's estimate read mid-wait, {len(mid)} texts: p50 "
            f"{percentile(mid, 50):.1%}, p90 {percentile(mid, 90):.1%} of the wait left; against"
            f" the radio's on-air time p50 {percentile(mid_radio, 50):.1%}, p90 "
            f"{percentile(mid_radio, 90):.1%}")

    cancels = [c for _, cs in rounds for c in cs]
    if cancels:
        done = [c for c in cancels if c.status == 200]
        dele = [c.delete_ms for c in done]
        gets = [c.get_ms for c in cancels]
        lines.append(
            f"cancel: {len(done)} of {len(cancels)} answered 200 "
            f"({Counter(c.status for c in cancels)}); DELETE p50 {percentile(dele, 50):.1f} ms,"
            f" p99 {percentile(dele, 99):.1f} ms; GET of the next one (baseline, same moment) "
            f"p50 {percentile(gets, 50):.1f} ms, p99 {percentile(gets, 99):.1f} ms; ratio of "
            f"p50s {percentile(dele, 50) / percentile(gets, 50):.2f}; the next message moved "
            f"up within 3 s after {sum(c.moved_up for c in done)} of {len(done)}")
    return lines


def report(args: argparse.Namespace, results: dict[str, list[tuple[RoundData, list[Any]]]],
           bridge_problems: list[str], gateway_problems: list[str]) -> str:
    lines = [f"airtime bench, code {source_version()}: heavy backlog {args.heavy}, "
             f"{args.light_users} light users x {args.light_rounds} rounds' worth, "
             f"{args.rounds} rounds"]
    for name, rounds in results.items():
        lines += _block(name, rounds)
    lines.append(f"bridges' warnings and errors: {len(bridge_problems)}; gateway's: "
                 f"{len(gateway_problems)}")
    lines += [f"  {p}" for p in (bridge_problems[:5] + gateway_problems[:5])]
    return "\n".join(lines)
