"""Inbound benchmark: replies and delivery reports from the mesh, MQTT -> database -> websocket.

What it does, in one run (see bench/README.md for how to read the figures):
1. Creates a fresh database ``bench_<tag>`` (``kosmo migrate``/``seed``), adds ``--users``
   synthetic users (Sanctuary plan), each with a node of its own and outbound messages to it,
   so that every reply from that node is threaded to that user ("most recent sender" rule) and
   every delivery report names an existing message. Starts an MQTT broker of its own with the
   settings ``kosmo up`` uses (or uses ``--mqtt-url``) and the gateway (``kosmo gateway``,
   header auth, a private topic root and client id), one process each.
2. Publisher processes (``bench/mesh_publisher.py``, paho, QoS 1) offer load open loop: item i
   of a step is due at t0 + i/rate whatever happened before. First their own ceiling (to a
   topic nobody reads), then, for each number of websocket clients in ``--clients`` (client
   processes ``bench/stream_clients.py``, up to ``--per-process`` streams each, one user per
   stream), a ladder of reply rates (``--rates``) and of delivery-report rates
   (``--status-rates``), ``--seconds`` each, upward until a step is not sustained. The client
   configurations alternate, round after round, so slow drifts of a shared machine hit them
   alike. A backlog that stops draining (the gateway stalls) gets the gateway restarted with
   a fresh MQTT session, so that the remaining steps can run; what was lost is counted.
3. A thread of this process polls the database every ``--poll-ms``: when each reply (by its
   packet id) and each status change became visible. Per step: the persisted rate, how long
   the backlog took to drain, latency from the scheduled publish to visible in the database
   and to received on a websocket (p50/p99), and the CPU of every process involved.
   Gateway RSS is read before and after the clients connect: memory per client.
4. Prints a table per step and medians over rounds, then stops every process, drops the
   database and removes the gateway's MQTT session.

Everything is bounded: each step runs a fixed time, every wait has a timeout, every loop a
deadline, and Ctrl-C or SIGTERM stop the processes and drop the database too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import trio
from common import (  # bench/ is on sys.path when run as a script
    BenchError,
    log_dir,
    log_problems,
    percentile,
    run_main,
    say,
    sigterm_interrupts,
    source_version,
)
from proc_stats import machine_cpu, process_cpu, rss_kib
from servers import (
    BIN,
    bench_database,
    forget_mqtt_session,
    free_port,
    gateway_env,
    wait_ready,
)

HERE = Path(__file__).resolve().parent
USER_TEMPLATE = "b0b0b0b0-0000-4000-8000-{:012x}"  # synthetic user u
NODE_TEMPLATE = "!b{:07x}"  # the node of user u: its replies are threaded to u
MESSAGE_PREFIX = "0b0b0b0b-0000-4000-8000-"
MESSAGE_TEMPLATE = MESSAGE_PREFIX + "{:012x}"  # outbound message m, of user m % users
PROFILE_RATE_HZ = 200  # py-spy samples per second
RATE_TARGET = 2000.0  # replies/s persisted, sustained
P99_TARGET_MS = 50.0  # publish -> websocket p99 at RATE_TARGET
CLIENTS_TARGET = 1000
CLIENTS_P99_TARGET_MS = 100.0  # with CLIENTS_TARGET streams connected, at RATE_TARGET
SUSTAINED = 0.95  # a step is sustained when this share of the offered rate is persisted ...
CATCH_UP_S = 1.0  # ... and the backlog is gone this soon after the step


# --- database set-up ------------------------------------------------------------------------


def populate(db_url: str, users: int, messages: int) -> None:
    """Synthetic users and their outbound messages (status ``queued``), one transaction."""
    def user(n: str) -> str:
        return f"('{USER_TEMPLATE[:-8]}' || lpad(to_hex({n}), 12, '0'))::uuid"

    def node(n: str) -> str:
        return f"('{NODE_TEMPLATE[:2]}' || lpad(to_hex({n}), 7, '0'))"

    owner = "mod(m, %(users)s)"
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        conn.execute(f"""
            INSERT INTO users (id, email, display_name)
            SELECT {user('u')}, 'bench' || u || '@example.org', 'Bench ' || u
            FROM generate_series(0, %(users)s - 1) AS u""", {"users": users})
        conn.execute(f"""
            INSERT INTO subscriptions (id, user_id, plan_code, status, current_period_start,
                                       current_period_end)
            SELECT gen_random_uuid(), {user('u')}, 'sanctuary', 'active',
                   date_trunc('month', now()), date_trunc('month', now()) + interval '1 month'
            FROM generate_series(0, %(users)s - 1) AS u""", {"users": users})
        conn.execute(f"""
            INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at,
                                  updated_at, expires_at)
            SELECT ('{MESSAGE_PREFIX}' || lpad(to_hex(m), 12, '0'))::uuid, 'outbound',
                   {user(owner)}, {node(owner)}, 'bench outbound ' || m, 'queued',
                   now() - interval '1 hour' + m * interval '1 microsecond',
                   now() - interval '1 hour' + m * interval '1 microsecond',
                   now() + interval '1 day'
            FROM generate_series(0, %(messages)s - 1) AS m""",
                     {"users": users, "messages": messages})
    with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("VACUUM ANALYZE messages")


@contextlib.contextmanager
def mqtt_broker(url: str | None, folder: Path) -> Iterator[tuple[str, int | None]]:
    """``url`` as given, or a private mosquitto configured as ``kosmo up`` does; (url, pid)."""
    if url is not None:
        yield url, None
        return
    from kosmo.embedded import start_broker

    broker = start_broker(folder, implementation="mosquitto")
    try:
        process = getattr(broker, "_process", None)
        yield broker.url, process.pid if process is not None else None
    finally:
        broker.stop()


class GatewayProcess:
    """The gateway, one process in its own session (a Ctrl-C reaches only the bench)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, url: str,
                 mqtt_url: str, client_id: str) -> None:
        self.cmd, self.env, self.log, self.url = cmd, env, log, url
        self.mqtt_url, self.client_id = mqtt_url, client_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_ready("gateway", self.proc, self.url + "/readyz", self.log, any_answer=False)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # a graceful stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print("gateway did not stop within 10 s; killing it", file=sys.stderr)
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop, drop the MQTT session and what the broker queued for it, start again."""
        self.stop()
        forget_mqtt_session(self.mqtt_url, self.client_id)
        self.restarts += 1
        self.start()


# --- the database poller (a thread) ---------------------------------------------------------


_VISIBLE = """
    SELECT h.id, m.direction, h.status, m.packet_id, m.id::text,
           extract(epoch FROM m.created_at)::float8, m.user_id IS NOT NULL
    FROM message_status_history h JOIN messages m ON m.id = h.message_id
    WHERE h.id > %s AND NOT h.note ORDER BY h.id LIMIT 20000"""


class Poller:
    """When did each reply and each status change become visible in the database?

    History ids follow commit order (writers hold an advisory lock until they commit), so
    ``id > last`` misses nothing. A row first seen by a query was committed before that query
    started: ``seen`` is the start of the first query that returned it, at most one interval
    after the commit (plus the query's own time)."""

    def __init__(self, db_url: str, interval: float) -> None:
        self._conn = psycopg.connect(db_url, autocommit=True, connect_timeout=5,
                                     prepare_threshold=None)
        # The tables grow faster than their statistics: with stale ones the planner picks a
        # hash join over all messages (hundreds of ms per poll). Index lookups, always.
        for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
            self._conn.execute(f"SET {setting} = off")
        self._conn.execute("SET max_parallel_workers_per_gather = 0")
        self._interval = interval
        self._last = 0
        self.replies: dict[int, tuple[float, float, bool]] = {}  # seq -> (seen, created, owned)
        self.changes: dict[tuple[int, str], float] = {}  # (message, status) -> seen
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.durations: list[float] = []  # of each poll, s: the granularity actually had

    def run(self, deadline: float) -> None:
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                rows = self._conn.execute(_VISIBLE, (self._last,)).fetchall()
                self.durations.append(time.monotonic() - started)
                for hid, direction, status, packet_id, message_id, created, owned in rows:
                    if direction == "inbound":
                        self.replies.setdefault(packet_id, (started, created, owned))
                    elif message_id.startswith(MESSAGE_PREFIX):
                        number = int(message_id[len(MESSAGE_PREFIX):], 16)
                        self.changes.setdefault((number, status), started)
                    self._last = hid
                if len(rows) < 20000:
                    self.stop.wait(max(0.0, self._interval - (time.monotonic() - started)))
        except BaseException as exc:  # reported by the bench, which then stops
            self.error = exc
        finally:
            self._conn.close()


# --- helper processes -----------------------------------------------------------------------


class Helper:
    """A helper process (publisher or websocket clients) driven over its stdin and stdout."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self._buffer = bytearray()
        self.pid = process.pid

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def readline(self) -> str:
        assert self.process.stdout is not None
        while (end := self._buffer.find(b"\n")) < 0:
            data = await self.process.stdout.receive_some(1 << 20)
            if not data:
                raise BenchError(f"{self.name} exited early (status {self.process.poll()})")
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line.decode()

    async def read_until_end(self) -> list[str]:
        """Lines up to ``end`` (excluded); one bulk read, not line by line."""
        assert self.process.stdout is not None
        start = 0
        while (end := self._buffer.find(b"\nend\n", start)) < 0 and not self._buffer.startswith(
                b"end\n"):
            start = max(0, len(self._buffer) - 4)
            data = await self.process.stdout.receive_some(1 << 20)
            if not data:
                raise BenchError(f"{self.name} exited early (status {self.process.poll()})")
            self._buffer += data
        if end < 0:  # nothing before ``end``
            del self._buffer[:4]
            return []
        lines = bytes(self._buffer[:end]).decode().split("\n")
        del self._buffer[:end + 5]
        return lines

    async def stop(self) -> None:
        """Close stdin (the helper's signal to finish), then wait 15 s at most, then kill."""
        with trio.CancelScope(shield=True):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                if self.process.stdin is not None:
                    await self.process.stdin.aclose()
            with trio.move_on_after(15):
                await self.process.wait()
            if self.process.poll() is None:
                say(f"{self.name} did not stop within 15 s; killing it")
                self.process.kill()
                with trio.move_on_after(5):
                    await self.process.wait()


async def start_helper(name: str, cmd: list[str], ready: str, within: float) -> Helper:
    process = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, start_new_session=True)
    helper = Helper(name, process)
    try:
        with trio.fail_after(within):
            line = await helper.readline()
        if not line.startswith(ready):
            raise BenchError(f"{name} said {line!r} instead of {ready!r}")
    except BaseException:
        await helper.stop()
        raise
    return helper


# --- CPU and memory -------------------------------------------------------------------------


@dataclass
class Meter:
    """CPU used between ``start`` and ``stop``, in % of one core, per role."""

    gateway: int
    broker: int | None
    backends: list[int] = field(default_factory=list)
    publishers: list[int] = field(default_factory=list)
    clients: list[int] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        return {"gateway": process_cpu(self.gateway),
                "main": process_cpu(self.gateway, self.gateway),  # its Trio thread
                "postgres": sum(process_cpu(p) for p in self.backends),
                "publishers": sum(process_cpu(p) for p in self.publishers),
                "clients": sum(process_cpu(p) for p in self.clients),
                "broker": process_cpu(self.broker) if self.broker else math.nan,
                "machine": machine_cpu(), "wall": time.monotonic()}

    def start(self) -> None:
        self.marks = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        wall = now["wall"] - self.marks["wall"]
        return {k: 100 * (now[k] - self.marks[k]) / wall for k in now if k != "wall"}


# --- one step -------------------------------------------------------------------------------


@dataclass
class Step:
    round: int
    clients: int
    kind: str  # inbound | status | void
    rate: float
    seconds: float
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
        """Gateway CPU per persisted item, ms."""
        return 10 * self.cpu.get("gateway", math.nan) / self.window_rate if self.window_rate \
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


class Bench:
    def __init__(self, args: argparse.Namespace, gateway: GatewayProcess,
                 broker_pid: int | None, db_url: str, poller: Poller) -> None:
        self.args = args
        self.db_url = db_url
        self.poller = poller
        self.gateway = gateway
        self.meter = Meter(gateway.pid, broker_pid)
        self.publishers: list[Helper] = []
        self.clients: list[Helper] = []
        self.next_seq = 1  # packet ids of replies
        self.next_report = 0  # report i is on message i // 2
        self.results = Results()

    async def backends(self) -> list[int]:
        def query() -> list[int]:
            with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5) as conn:
                return [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'kosmo'").fetchall()]
        return await trio.to_thread.run_sync(query)

    async def step(self, kind: str, rate: float, seconds: float, *, round_: int = 0,
                   clients: int = 0) -> Step:
        a = self.args
        total = int(rate * seconds)
        if kind == "status":
            first, self.next_report = self.next_report, self.next_report + total + total % 2
        elif kind == "inbound":
            first, self.next_seq = self.next_seq, self.next_seq + total
        else:
            first = 0
        step = Step(round_, clients, kind, rate, seconds)
        self.meter.backends = await self.backends()
        t0 = time.monotonic() + 0.3
        command = json.dumps({"kind": kind, "rate": rate, "seconds": seconds, "t0": t0,
                              "first": first})
        for pub in self.publishers:
            await pub.send(command)
        await trio.sleep(max(0.0, t0 - time.monotonic()))
        self.meter.start()
        await trio.sleep(seconds)
        step.cpu = self.meter.stop()
        with trio.fail_after(seconds + 30):
            answers = [json.loads(await pub.readline()) for pub in self.publishers]
        step.published = sum(x["published"] for x in answers)
        step.acked = sum(x["acked"] for x in answers)
        step.pub_lag_p99 = max(x["lag_p99_ms"] for x in answers)
        step.pub_cpu_s = sum(x["cpu_s"] for x in answers)
        if kind == "void":  # the publishers' own ceiling: what they got acked, per second
            span = max(x["last_at"] for x in answers) - min(x["first_at"] for x in answers)
            step.window_rate = step.acked / max(span, 1e-3)
            step.persisted, step.drain_s = step.acked, 0.0
            return step

        def sched(i: int) -> float:
            return t0 + i / rate

        end = t0 + seconds
        if kind == "inbound":
            keys: list[Any] = list(range(first, first + total))
            index = {k: k - first for k in keys}
            seen_map: dict[Any, Any] = self.poller.replies
        else:
            keys = [(first // 2 + i // 2, "delivered" if i % 2 else "transmitted")
                    for i in range(total)]
            index = {k: i for i, k in enumerate(keys)}
            seen_map = self.poller.changes
        deadline = time.monotonic() + a.drain_timeout
        progress, count = time.monotonic(), -1
        while time.monotonic() < deadline:
            if self.poller.error is not None:
                raise BenchError(f"database poller failed: {self.poller.error!r}")
            now, done = time.monotonic(), sum(1 for k in keys if k in seen_map)
            if done >= step.acked:
                step.drain_s = max(0.0, now - end)
                break
            if done != count:
                progress, count = now, done
            elif now - progress > a.stall_seconds:
                step.stalled = True
                break
            await trio.sleep(0.05)
        await trio.sleep(0.5)  # events reach the streams right after the commit

        seen = {k: seen_map[k] for k in keys if k in seen_map}
        step.persisted = len(seen)
        warm = min(1.0, seconds / 4)

        def at(value: Any) -> float:
            return float(value[0] if isinstance(value, tuple) else value)

        step.window_rate = sum(1 for v in seen.values() if t0 + warm <= at(v) <= end) / (
            seconds - warm)
        db = [1000 * (at(v) - sched(index[k])) for k, v in seen.items()]
        step.db_p50, step.db_p99 = percentile(db, 50), percentile(db, 99)
        if kind == "inbound":
            offset = time.time() - time.monotonic()  # created_at is wall-clock time
            pickup = [1000 * (v[1] - offset - sched(index[k])) for k, v in seen.items()]
            step.pickup_p50 = percentile(pickup, 50)
            step.unowned = sum(1 for v in seen.values() if not v[2])

        # websocket side: which persisted items had a stream, which arrived, when
        received: dict[Any, float] = {}
        with trio.fail_after(60):
            for helper in self.clients:
                await helper.send("dump")
                for line in await helper.read_until_end():
                    part = line.split()
                    if part[0] == "i" and kind == "inbound":
                        received.setdefault(int(part[1]), float(part[2]))
                    elif part[0] == "s" and kind == "status":
                        received.setdefault((int(part[1]), part[2]), float(part[3]))
                    elif part[0] == "c":
                        step.closed[int(part[1])] += int(part[2])

        def user(k: Any) -> int:
            return int(k if kind == "inbound" else k[0]) % int(a.users)

        expected = [k for k in seen if user(k) < clients]
        step.ws_expected = len(expected)
        ws = [1000 * (received[k] - sched(index[k])) for k in expected if k in received]
        step.ws_received = len(ws)
        step.ws_p50, step.ws_p99 = percentile(ws, 50), percentile(ws, 99)
        step.ws_max = max(ws, default=math.nan)
        return step

    async def connect_clients(self, count: int, round_: int) -> Connected:
        a = self.args
        await trio.sleep(1)
        before = rss_kib(self.gateway.pid)
        started = time.monotonic()
        per = a.per_process
        for n, low in enumerate(range(0, count, per)):
            users = ",".join(USER_TEMPLATE.format(u) for u in range(low, min(count, low + per)))
            cmd = [sys.executable, str(HERE / "stream_clients.py"), "--url", a.gateway_url,
                   "--users", users, "--message-prefix", MESSAGE_PREFIX,
                   "--max-seconds", str(a.max_seconds)]
            process = await trio.lowlevel.open_process(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            self.clients.append(Helper(f"stream clients {n}", process))
        connected = failed = 0
        for helper in self.clients:
            with trio.fail_after(120):
                line = (await helper.readline()).split()
            if line[0] != "ready":
                raise BenchError(f"{helper.name} said {line!r}")
            connected, failed = connected + int(line[1]), failed + int(line[2])
        seconds = time.monotonic() - started
        self.meter.clients = [h.pid for h in self.clients]
        await trio.sleep(2)
        return Connected(round_, connected, failed, seconds, before, rss_kib(self.gateway.pid))

    async def disconnect_clients(self) -> None:
        clients, self.clients = self.clients, []
        self.meter.clients = []
        async with trio.open_nursery() as nursery:
            for helper in clients:
                nursery.start_soon(helper.stop)

    async def ladder(self, round_: int, clients: int) -> None:
        """Each kind's rates upward, up to the first step not sustained (that one included:
        its persisted rate is what the gateway managed under overload)."""
        a = self.args
        for kind, rates in (("inbound", a.rates), ("status", a.status_rates)):
            for rate in rates:
                say(f"round {round_}, {clients} streams: {kind} at {rate:g}/s for "
                    f"{a.seconds:g} s")
                step = await self.step(kind, rate, a.seconds, round_=round_, clients=clients)
                self.results.steps.append(step)
                drain = ("stalled" if step.stalled else "timeout" if step.drain_s is None
                         else f"{step.drain_s:.1f} s")
                say(f"  persisted {step.window_rate:.0f}/s, drain {drain}, "
                    f"db p99 {step.db_p99:.0f} ms, ws p99 {step.ws_p99:.0f} ms "
                    f"({step.ws_received}/{step.ws_expected}), gateway "
                    f"{step.cpu['gateway']:.0f}%, machine {step.cpu['machine']:.0f}%")
                if step.drain_s is None:
                    await self.recover(clients, step)
                if not step.sustained:
                    say(f"  not sustained: the higher {kind} rates are skipped this round")
                    break

    async def recover(self, clients: int, step: Step) -> None:
        """A backlog that does not drain: restart the gateway with a fresh MQTT session (what
        the broker still queued for it is dropped, and counted as lost), reconnect streams."""
        say(f"  {step.acked - step.persisted} acknowledged messages not stored after "
            f"{'a stall' if step.stalled else 'the drain timeout'}: restarting the gateway "
            "with a fresh MQTT session")
        await self.disconnect_clients()
        await trio.to_thread.run_sync(self.gateway.restart)
        self.meter.gateway = self.gateway.pid
        self.results.restarts.append(f"round {step.round}, {step.clients} streams, "
                                     f"{step.kind} at {step.rate:g}/s")
        if clients:
            await self.connect_clients(clients, step.round)

    async def profile(self, clients: int) -> str:
        """Two more reply steps (not in the figures) under py-spy: ``--gil`` (whose Python
        code holds the interpreter: CPU) and ``--idle`` (where every thread spends its wall
        time, waiting included: latency)."""
        a = self.args
        spy = shutil.which("py-spy") or str(BIN / "py-spy")
        parts = []
        for mode, flag in (("gil", "--gil"), ("wall", "--idle")):
            out = Path(a.profile) / f"gateway-inbound-{mode}.txt"
            say(f"profile ({mode}): one more reply step at {a.profile_rate:g}/s with {clients} "
                f"streams under py-spy -> {out}")
            cmd = [spy, "record", "--pid", str(self.gateway.pid), "--duration",
                   str(round(a.seconds)), "--rate", str(PROFILE_RATE_HZ), "--format", "raw",
                   "--threads", flag, "--nonblocking", "--output", str(out)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(trio.run_process, cmd, capture_stdout=True,
                                           capture_stderr=True, check=False))
                await trio.sleep(0.5)  # py-spy attaches
                step = await self.step("inbound", a.profile_rate, a.seconds, clients=clients)
            if step.drain_s is None:
                await self.recover(clients, step)
            parts.append(f"{mode}: {step.window_rate:.0f} replies/s persisted under the profiler, "
                         f"gateway {step.cpu['gateway']:.0f}% of a core ({step.cpu_ms:.3f} ms "
                         f"per reply), db p50 {step.db_p50:.0f} ms\n"
                         + (summarize_profile(out, step.cpu_ms) if mode == "gil"
                            else summarize_wall(out)))
        return "\n".join(parts)

    async def run(self) -> Results:
        """The whole measurement; SIGTERM stops it as Ctrl-C does, through Trio."""
        async with sigterm_interrupts():
            await self.measure()
        return self.results

    async def measure(self) -> None:
        a = self.args
        n = a.publishers
        for index in range(n):
            cmd = [sys.executable, str(HERE / "mesh_publisher.py"), "--mqtt-url", a.mqtt_url,
                   "--topic-root", a.topic_root, "--procs", str(n), "--index", str(index),
                   "--users", str(a.users), "--node-template", NODE_TEMPLATE,
                   "--message-template", MESSAGE_TEMPLATE, "--max-seconds", str(a.max_seconds)]
            self.publishers.append(await start_helper(f"publisher {index}", cmd, "connected", 15))
        self.meter.publishers = [p.pid for p in self.publishers]
        try:
            say(f"publishers' ceiling: {a.ceiling_rate:g}/s offered for 3 s to a topic "
                f"nobody reads")
            self.results.ceiling = await self.step("void", a.ceiling_rate, 3)
            say(f"  {self.results.ceiling.window_rate:.0f}/s acknowledged by the broker")
            say(f"warm-up: replies at {a.rates[0]:g}/s for {a.warmup:g} s, no streams")
            await self.step("inbound", a.rates[0], a.warmup)
            for round_ in range(1, a.rounds + 1):
                for clients in a.clients:
                    say(f"round {round_}: connecting {clients} streams")
                    conn = await self.connect_clients(clients, round_)
                    self.results.connected.append(conn)
                    say(f"  {conn.clients} connected ({conn.failed} failed) in "
                        f"{conn.seconds:.1f} s; gateway RSS {conn.rss_before / 1024:.0f} -> "
                        f"{conn.rss_connected / 1024:.0f} MiB")
                    restarts = self.gateway.restarts
                    try:
                        await self.ladder(round_, clients)
                        conn.rss_loaded = rss_kib(self.gateway.pid)
                        if (a.profile and round_ == a.rounds and clients == max(a.clients)):
                            self.results.profile = await self.profile(clients)
                    finally:
                        await self.disconnect_clients()
                    await trio.sleep(2)
                    conn.rss_after = rss_kib(self.gateway.pid)
                    conn.restarted = self.gateway.restarts != restarts
        finally:
            async with trio.open_nursery() as nursery:
                for helper in self.publishers + self.clients:
                    nursery.start_soon(helper.stop)


# --- profile --------------------------------------------------------------------------------

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


# --- report ---------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


HEAD = (f"{'round':<6}{'streams':>8} {'kind':<8}{'offered':>8}{'pub/s':>7}{'persist/s':>10}"
        f"{'drain s':>9}{'db p50':>7}{'db p99':>7}{'ws p50':>7}{'ws p99':>7}{'ws max':>7}"
        f"{'pickup':>7}{'lost':>6}{'ws miss':>8}{'lag99':>6}"
        f"{'gw':>5}{'main':>5}{'pg':>5}{'pub':>5}{'ws':>5}{'mqtt':>5}{'all':>5}{'ms/it':>6}")


def row(label: str, s: Step) -> str:
    c = s.cpu
    if s.undrained:
        drain = f"{s.undrained}x " + ("stall" if s.stalled else "t/o")
    else:
        drain = "stall" if s.stalled else "t/o" if s.drain_s is None else fmt(s.drain_s, 1)
    miss = s.ws_expected - s.ws_received
    return (f"{label:<6}{s.clients:>8} {s.kind:<8}{s.rate:>8.0f}{s.published / s.seconds:>7.0f}"
            f"{fmt(s.window_rate):>10}{drain:>9}{fmt(s.db_p50):>7}{fmt(s.db_p99):>7}"
            f"{fmt(s.ws_p50):>7}{fmt(s.ws_p99):>7}{fmt(s.ws_max):>7}{fmt(s.pickup_p50):>7}"
            f"{s.lost:>6}{miss:>8}{fmt(s.pub_lag_p99):>6}"
            f"{fmt(c['gateway']):>5}{fmt(c['main']):>5}{fmt(c['postgres']):>5}"
            f"{fmt(c['publishers']):>5}{fmt(c['clients']):>5}{fmt(c['broker']):>5}"
            f"{fmt(c['machine']):>5}{fmt(s.cpu_ms, 2):>6}")


def median_step(steps: list[Step]) -> Step:
    med = statistics.median
    m = Step(0, steps[0].clients, steps[0].kind, steps[0].rate, steps[0].seconds)
    m.published = round(med(s.published for s in steps))
    m.acked = round(med(s.acked for s in steps))
    m.persisted = round(med(s.persisted for s in steps))
    m.stalled = any(s.stalled for s in steps)
    drains = [s.drain_s for s in steps if s.drain_s is not None]
    m.drain_s = med(drains) if len(drains) == len(steps) else None
    m.undrained = len(steps) - len(drains)
    for name in ("window_rate", "db_p50", "db_p99", "ws_p50", "ws_p99", "ws_max", "pickup_p50",
                 "pub_lag_p99"):
        values = [getattr(s, name) for s in steps if not math.isnan(getattr(s, name))]
        setattr(m, name, med(values) if values else math.nan)
    m.ws_expected = sum(s.ws_expected for s in steps)
    m.ws_received = sum(s.ws_received for s in steps)
    m.cpu = {k: med(s.cpu[k] for s in steps) for k in steps[0].cpu}
    return m


def report(args: argparse.Namespace, results: Results) -> str:
    out: list[str] = []
    w = out.append
    w(f"KosmoConnect inbound benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
      f"Python {sys.version.split()[0]}, code {args.code}")
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
    w("streams connected (gateway RSS, MiB; KiB per stream):")
    w(f"{'round':<6}{'streams':>8}{'failed':>7}{'connect s':>10}{'before':>8}{'connected':>10}"
      f"{'loaded':>10}{'after':>7}{'KiB/stream':>11}{'loaded':>8}")
    for k in results.connected:
        per = (k.rss_connected - k.rss_before) / max(k.clients, 1)
        later = ("restarted", "", "") if k.restarted else (
            f"{k.rss_loaded / 1024:.0f}", f"{k.rss_after / 1024:.0f}",
            f"{(k.rss_loaded - k.rss_before) / max(k.clients, 1):.1f}")
        w(f"{k.round:<6}{k.clients:>8}{k.failed:>7}{k.seconds:>10.1f}{k.rss_before / 1024:>8.0f}"
          f"{k.rss_connected / 1024:>10.0f}{later[0]:>10}{later[1]:>7}{per:>11.1f}"
          f"{later[2]:>8}")
    w("")
    w("steps (latency in ms from the scheduled publish; CPU in % of one core):")
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
    groups: dict[tuple[int, str, float], list[Step]] = {}
    for s in results.steps:
        groups.setdefault((s.clients, s.kind, s.rate), []).append(s)
    medians = {key: median_step(steps) for key, steps in groups.items()}
    for key, m in medians.items():
        w(row(f"{len(groups[key])}/{args.rounds}", m))
    w("")
    w(verdict(results, medians, args.rounds))
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


def verdict(results: Results, medians: dict[tuple[int, str, float], Step],
            rounds: int) -> str:
    lines = []

    def ran(clients: int) -> int:
        return sum(1 for x in results.steps
                   if (x.clients, x.kind, x.rate) == (clients, "inbound", RATE_TARGET))

    def held(clients: int, kind: str, rate: float) -> bool:
        """Run in every round, sustained in every round."""
        runs = [x for x in results.steps if (x.clients, x.kind, x.rate) == (clients, kind, rate)]
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


# --- main -----------------------------------------------------------------------------------


def rates(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive rates")
    return values


def counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of stream counts")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Replies and delivery reports from the mesh: MQTT -> database -> websocket.")
    parser.add_argument("--rates", type=rates, default=rates("500,1000,1500,2000,3000,4000"),
                        help="reply rates offered, msg/s, upward until one is not sustained "
                             "(default 500,1000,1500,2000,3000,4000)")
    parser.add_argument("--status-rates", type=rates, default=rates("500,1000,2000,3000"),
                        help="delivery-report rates offered, msg/s, likewise "
                             "(default 500,1000,2000,3000)")
    parser.add_argument("--clients", type=counts, default=counts("100,1000"),
                        help="websocket streams connected, one configuration per entry, "
                             "alternating (default 100,1000)")
    parser.add_argument("--users", type=int, default=None,
                        help="synthetic users, one node each (default: the largest --clients)")
    parser.add_argument("--per-process", type=int, default=500,
                        help="streams per client process (default 500)")
    parser.add_argument("--publishers", type=int, default=2,
                        help="publisher processes (default 2)")
    parser.add_argument("--seconds", type=float, default=6, help="per step (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds, not counted")
    parser.add_argument("--poll-ms", type=float, default=10,
                        help="database poll interval, ms (default 10)")
    parser.add_argument("--drain-timeout", type=float, default=30,
                        help="longest wait for a step's backlog, s (default 30)")
    parser.add_argument("--stall-seconds", type=float, default=10,
                        help="a backlog with no progress this long is a stall: the gateway is "
                             "restarted with a fresh MQTT session (default 10)")
    parser.add_argument("--ceiling-rate", type=float, default=30000,
                        help="offered rate of the publishers' ceiling step (default 30000)")
    parser.add_argument("--pg-url", default=os.environ.get(
        "KOSMO_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (a role that may CREATE DATABASE) [env KOSMO_BENCH_PG_URL]")
    parser.add_argument("--mqtt-url", default=os.environ.get("KOSMO_BENCH_MQTT_URL"),
                        help="use this broker [env KOSMO_BENCH_MQTT_URL]; default: start a "
                             "private mosquitto configured as `kosmo up` does")
    parser.add_argument("--gateway-cmd", default=f"{BIN / 'kosmo'} gateway",
                        help="command that serves the gateway (default: this venv's "
                             "`kosmo gateway`)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the gateway's and the broker's logs (named at the end)")
    parser.add_argument("--profile", metavar="DIR",
                        help="after the last round, one more reply step with the most streams "
                             "under py-spy --gil, into DIR, summarized")
    parser.add_argument("--profile-rate", type=float, default=1000,
                        help="offered rate of the profiled step (default 1000)")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds < 2 or args.publishers < 1 or args.per_process < 1:
        parser.error("need --rounds >= 1, --seconds >= 2, --publishers >= 1, --per-process >= 1")
    args.users = args.users or max(max(args.clients), 1)
    if args.users < max(args.clients):
        parser.error("--users must be at least the largest --clients (one user per stream)")
    if args.profile:
        if not (shutil.which("py-spy") or (BIN / "py-spy").exists()):
            parser.error("--profile needs py-spy (pip install py-spy)")
        args.profile = str(Path(args.profile).resolve())
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if args.mqtt_url is None and shutil.which("mosquitto") is None:
        parser.error("mosquitto is not installed: give --mqtt-url")
    # A run's whole length, bounded: each helper exits by itself after this.
    steps = len(args.rates) + len(args.status_rates)
    args.max_seconds = 600 + args.rounds * len(args.clients) * steps * (
        args.seconds + args.drain_timeout + 70)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    run_main(lambda: run(args), "processes stopped, database dropped")


def run(args: argparse.Namespace) -> str:
    args.code = source_version()
    tag = secrets.token_hex(4)
    topic_root, client_id = f"bench{tag}", f"bench-gw-{tag}"
    args.topic_root = topic_root
    with log_dir("kosmo_bench_inbound_", keep=args.keep_logs) as logs, \
            contextlib.ExitStack() as stack:
        say(f"database bench_{tag}, topic root {topic_root}, logs in {logs}")
        mqtt_url, broker_pid = stack.enter_context(mqtt_broker(args.mqtt_url, logs / "mqtt"))
        args.mqtt_url = mqtt_url
        args.broker_label = (f"private mosquitto as `kosmo up` ({mqtt_url}, "
                             "max_inflight_messages 100, max_queued_messages 100000)"
                             if broker_pid else mqtt_url)
        db_url = stack.enter_context(bench_database(args.pg_url, f"bench_{tag}"))
        env = gateway_env(db_url, mqtt_url, topic_root, client_id)
        status_items = sum(int(r * args.seconds) + 1 for r in args.status_rates)
        messages = max(args.users, (args.rounds * len(args.clients) * status_items
                                    + (int(args.profile_rate * args.seconds) if args.profile
                                       else 0)) // 2 + 16)
        say(f"adding {args.users} users and {messages} outbound messages")
        populate(db_url, args.users, messages)
        port = free_port()
        args.gateway_url = f"http://127.0.0.1:{port}"
        env["KOSMO_HTTP_BIND"] = f"127.0.0.1:{port}"
        stack.callback(forget_mqtt_session, mqtt_url, client_id)
        gateway = GatewayProcess(shlex.split(args.gateway_cmd), env, logs / "gateway.log",
                                 args.gateway_url, mqtt_url, client_id)
        stack.callback(gateway.stop)
        gateway.start()
        poller = Poller(db_url, args.poll_ms / 1000)
        thread = threading.Thread(target=poller.run, args=(
            time.monotonic() + args.max_seconds,), name="db-poller", daemon=True)
        thread.start()
        try:
            results = trio.run(Bench(args, gateway, broker_pid, db_url, poller).run)
        finally:
            poller.stop.set()
            thread.join(timeout=10)
        took = [1000 * d for d in poller.durations]
        results.poll_ms = (percentile(took, 50), percentile(took, 99), max(took, default=0))
        with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
            row_ = conn.execute("""
                SELECT count(*) FILTER (WHERE direction = 'inbound'),
                       count(*) FILTER (WHERE direction = 'inbound' AND user_id IS NULL),
                       count(*) FILTER (WHERE status = 'delivered'),
                       (SELECT count(*) FROM dead_letters)
                FROM messages""").fetchone()
            assert row_ is not None
            results.totals = dict(zip(("replies stored", "replies unthreaded",
                                       "messages delivered", "dead letters"), row_,
                                      strict=True))
        results.log_problems = log_problems(logs / "gateway.log")
        return report(args, results)


if __name__ == "__main__":
    main()
