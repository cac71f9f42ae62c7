"""Where a server's Python time goes, per request, from a ``py-spy record --gil --threads
--format raw`` file (one collapsed stack per line, then its sample count).

With ``--gil`` py-spy samples only the thread holding the GIL, so the samples add up to the
Python CPU the process could not run in parallel: the budget that bounds a one-process server.
Each stack goes to the first component whose rule matches, checked in the order of
``COMPONENTS``; stacks of worker threads (the gateway's database calls) form their own
groups, by the package of the innermost frame (the ``dataclass __init__`` of a row counts as
"other": py-spy names it ``<string>``).

Usage: python bench/profile_summary.py FILE [--cpu-ms-per-request MS]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# (component, substrings of a stack, any of which puts it there); first match wins.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("MQTT: paho client + MQTT actor", ("paho/", "actors/mqtt.py", "actors/mqtt_link.py")),
    ("conversations: router + node actors", ("actors/conversations.py",)),
    ("event bus (live stream)", ("actors/events.py", "kosmo/events.py")),
    ("ledger actor, replies, thread hand-off (Trio side)",
     ("actors/ledger.py", "actors/reply.py", "kosmo/db.py", "trio/_threads.py")),
    ("send handler: auth, validation, JSON, response body",
     ("kosmo/api/", "actors/http/app.py", "hello (hello.py:")),
    ("HTTP front: hypercorn, h11, quart, werkzeug",
     ("hypercorn/", "h11/", "quart/", "quart_trio/", "quart_schema/", "werkzeug/")),
    ("Trio scheduler and epoll, not attributable", ("trio/",)),
]
OTHER = "other"
WORKER_PSYCOPG = "database worker threads: psycopg"
WORKER_OURS = "database worker threads: our code (ledger SQL, domain rules, events)"
WORKER_OTHER = "database worker threads: thread start, pool, other"


def component(stack: str) -> str:
    thread, _, frames = stack.partition(";")
    if "MainThread" not in thread:  # a worker thread: our database calls
        leaf = frames.rpartition(";")[2]
        if "(psycopg/" in leaf:
            return WORKER_PSYCOPG
        if "(kosmo/" in leaf or "(actors/" in leaf:
            return WORKER_OURS
        return WORKER_OTHER
    for name, marks in COMPONENTS:
        if any(mark in stack for mark in marks):
            return name
    return OTHER


def load(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[component(stack)] += int(count)
    return counts


def summarize(path: Path, *, cpu_ms_per_request: float | None = None) -> str:
    """Each component's share of the samples; with the server's measured CPU per request,
    that share of it too (py-spy drops samples under load, so counts alone understate)."""
    counts = load(path)
    total = sum(counts.values()) or 1
    order = [name for name, _ in COMPONENTS] + [WORKER_PSYCOPG, WORKER_OURS, WORKER_OTHER,
                                                 OTHER]
    lines = [f"{path.name}: {total} samples with the GIL held"
             + (f"; {cpu_ms_per_request:.2f} ms of server CPU per request"
                if cpu_ms_per_request else "")]
    for name in sorted(order, key=lambda n: -counts[n]):
        if counts[name]:
            share = counts[name] / total
            per = f"{share * cpu_ms_per_request:6.3f} ms/req  " if cpu_ms_per_request else ""
            lines.append(f"  {100 * share:5.1f}%  {per}{name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--cpu-ms-per-request", type=float,
                        help="the server's CPU per request while sampled, to split it too")
    args = parser.parse_args()
    print(summarize(args.file, cpu_ms_per_request=args.cpu_ms_per_request))


if __name__ == "__main__":
    main()
