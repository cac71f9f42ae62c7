"""Webhook benchmark: events to local receivers at a fixed offered rate, open loop.

What it does, in one run (see bench/README.md for how to read the figures):
1. Creates a fresh database ``bench_<tag>`` (``kosmo migrate``/``seed``) and starts the gateway
   (``kosmo gateway``, header auth, ``KOSMO_WEBHOOK_ALLOW_PRIVATE=true``) in its own process.
2. Starts the receivers in another process (``bench/webhooks_receiver.py``): ``--hooks`` live
   endpoints that answer 200 at once, and one dead endpoint that accepts connections and never
   answers. It registers one webhook (all event types) per live endpoint for the demo
   sanctuary user, through the API.
3. Events: this process inserts rows of ``message_status_history`` for one message of that user
   (status ``delivered``, under the event-order lock, as the ledger writes them), row *i* due at
   ``start + i/rate`` whatever happened before (open loop), several rows per transaction when
   the inserts fall behind. The event's time is its scheduled time; latency = arrival at the
   receiver (``time.monotonic()``, shared by the processes of the machine) minus that, so a late
   producer or a stalled gateway counts against the figure.
4. Each round: ``alone`` (``--rate`` events/s), ``dead`` (the same with a webhook on the dead
   endpoint registered beside the others, deleted afterwards; its figures are the live
   endpoints'), then the throughput steps (``--throughput`` deliveries/s, upward until one is
   not sustained). After each step it waits until every live delivery is recorded delivered
   (or ``--drain`` seconds), then collects the arrivals.
5. Prints one line per step and round, the medians over rounds and the targets; then stops
   the processes and drops the database (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shlex
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import trio
from accept import server  # bench/ is on sys.path when run as a script
from common import (
    BenchError,
    log_dir,
    log_problems,
    percentile,
    run_main,
    say,
    sigterm_interrupts,
    source_version,
)
from helper_process import Helper
from proc_stats import machine_cpu, process_cpu
from servers import BIN, bench_database, forget_mqtt_session, free_port, gateway_env, wait_ready
from webhooks_report import Step, report

from kosmo.events import lock_event_order

HERE = Path(__file__).resolve().parent
SANCTUARY = "33333333-3333-3333-3333-333333333333"  # demo user whose plan has webhooks
class Producer:
    """Inserts history rows (events) for one message of the sanctuary user, open loop."""

    def __init__(self, db_url: str) -> None:
        self.conn = psycopg.connect(db_url)
        self.message = uuid.uuid4()
        with self.conn.transaction():
            self.conn.execute("""
                INSERT INTO messages (id, direction, user_id, node_id, text, status,
                                      created_at, updated_at)
                VALUES (%s, 'outbound', %s, '!a1b2c3d4', 'bench: a webhook event',
                        'delivered', now(), now())""", (self.message, SANCTUARY))

    def insert(self, count: int) -> list[int]:
        with self.conn.transaction():
            lock_event_order(self.conn)
            rows = self.conn.execute("""
                INSERT INTO message_status_history (message_id, status, at, user_id, bridge_id)
                SELECT %s, 'delivered', now(), %s, 'bench' FROM generate_series(1, %s)
                RETURNING id""", (self.message, SANCTUARY, count)).fetchall()
        return sorted(r[0] for r in rows)

    async def run(self, rate: float, seconds: float) -> tuple[dict[int, float], list[float]]:
        """Scheduled monotonic time per history id, and each event's lag (commit - due)."""
        total = max(1, round(rate * seconds))
        due: dict[int, float] = {}
        lags: list[float] = []
        start = time.monotonic() + 0.05
        sent = 0
        while sent < total:
            now = time.monotonic()
            ready = min(total, int((now - start) * rate) + 1)
            if ready <= sent:
                await trio.sleep(max(0.0, start + sent / rate - now))
                continue
            ids = await trio.to_thread.run_sync(self.insert, ready - sent)
            done = time.monotonic()
            for k, history_id in enumerate(ids):
                due[history_id] = start + (sent + k) / rate
                lags.append(done - due[history_id])
            sent = ready
        return due, lags


def api(base: str, method: str, path: str, body: Any) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"X-User-ID": SANCTUARY, "Content-Type": "application/json"})
    with opener.open(request, timeout=10) as answer:
        data = answer.read()
    return json.loads(data) if data else None


def register(base: str, port: int) -> str:
    created = api(base, "POST", "/api/v1/webhooks",
                  {"url": f"http://127.0.0.1:{port}/hook", "events": ["*"]})
    return str(created["webhook_id"])


async def measure(args: argparse.Namespace, gateway_pid: int, db_url: str) -> list[Step]:
    cmd = [sys.executable, str(HERE / "webhooks_receiver.py"), "--live", str(args.hooks)]
    process = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, start_new_session=True)
    receiver = Helper("receiver", process)
    steps: list[Step] = []
    try:
        async with sigterm_interrupts():
            with trio.fail_after(15):
                ready = (await receiver.readline()).split()
            if ready[:1] != ["ready"]:
                raise BenchError(f"receiver said {' '.join(ready)!r} instead of ready")
            ports = [int(p) for p in ready[1:]]
            live, dead_port = ports[:-1], ports[-1]
            base = args.gateway_url
            hooks = [await trio.to_thread.run_sync(register, base, p) for p in live]
            producer = Producer(db_url)
            check = psycopg.connect(db_url, autocommit=True)
            ctx = Context(args, producer, check, receiver, hooks, gateway_pid)
            say("warm-up")
            await ctx.step("warm-up", args.rate, args.warmup)
            for r in range(1, args.rounds + 1):
                say(f"round {r}/{args.rounds}")
                steps.append(await ctx.step("alone", args.rate, args.seconds))
                dead = await trio.to_thread.run_sync(register, base, dead_port)
                try:
                    steps.append(await ctx.step("dead", args.rate, args.seconds))
                finally:
                    await trio.to_thread.run_sync(ctx.retire, dead)
                if args.dead_backlog:
                    dead = await trio.to_thread.run_sync(register, base, dead_port)
                    await trio.to_thread.run_sync(ctx.preload, dead, args.dead_backlog)
                    try:
                        steps.append(await ctx.step("dead+old", args.rate, args.seconds))
                    finally:
                        await trio.to_thread.run_sync(ctx.retire, dead)
                for offered in args.throughput:
                    step = await ctx.step(f"{offered:g}/s", offered / args.hooks, args.seconds)
                    steps.append(step)
                    if not step.sustained:
                        break
    finally:
        await receiver.stop()
    return steps


@dataclass
class Context:
    args: argparse.Namespace
    producer: Producer
    check: psycopg.Connection[Any]
    receiver: Helper
    hooks: list[str]
    gateway_pid: int

    def owed(self, last: int) -> bool:
        row = self.check.execute("""
            SELECT (SELECT history_id FROM webhook_cursor) < %s
                   OR EXISTS (SELECT 1 FROM webhook_deliveries
                              WHERE state = 'owed' AND webhook_id = ANY(%s::uuid[]))""",
            (last, self.hooks)).fetchone()
        return bool(row and row[0])

    def preload(self, webhook: str, count: int) -> None:
        """Deliveries already owed to ``webhook``, due now: an endpoint that has been dead a
        while (its first attempts fall behind: at most ``per_webhook`` of them per timeout)."""
        self.check.execute("""
            INSERT INTO webhook_deliveries (webhook_id, event_id, type, body, state,
                                            next_attempt_at, created_at)
            SELECT %s, 1000000000000 + g, 'message.delivered', '{}', 'owed', now(), now()
            FROM generate_series(1, %s::int) g""", (webhook, count))
        self.check.execute("ANALYZE webhook_deliveries")

    def retire(self, webhook: str) -> None:
        """Disable a webhook and give up what it is owed, deleting nothing. Not through the
        API's DELETE: its cascade from each delivery to the attempts scans ``webhook_attempts``
        once per delivery (no index on ``delivery_id``: more than 10 s for 20,000 deliveries),
        and a delivery deleted while its attempt is being recorded fails the attempt's insert
        with a foreign-key violation that stops the gateway (see bench/README.md)."""
        with self.check.transaction():
            self.check.execute("UPDATE webhooks SET disabled_at = now() WHERE id = %s",
                               (webhook,))
            self.check.execute("""
                UPDATE webhook_deliveries SET state = 'given_up', next_attempt_at = NULL,
                                              leased_until = NULL
                WHERE webhook_id = %s AND state = 'owed'""", (webhook,))

    def stages(self, due: dict[int, float],
               first: dict[tuple[int, str], float]) -> dict[str, float]:
        """Where a live delivery's time went, p50 and p99 in ms: ``enqueue`` from the event's
        scheduled time to its delivery row (the tailer), ``claim`` from there to the start of
        its first attempt (the deliverer), ``post`` from there to the arrival."""
        wall = time.time() - time.monotonic()  # monotonic -> Unix seconds
        rows = self.check.execute("""
            SELECT d.event_id, w.n, extract(epoch FROM d.created_at), extract(epoch FROM a.at)
            FROM webhook_deliveries d
            JOIN unnest(%s::uuid[]) WITH ORDINALITY AS w(id, n) ON w.id = d.webhook_id
            JOIN webhook_attempts a ON a.delivery_id = d.id AND a.attempt = 1
            WHERE d.event_id BETWEEN %s AND %s""", (self.hooks, min(due), max(due))).fetchall()
        parts: dict[str, list[float]] = {"enqueue": [], "claim": [], "post": []}
        for event, n, created, attempted in rows:
            arrived = first.get((event, str(n - 1)))
            if event not in due or arrived is None:
                continue
            parts["enqueue"].append(1000 * (float(created) - wall - due[event]))
            parts["claim"].append(1000 * (float(attempted) - float(created)))
            parts["post"].append(1000 * (arrived + wall - float(attempted)))
        return {f"{k} p{p}": percentile(v, p) for k, v in parts.items() for p in (50, 99)}

    async def step(self, name: str, event_rate: float, seconds: float) -> Step:
        before = (machine_cpu(), process_cpu(self.gateway_pid), time.monotonic())
        due, lags = await self.producer.run(event_rate, seconds)
        deadline = time.monotonic() + self.args.drain
        while await trio.to_thread.run_sync(self.owed, max(due)):
            if time.monotonic() > deadline:
                say(f"{name}: deliveries still owed after {self.args.drain:g} s")
                break
            await trio.sleep(0.1)
        after = (machine_cpu(), process_cpu(self.gateway_pid), time.monotonic())
        wall = after[2] - before[2]
        cpu = {"machine": 100 * (after[0] - before[0]) / wall,
               "gateway": 100 * (after[1] - before[1]) / wall}
        await self.receiver.send("dump")
        first: dict[tuple[int, str], float] = {}
        for line in await self.receiver.read_until_end():
            webhook_id, index, at = line.split()
            key = (int(webhook_id), index)
            if key[0] in due and key not in first:
                first[key] = float(at)
        latencies = [at - due[h] for (h, _), at in first.items()]
        stages = await trio.to_thread.run_sync(self.stages, due, first)
        expected = len(due) * len(self.hooks)
        span = (max(first.values()) - min(due.values())) if first else math.inf
        ms = [1000 * x for x in latencies]
        step = Step(name, event_rate * len(self.hooks), len(due), len(first),
                    expected - len(first), len(first) / span if first else 0.0,
                    percentile(ms, 50), percentile(ms, 99), max(ms, default=math.nan),
                    1000 * percentile(lags, 99), stages=stages, cpu=cpu)
        say(f"{name}: {step.received}/{expected} in, {step.achieved:.0f}/s, "
            f"p50 {step.p50_ms:.1f} ms, p99 {step.p99_ms:.1f} ms")
        return step


# --- the processes (plain blocking code, outside Trio) --------------------------------------

def run(args: argparse.Namespace) -> str:
    args.code = source_version()
    tag = secrets.token_hex(4)
    topic_root, client_id = f"bench{tag}", f"bench-gw-{tag}"
    with log_dir("kosmo_bench_") as logs, contextlib.ExitStack() as stack:
        say(f"database bench_{tag}, logs in {logs}")
        db_url = stack.enter_context(bench_database(args.pg_url, f"bench_{tag}"))
        env = gateway_env(db_url, args.mqtt_url, topic_root, client_id)
        port = free_port()
        args.gateway_url = f"http://127.0.0.1:{port}"
        env.update(KOSMO_HTTP_BIND=f"127.0.0.1:{port}", KOSMO_WEBHOOK_ALLOW_PRIVATE="true")
        stack.callback(forget_mqtt_session, args.mqtt_url, client_id)
        gateway = stack.enter_context(server(
            "gateway", shlex.split(args.gateway_cmd), env, logs / "gateway.log"))
        wait_ready("gateway", gateway, args.gateway_url + "/readyz", logs / "gateway.log",
                   any_answer=False)
        steps = trio.run(measure, args, gateway.pid, db_url)
        return report(args, steps, log_problems(logs / "gateway.log"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=6, help="per step (default 6)")
    parser.add_argument("--rate", type=float, default=200,
                        help="events/s of the latency steps (default 200)")
    parser.add_argument("--hooks", type=int, default=2,
                        help="live endpoints, one webhook each (default 2)")
    parser.add_argument("--throughput", default="250,500,750,1000",
                        help="deliveries/s offered, upward (default 250,500,750,1000)")
    parser.add_argument("--dead-backlog", type=int, default=20000,
                        help="deliveries owed to the dead endpoint of the extra `dead+old` step "
                             "(0: no such step; default 20000, 100 s of events at 200/s)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds (default 2)")
    parser.add_argument("--drain", type=float, default=15,
                        help="most seconds to wait for a step's deliveries (default 15)")
    parser.add_argument("--pg-url", default=os.environ.get(
        "KOSMO_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (a role that may CREATE DATABASE) [env KOSMO_BENCH_PG_URL]")
    parser.add_argument("--mqtt-url", default=os.environ.get(
        "KOSMO_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883"),
        help="MQTT broker [env KOSMO_BENCH_MQTT_URL]")
    parser.add_argument("--gateway-cmd", default=f"{BIN / 'kosmo'} gateway",
                        help="command that serves the gateway (default: this venv's)")
    args = parser.parse_args()
    try:
        args.throughput = sorted(float(x) for x in args.throughput.split(","))
    except ValueError:
        parser.error("--throughput: comma-separated numbers")
    if args.rounds < 1 or args.seconds < 1 or args.rate <= 0 or args.hooks < 1:
        parser.error("need --rounds >= 1, --seconds >= 1, --rate > 0, --hooks >= 1")
    run_main(lambda: run(args), "gateway and receivers stopped, database dropped")


if __name__ == "__main__":
    main()
