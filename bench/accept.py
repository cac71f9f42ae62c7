"""Accept benchmark: the gateway's send path against a hello-world route on the same stack.

What it does, in one run (see bench/README.md for how to read the figures):
1. Creates a fresh database ``bench_<tag>`` per gateway, migrates and seeds it (``kosmo
   migrate``/``seed``), and announces one bridge per gateway that takes every message at once.
2. Starts the servers, one process (tree) each: the gateway (``kosmo gateway``, header auth, a
   private MQTT topic root and client id; ``--workers N|auto`` passed on), ``bench/hello.py``
   (Quart on quart-trio served by ``hypercorn.trio.serve`` with the gateway's own Hypercorn
   settings) and, with ``--baseline-cmd``, a second gateway (say, another checkout) measured
   in the same rounds: a before/after in one run.
3. Each round, alternating the servers so that slow drifts of a shared machine hit all alike:
   - closed loop: ``wrk`` (a separate C process) with each of ``--connections`` keep-alive
     clients (e.g. ``8,64``) POSTs sends for ``--seconds``: req/s, p50/p99 latency, CPU of the
     server processes, of their PostgreSQL backends, of wrk and of the machine;
   - sequential: one connection, closed loop: sends (every server) and ``GET /healthz``
     (the gateways), p50/p99;
   - accept -> publish: a fixed ``--rate`` of sends, open loop (request i is due at start +
     i/rate whatever happened before), spread over ``--nodes`` nodes, then all to one node; a
     subscriber process notes when each message reaches it over MQTT. Latency = arrival at the
     subscriber minus the request's scheduled send time, matched by ``message_id``.
4. Prints tables with the medians over rounds and the targets, stops the servers and drops the
   databases.

Everything is bounded: each load runs a fixed time under a deadline, every wait has a timeout,
and Ctrl-C or SIGTERM stop the servers and drop the databases too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import trio
from accept_load import (  # bench/ is on sys.path when run as a script
    PATH,
    SANCTUARY,
    CpuMeter,
    Latency,
    Throughput,
    accept_to_publish,
    announce_bridge,
    run_wrk,
    user_id,
)
from accept_report import Results, report
from common import (
    BenchError,
    log_dir,
    log_problems,
    run_main,
    say,
    sigterm_interrupts,
    source_version,
)
from profile_summary import summarize
from servers import BIN, bench_database, forget_mqtt_session, free_port, gateway_env, wait_ready

HERE = Path(__file__).resolve().parent
PROFILE_RATE = 200  # py-spy samples per second
STATS_SETTLE = 1.5  # seconds for PostgreSQL's per-database counts to include a run


# --- the servers (plain blocking code, outside Trio) ----------------------------------------


@contextlib.contextmanager
def server(name: str, cmd: list[str], env: dict[str, str],
           log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in its own session (a Ctrl-C reaches only us); stop it on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # every server stops gracefully on SIGTERM
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop within 15 s; killing it", file=sys.stderr)
                os.killpg(proc.pid, signal.SIGKILL)  # its workers are in its session
                proc.wait(timeout=10)


@dataclass
class Gateway:
    """One gateway under test, with its own database, topic root and MQTT client id."""

    name: str
    cmd: list[str]
    db_url: str = ""
    topic_root: str = ""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    meter: CpuMeter | None = None
    monitor: Any = None
    queries: int = 0  # transactions of the monitor connection (each query is one)
    log: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_gateway(stack: contextlib.ExitStack, args: argparse.Namespace, gateway: Gateway,
                  logs: Path) -> None:
    tag = secrets.token_hex(4)
    gateway.topic_root, client_id = f"bench{tag}", f"bench-gw-{tag}"
    gateway.db_url = stack.enter_context(bench_database(args.pg_url, f"bench_{tag}"))
    say(f"{gateway.name}: database bench_{tag}, topic root {gateway.topic_root}")
    env = gateway_env(gateway.db_url, args.mqtt_url, gateway.topic_root, client_id)
    gateway.port = free_port()
    env["KOSMO_HTTP_BIND"] = f"127.0.0.1:{gateway.port}"
    stack.callback(forget_mqtt_session, args.mqtt_url, client_id)
    if args.workers != "1":  # each worker has its own session, client id <id>-w<k>
        count = (os.cpu_count() or 1) if args.workers == "auto" else int(args.workers)
        for k in range(1, count + 1):
            stack.callback(forget_mqtt_session, args.mqtt_url, f"{client_id}-w{k}")
    add_users(gateway.db_url, args.users)
    announce_bridge(args.mqtt_url, gateway.topic_root)
    gateway.log = logs / f"{gateway.name}.log"
    gateway.proc = stack.enter_context(server(gateway.name, gateway.cmd, env, gateway.log))


def add_users(db_url: str, users: int) -> None:
    """Users 1 .. ``users`` - 1 of ``accept_load.user_id``, each with the demo Sanctuary user's
    plan (no quota limit) for the current month; user 0 is that demo user."""
    if users < 2:
        return
    with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            "WITH u AS (INSERT INTO users (id, email)"
            " SELECT id, id || '@example.org' FROM unnest(%s::uuid[]) AS x (id) RETURNING id)"
            " INSERT INTO subscriptions (id, user_id, plan_code, status, current_period_start,"
            "  current_period_end)"
            " SELECT gen_random_uuid(), u.id, s.plan_code, s.status, s.current_period_start,"
            "  s.current_period_end FROM u, subscriptions s WHERE s.user_id = %s",
            ([user_id(k) for k in range(1, users)], SANCTUARY))
        conn.execute("ANALYZE users")
        conn.execute("ANALYZE subscriptions")


def wait_workers(gateway: Gateway, args: argparse.Namespace) -> None:
    """Every worker answers before the run starts: SO_REUSEPORT spreads connections over the
    workers that listen, so ask until enough answers in a row came."""
    assert gateway.proc is not None
    wait_ready(gateway.name, gateway.proc, gateway.url + "/readyz", gateway.log,
               any_answer=False)
    if args.workers == "1":
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ok = 0
        for _ in range(40):
            try:
                wait_ready(gateway.name, gateway.proc, gateway.url + "/readyz", gateway.log,
                           any_answer=False, timeout=0.5)
                ok += 1
            except BenchError:
                break
        if ok == 40:
            time.sleep(1.0)  # the last workers to bind may still be subscribing
            return
    raise BenchError(f"{gateway.name}: not every worker answered within 30 s")


# --- the run (inside Trio) ------------------------------------------------------------------


async def measure(args: argparse.Namespace, hello: subprocess.Popen[bytes],
                  gateways: list[Gateway]) -> Results:
    results = Results(args)
    for g in gateways:
        g.monitor = await trio.to_thread.run_sync(
            partial(psycopg.connect, g.db_url, autocommit=True, connect_timeout=5))
        assert g.proc is not None
        g.meter = CpuMeter(g.proc.pid)
    hello_meter = CpuMeter(hello.pid)

    def query(g: Gateway, sql: str) -> Any:
        g.queries += 1
        return g.monitor.execute(sql).fetchone()

    async def drained(g: Gateway) -> None:
        """Wait (60 s at most) until every stored message was published and reported, then
        play the bridge's part: mark them delivered, so that what the bridge holds does not
        grow from run to run (the bench's bridge never reports; a real one does), and vacuum."""
        with trio.fail_after(60):
            # the database is the only place that knows; polling it is the honest way here
            while (await trio.to_thread.run_sync(  # noqa: ASYNC110
                    query, g, "SELECT count(*) FROM messages WHERE status = 'pending'"))[0]:
                await trio.sleep(0.2)
        await trio.to_thread.run_sync(  # rows locked in id order, as the ledger locks them
            query, g, "UPDATE messages SET status = 'delivered', updated_at = now()"
                      " WHERE id IN (SELECT id FROM messages WHERE status = 'queued'"
                      " ORDER BY id FOR UPDATE) RETURNING 1")
        # and clean up after it, as autovacuum would in time: the dead entries of the partial
        # indexes (held, waiting) would otherwise make every later hand-over count more
        g.queries += 1
        await trio.to_thread.run_sync(lambda: g.monitor.execute("VACUUM messages"))

    async def backends(g: Gateway) -> list[int]:
        g.queries += 1
        rows = await trio.to_thread.run_sync(lambda: g.monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()").fetchall())
        return [row[0] for row in rows]

    async def closed(g: Gateway, seconds: float, connections: int, *,
                     get: str | None = None) -> Throughput:
        assert g.meter is not None
        g.meter.backends = await backends(g)  # the pool may have grown
        count = connections == 1 and get is None
        before = await transactions(g) if count else 0
        run = await run_wrk(g.name, g.url + (get or PATH), seconds, connections, g.meter,
                            get=get, users=args.users)
        await drained(g)
        if not count or not run.requests:
            return run
        await trio.sleep(STATS_SETTLE)  # backends report their counts at most once a second
        return replace(run, transactions=(await transactions(g) - before) / run.requests)

    async def transactions(g: Gateway) -> int:
        """Transactions committed in the gateway's database so far, but the monitor's own."""
        row = await trio.to_thread.run_sync(query, g, "SELECT xact_commit FROM pg_stat_database"
                                                      " WHERE datname = current_database()")
        return int(row[0]) - g.queries

    try:
        async with sigterm_interrupts():
            say(f"warm-up: {args.warmup:g} s each")
            await run_wrk("hello", args.hello_url + PATH, args.warmup, max(args.connections),
                          hello_meter)
            for g in gateways:
                await closed(g, args.warmup, max(args.connections))
            for n in range(1, args.rounds + 1):
                for c in args.connections:
                    say(f"round {n}/{args.rounds}: closed loop, {c} connections, "
                        f"{args.seconds:g} s per server")
                    results.closed.append(await run_wrk(
                        "hello", args.hello_url + PATH, args.seconds, c, hello_meter))
                    for g in gateways:
                        results.closed.append(await closed(g, args.seconds, c))
                say(f"round {n}/{args.rounds}: sequential, {args.seq_seconds:g} s per run")
                results.sequential.append(await run_wrk(
                    "hello", args.hello_url + PATH, args.seq_seconds, 1, hello_meter))
                for g in gateways:
                    results.sequential.append(await closed(g, args.seq_seconds, 1))
                    results.healthz.append(await closed(g, args.seq_seconds, 1, get="/healthz"))
                for nodes in sorted({args.nodes, 1}, reverse=True):
                    for g in gateways:
                        say(f"round {n}/{args.rounds}: accept -> publish, {g.name}, "
                            f"{args.rate:g} sends/s over {nodes} node(s) for "
                            f"{args.rate_seconds:g} s")
                        results.latency.append(await accept_to_publish(
                            g.name, args.mqtt_url, g.port, g.topic_root, rate=args.rate,
                            seconds=args.rate_seconds, connections=args.rate_connections,
                            nodes=nodes, drained=partial(drained, g), users=args.users))
            if args.profile:
                results.profile = await profile(args, [
                    ("hello", args.hello_url, hello_meter)] + [
                    (g.name, g.url, g.meter) for g in gateways if g.meter is not None],
                    [partial(drained, g) for g in gateways])
            for g in gateways:
                results.stored[g.name] = await trio.to_thread.run_sync(
                    query, g, "SELECT count(*), count(*) FILTER (WHERE status = 'pending')"
                              " FROM messages")
    finally:
        with trio.CancelScope(shield=True):
            for g in gateways:
                await trio.to_thread.run_sync(g.monitor.close)
    return results


async def profile(args: argparse.Namespace, targets: list[tuple[str, str, CpuMeter]],
                  drains: list[Any]) -> str:
    """One more run per server (not counted) under ``py-spy record``; returns a summary.
    With several workers only the first worker is recorded."""
    from proc_stats import process_tree

    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    folder = Path(args.profile)
    summaries = []
    connections = max(args.connections)
    for name, url, meter in targets:
        out = folder / f"{name}.txt"
        pid = process_tree(meter.server)[-1]  # the server, or its last worker
        say(f"profile: one more {name} run under py-spy, {args.seconds:g} s -> {out}")
        cmd = [spy, "record", "--pid", str(pid), "--duration",
               str(round(args.seconds)), "--rate", str(PROFILE_RATE), "--format", "raw",
               "--threads", "--gil", "--nonblocking", "--output", str(out)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.run_process, cmd, capture_stdout=True,
                                       capture_stderr=True))
            await trio.sleep(0.5)  # py-spy attaches
            run = await run_wrk(name, url + PATH, args.seconds - 1, connections, meter)
        for drained in drains:
            await drained()
        summaries.append(f"{name}: {run.rps:.0f} req/s under the profiler\n"
                         + summarize(out, cpu_ms_per_request=run.cpu_ms("server")))
    return "\n".join(summaries)


def run(args: argparse.Namespace) -> str:
    args.code = source_version()  # what the servers start from, before any edit lands
    workers = [] if args.workers == "1" else ["--workers", args.workers]
    gateways = [Gateway("gateway", shlex.split(args.gateway_cmd) + workers)]
    if args.baseline_cmd:
        gateways.append(Gateway("baseline", shlex.split(args.baseline_cmd) + workers))
    with log_dir("kosmo_bench_") as logs, contextlib.ExitStack() as stack:
        say(f"logs in {logs}")
        for g in gateways:
            start_gateway(stack, args, g, logs)
        hello_port = free_port()
        args.hello_url = f"http://127.0.0.1:{hello_port}"
        hello = stack.enter_context(server(
            "hello-world", [sys.executable, str(HERE / "hello.py"), "--bind",
                            f"127.0.0.1:{hello_port}"], {**os.environ}, logs / "hello.log"))
        wait_ready("hello-world", hello, args.hello_url + PATH, logs / "hello.log",
                   any_answer=True)
        for g in gateways:
            wait_workers(g, args)
        started = time.monotonic()
        results = trio.run(measure, args, hello, gateways)
        results.seconds = time.monotonic() - started
        for g in gateways:
            results.log_problems[g.name] = log_problems(g.log)
        return report(results)


def connection_list(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of counts >= 1, e.g. 8,64")
    return counts


def users_arg(text: str) -> int:
    if not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError("a count >= 1")
    return int(text)


def workers_arg(text: str) -> str:
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError("a count >= 1 or auto")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Gateway send path vs a hello-world route on the same stack.")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=5,
                        help="per closed-loop run (default 5)")
    parser.add_argument("--connections", type=connection_list, default=[8, 64],
                        help="wrk keep-alive connections, a list (default 8,64)")
    parser.add_argument("--seq-seconds", type=float, default=3,
                        help="per sequential run, one connection (default 3)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds per server (default 2)")
    parser.add_argument("--rate", type=float, default=200,
                        help="open-loop offered load for accept -> publish (default 200 req/s)")
    parser.add_argument("--rate-seconds", type=float, default=5,
                        help="open-loop duration per run (default 5)")
    parser.add_argument("--rate-connections", type=int, default=64,
                        help="open-loop keep-alive connections (default 64)")
    parser.add_argument("--nodes", type=int, default=1000,
                        help="nodes the open-loop sends are spread over (default 1000); a "
                             "one-node run follows")
    parser.add_argument("--workers", type=workers_arg, default="1",
                        help="gateway processes: N or auto, passed as `kosmo gateway "
                             "--workers` (default 1)")
    parser.add_argument("--users", type=users_arg, default=1,
                        help="sends go out as this many users in turn, each of the demo "
                             "Sanctuary plan (default 1: the demo user alone)")
    parser.add_argument("--pg-url", default=os.environ.get(
        "KOSMO_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (a role that may CREATE DATABASE) [env KOSMO_BENCH_PG_URL]")
    parser.add_argument("--mqtt-url", default=os.environ.get(
        "KOSMO_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883"),
        help="MQTT broker [env KOSMO_BENCH_MQTT_URL]")
    parser.add_argument("--gateway-cmd", default=f"{BIN / 'kosmo'} gateway",
                        help="command that serves the gateway, configured by the KOSMO_* "
                             "environment (default: this venv's `kosmo gateway`)")
    parser.add_argument("--baseline-cmd", default=None,
                        help="a second gateway measured in the same rounds (before/after), "
                             "e.g. '/work/main/.venv/bin/kosmo gateway'")
    parser.add_argument("--profile", metavar="DIR",
                        help="after the rounds, record one more run of each server with "
                             "py-spy --gil (collapsed stacks) into DIR and summarize them")
    args = parser.parse_args()
    if (args.rounds < 1 or args.seconds < 2 or args.seq_seconds < 1 or args.rate <= 0
            or args.nodes < 1):
        parser.error("need --rounds >= 1, --seconds >= 2, --seq-seconds >= 1, --rate > 0, "
                     "--nodes >= 1")
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    if args.profile and not (shutil.which("py-spy") or (BIN / "py-spy").exists()):
        parser.error("--profile needs py-spy (pip install py-spy)")

    run_main(lambda: run(args), "servers stopped, databases dropped")


if __name__ == "__main__":
    main()


__all__ = ["Latency", "server"]
