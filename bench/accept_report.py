"""The report of bench/accept.py: per-run lines, medians over rounds, and the targets."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime

from accept_load import Latency, Throughput  # bench/ is on sys.path when run as a script

RATIO_TARGET = 0.75  # gateway / hello-world req/s at 64 connections, one process
SEQ_TARGET_MS = 2.0  # sequential send p50, one process
P99_TARGET_MS = 10.0  # accept -> publish p99 at 200 sends/s over 1,000 nodes
WORKER_TARGETS = {8: 1500.0, 64: 1800.0}  # accepted sends/s with --workers 2


@dataclass
class Results:
    args: argparse.Namespace
    closed: list[Throughput] = field(default_factory=list)
    sequential: list[Throughput] = field(default_factory=list)
    healthz: list[Throughput] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    stored: dict[str, tuple[int, int]] = field(default_factory=dict)
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    profile: str | None = None
    seconds: float = 0.0


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _median_run(runs: list[Throughput]) -> Throughput:
    first = runs[0]
    return Throughput(first.target, first.connections, _med([t.rps for t in runs]),
                      _med([t.p50_ms for t in runs]), _med([t.p99_ms for t in runs]),
                      sum(t.requests for t in runs), sum(t.errors for t in runs),
                      {k: _med([t.cpu[k] for t in runs]) for k in first.cpu},
                      _med([t.transactions for t in runs]))


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def report(results: Results) -> str:
    args = results.args
    out: list[str] = []
    w = out.append
    load = os.getloadavg()
    w(f"KosmoConnect accept benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
      f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end, "
      f"Python {sys.version.split()[0]}, code {args.code}")
    w(f"gateway: {args.gateway_cmd} (workers: {args.workers}, sending users: {args.users})"
      + (f"; baseline: {args.baseline_cmd}" if args.baseline_cmd else ""))
    w(f"{args.rounds} round(s), servers alternating within each; {len(results.closed)} "
      f"closed-loop runs of {args.seconds:g} s; measured for {results.seconds:.0f} s")
    names = ["hello"] + [n for n in ("gateway", "baseline")
                         if any(t.target == n for t in results.closed)]

    w("")
    w("Closed loop (wrk): req/s and latency; CPU in % of one core (server = all its "
      "processes, (main) their Trio threads, pg = their PostgreSQL backends, machine = all "
      "processes); ms/req = CPU per request (server, pg)")
    w(f"{'conns':>5} {'round':<7}{'server':<9}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}"
      f"{'errors':>7}{'server':>8}{'(main)':>7}{'pg':>5}{'wrk':>5}{'machine':>8}"
      f"{'ms/req':>8}{'pg':>6}{'ratio':>7}")

    def row(label: str, t: Throughput, ratio: float | None) -> str:
        c = t.cpu
        return (f"{t.connections:>5} {label:<7}{t.target:<9}{t.rps:>7.0f}{t.p50_ms:>8.1f}"
                f"{t.p99_ms:>8.1f}{t.errors:>7}{c['server']:>7.0f}%{c['main']:>6.0f}%"
                f"{c['postgres']:>4.0f}%{c['client']:>4.0f}%{c['machine']:>7.0f}%"
                f"{t.cpu_ms('server'):>8.2f}{t.cpu_ms('postgres'):>6.2f}"
                + (f"{ratio:>7.2f}" if ratio is not None else ""))

    medians: dict[tuple[str, int], Throughput] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    for c in args.connections:
        runs = [t for t in results.closed if t.connections == c]
        by_round = [runs[i:i + len(names)] for i in range(0, len(runs), len(names))]
        for n, round_runs in enumerate(by_round, 1):
            hello = round_runs[0]
            for t in round_runs:
                ratio = t.rps / hello.rps if t.target != "hello" else None
                if ratio is not None:
                    ratios.setdefault((t.target, c), []).append(ratio)
                w(row(str(n), t, ratio))
        for name in names:
            mine = [t for t in runs if t.target == name]
            if mine:
                medians[(name, c)] = m = _median_run(mine)
                w(row("median", m, _med(ratios[(name, c)]) if name != "hello" else None))

    w("")
    w("Sequential (one connection, closed loop): latency of each request")
    w(f"{'request':<22}{'server':<10}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>7}{'ms/req':>8}"
      f"{'pg':>6}{'txn/req':>8}   rounds p50 ms")
    seq: dict[tuple[str, str], float] = {}
    for what, runs in (("send (POST messages)", results.sequential),
                       ("GET /healthz", results.healthz)):
        for name in names:
            mine = [t for t in runs if t.target == name]
            if mine:
                seq[(what, name)] = p50 = _med([t.p50_ms for t in mine])
                m = _median_run(mine)
                w(f"{what:<22}{name:<10}{p50:>8.2f}{m.p99_ms:>8.2f}{m.rps:>7.0f}"
                  f"{m.cpu_ms('server'):>8.2f}{m.cpu_ms('postgres'):>6.2f}"
                  + (f"{m.transactions:>8.2f}   " if name != "hello" else f"{'':>8}   ")
                  + ", ".join(f"{t.p50_ms:.2f}" for t in mine))

    w("")
    w(f"Accept -> MQTT publish: open loop at {args.rate:g} sends/s for {args.rate_seconds:g} s "
      f"({args.rate_connections} connections), latency from the scheduled send time (ms); "
      "lag = how late the client sent")
    w(f"{'server':<10}{'nodes':>6}{'round':>7}{'offered':>8}{'201':>6}{'missing':>8}{'twice':>6}"
      f"{'pub p50':>9}{'pub p99':>9}{'pub max':>9}{'http p50':>9}{'http p99':>9}{'lag p99':>8}")

    def lat_row(label: str, r: Latency) -> str:
        return (f"{r.target:<10}{r.nodes:>6}{label:>7}{r.offered:>8}{r.accepted:>6}"
                f"{r.missing:>8}{r.twice:>6}{r.published_p50_ms:>9.1f}{r.published_p99_ms:>9.1f}"
                f"{r.published_max_ms:>9.1f}{r.http_p50_ms:>9.1f}{r.http_p99_ms:>9.1f}"
                f"{r.lag_p99_ms:>8.2f}")

    lat_med: dict[tuple[str, int], float] = {}
    complete: dict[tuple[str, int], bool] = {}
    for name in names[1:]:
        for nodes in sorted({args.nodes, 1}, reverse=True):
            mine = [r for r in results.latency if r.target == name and r.nodes == nodes]
            for n, r in enumerate(mine, 1):
                w(lat_row(str(n), r))
            if mine:
                lat_med[(name, nodes)] = _med([r.published_p99_ms for r in mine])
                complete[(name, nodes)] = all(r.accepted == r.offered and not r.missing
                                              for r in mine)
                unanswered = sum(r.unanswered for r in mine)
                if unanswered:
                    w(f"{name:<10}{nodes:>6}  {unanswered} sends unanswered within the runs' "
                      "deadlines (overloaded): not in the figures")
                w(f"{name:<10}{nodes:>6}{'median':>7}{'':>8}{'':>6}"
                  f"{sum(r.missing for r in mine):>8}{sum(r.twice for r in mine):>6}"
                  f"{_med([r.published_p50_ms for r in mine]):>9.1f}"
                  f"{lat_med[(name, nodes)]:>9.1f}"
                  f"{_med([r.published_max_ms for r in mine]):>9.1f}"
                  f"{_med([r.http_p50_ms for r in mine]):>9.1f}"
                  f"{_med([r.http_p99_ms for r in mine]):>9.1f}"
                  f"{_med([r.lag_p99_ms for r in mine]):>8.2f}")

    w("")
    w("Targets (medians of rounds; the gateway under test" +
      (", the baseline in brackets)" if "baseline" in names else ")"))

    def both(fmt: str, value: dict[str, float]) -> str:
        text = fmt.format(value["gateway"])
        if "baseline" in value:
            text += " [" + fmt.format(value["baseline"]) + "]"
        return text

    def per(getter: object) -> dict[str, float]:
        found = {}
        for name in names[1:]:
            try:
                found[name] = getter(name)  # type: ignore[operator]
            except KeyError:
                found[name] = math.nan
        return found

    one_process = args.workers == "1"
    if one_process:
        p50 = per(lambda n: seq[("send (POST messages)", n)])
        w(f"  sequential send p50 <= {SEQ_TARGET_MS:g} ms: {both('{:.2f} ms', p50)}  "
          f"{_met(p50['gateway'] <= SEQ_TARGET_MS)}")
        if 64 in args.connections:
            r64 = per(lambda n: _med(ratios[(n, 64)]))
            w(f"  req/s ratio to hello-world at 64 connections >= {RATIO_TARGET}: "
              f"{both('{:.2f}', r64)}  {_met(r64['gateway'] >= RATIO_TARGET)}")
    for nodes in sorted({args.nodes, 1}, reverse=True):
        p99 = per(lambda n, k=nodes: lat_med[(n, k)])
        target = f"<= {P99_TARGET_MS:g} ms" if nodes == args.nodes else "(reported)"
        ok = p99["gateway"] <= P99_TARGET_MS and complete.get(("gateway", nodes), False)
        w(f"  accept -> publish p99 at {args.rate:g}/s over {nodes} node(s) {target}: "
          f"{both('{:.1f} ms', p99)}" + (f"  {_met(ok)}" if nodes == args.nodes else ""))
    for c in args.connections:
        rps = per(lambda n, k=c: medians[(n, k)].rps)
        cpu = per(lambda n, k=c: medians[(n, k)].cpu_ms("server"))
        pg = per(lambda n, k=c: medians[(n, k)].cpu_ms("postgres"))
        goal = WORKER_TARGETS.get(c) if not one_process else None
        w(f"  {c} connections: {both('{:.0f} sends/s', rps)}, CPU per send "
          f"{both('{:.2f} ms', cpu)} gateway + {both('{:.2f} ms', pg)} PostgreSQL"
          + (f"; target >= {goal:.0f}/s with 2 workers: {_met(rps['gateway'] >= goal)}"
             if goal else ""))

    w("")
    for name, (stored, pending) in results.stored.items():
        problems = results.log_problems.get(name, [])
        w(f"{name}: {stored} messages stored, {pending} still pending after the last drain; "
          f"log: {len(problems)} warnings or errors"
          + "".join(f"\n  {line}" for line in problems[:5]))
    if results.profile:
        w("")
        w(f"profile: one extra run per server under py-spy --gil (not in the figures above), "
          f"files in {args.profile}")
        w(results.profile)
    return "\n".join(out)
