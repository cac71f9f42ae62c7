"""The inbound benchmark's report: the tables of steps and their medians, and the verdict on
the targets."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections import Counter
from datetime import datetime

from inbound_figures import Results, Step, median_step  # bench/ is on sys.path as a script

RATE_TARGET = 2000.0  # replies/s persisted, sustained
P99_TARGET_MS = 50.0  # publish -> websocket p99 at RATE_TARGET
CLIENTS_TARGET = 1000
CLIENTS_P99_TARGET_MS = 100.0  # with CLIENTS_TARGET streams connected, at RATE_TARGET


def fmt(value: float, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


HEAD = (f"{'round':<6}{'lay':<5}{'streams':>8} {'kind':<8}{'offered':>8}{'pub/s':>7}"
        f"{'persist/s':>10}"
        f"{'drain s':>9}{'db p50':>7}{'db p99':>7}{'ws p50':>7}{'ws p99':>7}{'ws max':>7}"
        f"{'db>ws50':>8}{'db>ws99':>8}{'pickup':>7}{'lost':>6}{'ws miss':>8}{'lag99':>6}"
        f"{'gw':>5}{'main':>5}{'hold':>5}{'hmain':>6}{'pg':>5}{'pub':>5}{'ws':>5}{'mqtt':>5}{'all':>5}"
        f"{'ms/it':>6}{'h ms/it':>8}")


def row(label: str, s: Step) -> str:
    c = s.cpu
    if s.undrained:
        drain = f"{s.undrained}x " + ("stall" if s.stalled else "t/o")
    else:
        drain = "stall" if s.stalled else "t/o" if s.drain_s is None else fmt(s.drain_s, 1)
    miss = s.ws_expected - s.ws_received
    return (f"{label:<6}{s.layout:<5}{s.clients:>8} {s.kind:<8}{s.rate:>8.0f}"
            f"{s.published / s.seconds:>7.0f}"
            f"{fmt(s.window_rate):>10}{drain:>9}{fmt(s.db_p50):>7}{fmt(s.db_p99):>7}"
            f"{fmt(s.ws_p50):>7}{fmt(s.ws_p99):>7}{fmt(s.ws_max):>7}"
            f"{fmt(s.fan_p50):>8}{fmt(s.fan_p99):>8}{fmt(s.pickup_p50):>7}"
            f"{s.lost:>6}{miss:>8}{fmt(s.pub_lag_p99):>6}"
            f"{fmt(c['gateway']):>5}{fmt(c['main']):>5}{fmt(c['holder']):>5}"
            f"{fmt(c['holder_main']):>6}{fmt(c['postgres']):>5}"
            f"{fmt(c['publishers']):>5}{fmt(c['clients']):>5}{fmt(c['broker']):>5}"
            f"{fmt(c['machine']):>5}{fmt(s.cpu_ms, 2):>6}"
            f"{fmt(s.holder_cpu_ms if s.layout != 'one' else math.nan, 2):>8}")


def autogroup() -> str:
    """What a process started in its own session gets of the CPU, on Linux."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            on = f.read().strip() == "1"
    except OSError:
        return "scheduler autogroup unknown"
    return ("scheduler autogroup on: each busy session (every gateway and client process here) "
            "gets an equal share of the CPU, whatever its nice value" if on
            else "scheduler autogroup off")


def report(args: argparse.Namespace, results: Results) -> str:
    out: list[str] = []
    w = out.append
    w(f"KosmoConnect inbound benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
      f"Python {sys.version.split()[0]}, code {args.code}")
    w(f"machine: load average {' '.join(f'{x:.2f}' for x in args.load_start)} at the start, "
      f"{' '.join(f'{x:.2f}' for x in args.load_end)} at the end (1, 5, 15 min); "
      f"{autogroup()}")
    w(f"broker: {args.broker_label}; {args.publishers} publisher processes (QoS 1); "
      f"{args.users} users, one node each; streams: {', '.join(map(str, args.clients))} "
      f"(up to {args.per_process} per client process); {args.rounds} rounds x {args.seconds:g} s "
      f"per step; database polled every {args.poll_ms:g} ms")
    w(f"database poll took {fmt(results.poll_ms[0], 1)} ms at p50, {fmt(results.poll_ms[1], 1)} "
      f"ms at p99, {fmt(results.poll_ms[2])} ms at most (add it to the interval for the "
      f"granularity of the database figures)")
    c = results.ceiling
    if c is not None:
        w(f"publishers' ceiling (to a topic nobody reads): {c.window_rate:.0f} msg/s acked "
          f"({c.published} published, publisher lag p99 {fmt(c.pub_lag_p99)} ms, "
          f"{100 * c.pub_cpu_s / 3 / args.publishers:.0f}% of a core each)")
    w("")
    w("layouts: one = the streams on the gateway that consumes the MQTT messages and writes "
      "the events; two = on a second gateway process on the same database and broker that "
      "consumes nothing (its own topic root: it subscribes only to topics nobody publishes), "
      "which gets every event through PostgreSQL (NOTIFY kosmo_events and its event feed)"
      + ("; base = like two, the second gateway running " + args.baseline_cmd
         if args.baseline_cmd else ""))
    w("")
    w("streams connected (RSS of the gateway holding them, MiB; KiB per stream):")
    w(f"{'round':<6}{'lay':<5}{'streams':>8}{'failed':>7}{'connect s':>10}{'before':>8}"
      f"{'connected':>10}"
      f"{'loaded':>10}{'after':>7}{'KiB/stream':>11}{'loaded':>8}")
    for k in results.connected:
        per = (k.rss_connected - k.rss_before) / max(k.clients, 1)
        later = ("restarted", "", "") if k.restarted else (
            f"{k.rss_loaded / 1024:.0f}", f"{k.rss_after / 1024:.0f}",
            f"{(k.rss_loaded - k.rss_before) / max(k.clients, 1):.1f}")
        w(f"{k.round:<6}{k.layout:<5}{k.clients:>8}{k.failed:>7}{k.seconds:>10.1f}"
          f"{k.rss_before / 1024:>8.0f}"
          f"{k.rss_connected / 1024:>10.0f}{later[0]:>10}{later[1]:>7}{per:>11.1f}"
          f"{later[2]:>8}")
    w("")
    w("steps (latency in ms from the scheduled publish; db>ws50/99: from visible in the "
      "database (polled) to received on the stream, the stream side alone; CPU in % of one "
      "core: gw/main the writing gateway and its Trio thread, hold/hmain the second gateway "
      "holding the streams; ms/it and h ms/it: CPU of the writing and of the stream-holding "
      "gateway per persisted item):")
    w(HEAD)
    for s in results.steps:
        w(row(str(s.round), s))
        if s.closed:
            w(f"      streams closed by the gateway: {dict(s.closed)}")
        if s.unowned:
            w(f"      {s.unowned} replies not threaded to any user")
    w("")
    w(f"median of the rounds that ran the step (round column: how many of {args.rounds}):")
    w(HEAD)
    groups: dict[tuple[str, int, str, float], list[Step]] = {}
    for s in results.steps:
        groups.setdefault((s.layout, s.clients, s.kind, s.rate), []).append(s)
    medians = {key: median_step(steps) for key, steps in groups.items()}
    for key, m in medians.items():
        w(row(f"{len(groups[key])}/{args.rounds}", m))
    w("")
    for layout in args.layouts:
        w(f"layout {layout}:")
        w(verdict([s for s in results.steps if s.layout == layout],
                  {k[1:]: m for k, m in medians.items() if k[0] == layout}, args.rounds))
    if results.restarts:
        w(f"gateway restarted (backlog not draining) after: {'; '.join(results.restarts)}")
    w(f"database: {results.totals}")
    variable = r"bench-gw-[0-9a-f]+|\(attempt \d+\)|retrying in [\d.]+s|[0-9a-f-]{36}|\d+"
    kinds = Counter(re.sub(variable, "#", line.split(" ", 3)[-1])
                    for line in results.log_problems)
    w(f"gateway log: {len(results.log_problems)} warnings or errors"
      + "".join(f"\n  {n:>5} x {text}" for text, n in kinds.most_common(8)))
    if results.profile:
        w("")
        w(f"profile: one extra step under py-spy --gil (not in the figures above), files in "
          f"{args.profile}")
        w(results.profile)
    return "\n".join(out)


def verdict(steps: list[Step], medians: dict[tuple[int, str, float], Step],
            rounds: int) -> str:
    lines = []

    def ran(clients: int) -> int:
        return sum(1 for x in steps
                   if (x.clients, x.kind, x.rate) == (clients, "inbound", RATE_TARGET))

    def held(clients: int, kind: str, rate: float) -> bool:
        """Run in every round, sustained in every round."""
        runs = [x for x in steps if (x.clients, x.kind, x.rate) == (clients, kind, rate)]
        return len(runs) == rounds and all(x.sustained for x in runs)

    configs = sorted({k[0] for k in medians})
    for clients in configs:
        for kind in ("inbound", "status"):
            mine = {r: m for (c, k, r), m in medians.items() if (c, k) == (clients, kind)}
            if not mine:
                continue
            top = max((r for r in mine if held(clients, kind, r)), default=math.nan)
            fast = max((r for r, m in mine.items() if m.ws_p99 <= CLIENTS_P99_TARGET_MS
                        and held(clients, kind, r)), default=math.nan)
            lines.append(f"{kind:<8}{clients:>5} streams: sustained in all rounds up to "
                         f"{fmt(top)}/s offered (websocket p99 <= "
                         f"{CLIENTS_P99_TARGET_MS:g} ms up to {fmt(fast)}/s); highest persisted "
                         f"rate of a step {max(m.window_rate for m in mine.values()):.0f}/s")
    if not configs:
        return "\n".join(lines)
    small = configs[0]
    target = f"{RATE_TARGET:g}/s"
    ok = held(small, "inbound", RATE_TARGET)
    lines.append(f"target >= {target} replies persisted, sustained ({small} streams): "
                 f"{'MET' if ok else 'NOT MET'}")
    m = medians.get((small, "inbound", RATE_TARGET))
    if m is None:
        lines.append(f"target publish -> websocket p99 <= {P99_TARGET_MS:g} ms at {target}: "
                     f"NOT MET (no step at {target}: a lower rate was not sustained, or "
                     f"{target} is not in --rates)")
    else:
        ok = ok and m.ws_p99 <= P99_TARGET_MS
        lines.append(f"target publish -> websocket p99 <= {P99_TARGET_MS:g} ms at {target} "
                     f"({small} streams): {fmt(m.ws_p99, 1)} ms (database visible "
                     f"{fmt(m.db_p99, 1)} ms; median of {ran(small)} rounds): "
                     f"{'MET' if ok else 'NOT MET'}")
    if CLIENTS_TARGET not in configs:
        lines.append(f"target {CLIENTS_TARGET} streams: not run")
        return "\n".join(lines)
    big = medians.get((CLIENTS_TARGET, "inbound", RATE_TARGET))
    if big is None:
        lines.append(f"target {CLIENTS_TARGET} streams, delivery p99 <= "
                     f"{CLIENTS_P99_TARGET_MS:g} ms at {target}: NOT MET (no step at {target})")
    else:
        missed = big.ws_expected - big.ws_received
        ok = (held(CLIENTS_TARGET, "inbound", RATE_TARGET)
              and big.ws_p99 <= CLIENTS_P99_TARGET_MS and missed == 0)
        lines.append(f"target {CLIENTS_TARGET} streams, delivery p99 <= "
                     f"{CLIENTS_P99_TARGET_MS:g} ms at {target}: {fmt(big.ws_p99, 1)} ms "
                     f"(median of the {ran(CLIENTS_TARGET)} rounds that got there), "
                     f"{missed} events missing: {'MET' if ok else 'NOT MET'}")
    return "\n".join(lines)
