"""The profile of the inbound benchmark's extra steps: py-spy's raw stacks of the gateway
split by component (``--gil``: CPU) and by where the threads wait (``--idle``: wall time)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

PROFILE_RATE_HZ = 200  # py-spy samples per second

# (component, substrings of a stack, any of which puts it there); first match wins.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("MQTT: paho client + MQTT actor", ("paho/", "actors/mqtt.py", "actors/mqtt_link.py")),
    ("live stream: forwarder, JSON, websocket send (quart, hypercorn, wsproto)",
     ("actors/http/stream.py", "wsproto/", "hypercorn/", "quart/", "quart_trio/")),
    ("event bus fan-out", ("actors/events.py",)),
    ("inbound consumer: parse, batch, acks, thread hand-off",
     ("actors/inbound.py", "kosmo/wire.py")),
    ("ledger reports lane, thread hand-off", ("actors/ledger.py", "actors/reply.py")),
    ("Trio scheduler and epoll, not attributable", ("trio/",)),
]
OTHER = "other"
WORKERS = {"psycopg": "database worker threads: psycopg",
           "ours": "database worker threads: our SQL code (inbound_store, ledger_store, events)",
           "other": "database worker threads: thread start, pool, other"}


def component(stack: str) -> str:
    thread, _, frames = stack.partition(";")
    if "MainThread" not in thread:
        leaf = frames.rpartition(";")[2]
        if "(psycopg/" in leaf:
            return WORKERS["psycopg"]
        if "(kosmo/" in leaf or "(actors/" in leaf:
            return WORKERS["ours"]
        return WORKERS["other"]
    for name, marks in COMPONENTS:
        if any(mark in stack for mark in marks):
            return name
    return OTHER


def summarize_profile(path: Path, cpu_ms: float) -> str:
    counts: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            stack, _, number = line.rpartition(" ")
            if stack and number.isdigit():
                counts[component(stack)] += int(number)
    total = sum(counts.values()) or 1
    lines = [f"{path.name}: {sum(counts.values())} samples with the GIL held"]
    for name, count in counts.most_common():
        share = count / total
        lines.append(f"  {100 * share:5.1f}%  {share * cpu_ms:6.3f} ms/reply  {name}")
    return "\n".join(lines)


def summarize_wall(path: Path, top: int = 12) -> str:
    """An ``--idle`` profile: the Trio thread's busy share, and where the database worker
    threads spend their wall time, by the innermost function of ours on the stack."""
    main: Counter[str] = Counter()
    workers: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            stack, _, number = line.rpartition(" ")
            if not (stack and number.isdigit()):
                continue
            thread, _, frames = stack.partition(";")
            if "MainThread" in thread:
                idle = "get_events (trio/_core/_io_epoll.py" in frames.rpartition(";")[2]
                main["idle: waiting in epoll" if idle else "busy"] += int(number)
                continue
            ours = [f for f in frames.split(";") if "(kosmo/" in f or "(actors/" in f]
            if not ours:
                where = "idle: thread cache / pool"
            else:
                leaf = ours[-1]
                name, _, place = leaf.partition(" (")
                where = f"{name} ({place.split(':')[0]})"
                if "(psycopg" in frames.rpartition(";")[2] or "psycopg/" in frames:
                    where += ", in psycopg/libpq"
            workers[where] += int(number)
    lines = []
    total = sum(main.values()) or 1
    lines.append("  Trio thread: " + ", ".join(f"{k} {100 * v / total:.0f}%"
                                              for k, v in main.most_common()))
    busy = sum(v for k, v in workers.items() if not k.startswith("idle")) or 1
    lines.append(f"  database worker threads, busy samples by function ({busy} samples):")
    for where, count in workers.most_common():
        if not where.startswith("idle") and len(lines) < top + 2:
            lines.append(f"    {100 * count / busy:5.1f}%  {where}")
    return "\n".join(lines)
