"""The chaos run: steady sends through the whole stack while its parts are killed and restarted.

What runs (all on 127.0.0.1, under one temporary directory, nothing of the machine's touched):
- an embedded PostgreSQL (kosmo.embedded), migrated and seeded, plus the run's own users;
- an MQTT broker process (mosquitto, persistent: sessions and queued messages survive a
  restart);
- ``kosmo gateway`` and ``kosmo bridge`` as child processes, as a process manager would run
  them (a killed one is started again, with the same settings and the same state);
- a simulated radio (bridge/sim) in this process, sped up by ``time_scale``, whose counters say
  which texts were handed to the air and how many times, and which were delivered.

Load: ``users`` users send at ``rate`` messages a second in all, each text unique, mostly to
nodes that answer, a few to a node nobody can reach (those fail and are refunded). One user
has a tight quota and runs into 429s. A client that gets no answer goes on with its next send.

Faults, in turn, each after ``quiet`` seconds of steady load: kill -9 the gateway and start it
again; stop and start the broker; stop and start PostgreSQL (``outage`` seconds down); kill -9
the bridge and start it again. Then the load stops and the stack settles.

Invariants (``ChaosResult.violations``):
- every message answered 201 exists, and every outbound message ends ``delivered``, ``failed``
  or ``expired`` (none stuck);
- no text was handed to the air twice (the radio's ``accepted_by_text``), and nothing went on
  air that the database does not hold;
- per user: quota used = their messages that reached the air (some node heard them, by the
  radio's ``heard_by_text``) = their messages still charged;
- no 5xx but 503 with ``Retry-After``, and those only while the database was down (from its
  stop until the gateway reported ready again).

Recovery is measured per fault, from the harness's own clock:
- *API back*: from the fault until the first 201 for a request sent after it started;
- *air back*: from the moment the part is back (process started again, service accepting)
  until the radio next takes a text sent since the fault began;
- *caught up*: from that moment until the radio takes the first text sent after it, which had
  to wait for the backlog of the fault to go out first.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from bridge.sim.config import SimConfig, make_nodes
from bridge.sim.protocol import node_id as node_text
from bridge.sim.radio import SimRadio
from bridge.sim.server import serve_radio
from kosmo import migrate
from kosmo.embedded import Broker, EmbeddedPostgres, free_port, start_broker, start_postgres

log = logging.getLogger(__name__)

FAULTS = ("gateway", "broker", "postgres", "bridge")
FINAL = {"delivered", "failed", "expired"}
REACHABLE_NODES = 3  # !a1b2c3d4 and two more answer; one more node is unreachable
UNREACHABLE_NUM = 0xDEAD0001
UNREACHABLE = node_text(UNREACHABLE_NUM)
REACHABLE = [node_text(node.num) for node in make_nodes(REACHABLE_NODES)]
TIGHT_QUOTA = 25


@dataclass(frozen=True)
class ChaosConfig:
    users: int = 5  # the last one has a tight quota
    rate: float = 4.0  # sends per second, all users together
    rounds: int = 1  # the four faults, this many times
    faults: tuple[str, ...] = FAULTS
    quiet: float = 12.0  # seconds of steady load before each fault (on average; +-25 %)
    outage: float = 4.0  # seconds a stopped broker or database stays down
    settle_timeout: float = 180.0
    time_scale: float = 30.0  # radio seconds per real second
    unreachable_share: float = 0.03
    seed: int = 1
    keep: bool = False  # keep the run's directory (logs) afterwards


@dataclass
class Fault:
    kind: str
    start: float  # the harness clock, seconds since the run started
    back: float = 0.0  # the part runs again
    ready: float = 0.0  # the gateway answers /readyz 200 again
    api_back: float | None = None
    air_back: float | None = None
    caught_up: float | None = None
    slowest: float = 0.0  # the slowest answer (or give-up) to a send made while it lasted


@dataclass
class Send:
    user: int
    text: str
    sent: float
    answered: float
    status: int | None  # None: no answer (connection refused or reset, timeout)
    message_id: str | None = None
    retry_after: str | None = None


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

    @property
    def accepted(self) -> int:
        return sum(1 for s in self.sends if s.status == 201)

    def statuses(self) -> Counter[str]:
        return Counter("no answer" if s.status is None else str(s.status) for s in self.sends)

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
        for part, lines in self.error_logs.items():
            if lines:
                out.append(f"{len(lines)} ERROR lines in the {part} log, first: {lines[0]}")
        if self.accepted == 0:
            out.append("no message was accepted at all")
        return out

    def table(self) -> str:
        statuses = self.statuses()
        rows = [
            ("faults injected", ", ".join(f.kind for f in self.faults)),
            ("sends", f"{len(self.sends)} ({_counts(statuses)})"),
            ("accepted (201)", str(self.accepted)),
            ("stored, client got no answer", str(self.unanswered_stored)),
            ("final states", _counts(self.final)),
            ("failure reasons", _counts(self.reasons) or "-"),
            ("lost", str(len(self.lost))),
            ("stuck (not final)", str(len(self.stuck))),
            ("on air twice", str(len(self.duplicates_on_air))),
            ("on air, unknown", str(len(self.unknown_on_air))),
            ("quota mismatches", f"{len(self.quota_mismatches())} of {len(self.quota)} users"),
            ("5xx other than 503 in an outage", str(len(self.bad_5xx))),
            ("ERROR log lines", ", ".join(f"{k}: {len(v)}" for k, v in self.error_logs.items())),
            ("run / settle", f"{self.duration:.0f} s / {self.settle:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += ["", "| fault | at (s) | down (s) | ready (s) | API back (s) | air back (s) "
                      "| caught up (s) | slowest answer (s) |", "|---|---|---|---|---|---|---|---|"]
        for f in self.faults:
            lines.append(f"| {f.kind} | {f.start:.1f} | {f.back - f.start:.1f} | "
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
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "sends": len(self.sends), "statuses": dict(self.statuses()),
            "accepted": self.accepted, "unanswered_stored": self.unanswered_stored,
            "final": dict(self.final), "reasons": dict(self.reasons),
            "lost": len(self.lost), "stuck": len(self.stuck),
            "duplicates_on_air": len(self.duplicates_on_air),
            "unknown_on_air": len(self.unknown_on_air),
            "quota_mismatches": len(self.quota_mismatches()), "quota": self.quota,
            "bad_5xx": self.bad_5xx, "error_logs": self.error_logs,
            "duration": self.duration, "settle": self.settle,
            "faults": [vars(f) for f in self.faults], "sim": self.sim,
            "slow_sends": [vars(s) for s in self.sends if s.answered - s.sent > 1.0],
            "violations": self.violations(),
        }


def bad_5xx(sends: list[Send], outages: list[list[float]]) -> list[str]:
    """Every 5xx but a 503 with Retry-After answered within a database outage (from the stop
    until the gateway was ready again, plus a second)."""
    out = []
    for send in sends:
        if send.status is None or send.status < 500:
            continue
        in_outage = any(a <= send.sent and send.answered <= b + 1.0 for a, b in outages)
        if send.status != 503 or not send.retry_after or not in_outage:
            out.append(f"{send.status} at {send.sent:.1f} s (Retry-After {send.retry_after}, "
                       f"in a database outage: {in_outage})")
    return out


def _error_lines(path: Path) -> list[str]:
    """ERROR and CRITICAL records and tracebacks in a part's log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines()
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items()))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}, {max(values):.2f}" if values else "-"


# --- the parts --------------------------------------------------------------------------------


class Child:
    """A ``kosmo`` subcommand as a child process, its output appended to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self._argv = argv
        self._env = env
        self._log_path = log_path
        self._process: trio.Process | None = None

    async def start(self) -> None:
        with self._log_path.open("ab") as out:
            self._process = await trio.lowlevel.open_process(
                self._argv, env=self._env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

    async def kill(self) -> None:
        """kill -9, and reap it."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        await self._process.wait()

    async def stop(self) -> int | None:
        """SIGTERM; kill it if it has not exited after 20 s. Returns the exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                return await process.wait()
            process.kill()
        return await process.wait()

    def check_running(self) -> None:
        if self._process is not None and self._process.returncode is not None:
            raise RuntimeError(f"{self.name} exited with {self._process.returncode}; see "
                               f"{self._log_path}")


@dataclass
class Stack:
    root: Path
    postgres: EmbeddedPostgres
    broker: Broker
    radio: SimRadio
    gateway: Child
    bridge: Child
    url: str
    users: list[uuid.UUID]


def _kosmo(*args: str) -> list[str]:
    return [sys.executable, "-m", "kosmo", *args]


def _add_users(database_url: str, count: int) -> list[uuid.UUID]:
    """``count`` users on the sanctuary plan (any node); the last one with a tight quota."""
    users = [uuid.uuid4() for _ in range(count)]
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        for i, user in enumerate(users):
            conn.execute("INSERT INTO users (id, email) VALUES (%s, %s)",
                         (user, f"chaos{i}@example.org"))
            conn.execute(
                "INSERT INTO subscriptions (id, user_id, plan_code, status, current_period_start,"
                " current_period_end, quota_override) VALUES (%s, %s, 'sanctuary', 'active',"
                " date_trunc('month', now()), date_trunc('month', now()) + interval '1 month',"
                " %s)", (uuid.uuid4(), user, TIGHT_QUOTA if i == count - 1 else 1_000_000))
    return users


@asynccontextmanager
async def running_stack(config: ChaosConfig, nursery: trio.Nursery) -> AsyncIterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="kosmo-chaos-"))
    postgres = await trio.to_thread.run_sync(start_postgres, root / "postgres")
    broker: Broker | None = None
    try:
        await trio.to_thread.run_sync(migrate.migrate, postgres.url)
        users = await trio.to_thread.run_sync(_add_users, postgres.url, config.users)
        broker = await trio.to_thread.run_sync(
            lambda: start_broker(root / "mqtt", implementation="mosquitto"))
        radio = SimRadio(SimConfig(
            nodes=make_nodes(REACHABLE_NODES, unreachable=[UNREACHABLE_NUM]), region="US",
            latency=2.0, seed=config.seed))
        radio_port = await nursery.start(
            lambda task_status: serve_radio(radio, 0, time_scale=config.time_scale,
                                            task_status=task_status))
        http_port = free_port()
        env = {**os.environ, "KOSMO_DATABASE_URL": postgres.url, "KOSMO_MQTT_URL": broker.url,
               "KOSMO_MQTT_TOPIC_ROOT": "kosmo", "KOSMO_LOG_LEVEL": "INFO"}
        for name in [k for k in env if k.startswith("KOSMO_TEST_")]:
            del env[name]
        gateway = Child("gateway", _kosmo("gateway"), {
            **env, "KOSMO_HTTP_BIND": f"127.0.0.1:{http_port}", "KOSMO_AUTH_MODE": "header",
            "KOSMO_MQTT_CLIENT_ID": "chaos-gateway", "KOSMO_OUTBOX_INTERVAL": "5s",
            "KOSMO_START_TIMEOUT": "60s"}, root / "gateway.log")
        bridge = Child("bridge", _kosmo("bridge"), {
            **env, "KOSMO_RADIO": f"tcp:127.0.0.1:{radio_port}",
            "KOSMO_BRIDGE_STATE_DIR": str(root / "bridge"),
            "KOSMO_BRIDGE_TIME_SCALE": str(config.time_scale), "KOSMO_BRIDGE_REGION": "US"},
            root / "bridge.log")
        stack = Stack(root, postgres, broker, radio, gateway, bridge,
                      f"http://127.0.0.1:{http_port}", users)
        await gateway.start()
        await bridge.start()
        try:
            yield stack
        finally:
            with trio.CancelScope(shield=True):
                await bridge.stop()
                await gateway.stop()
    finally:
        with trio.CancelScope(shield=True):
            if broker is not None:
                await trio.to_thread.run_sync(broker.stop)
            await trio.to_thread.run_sync(postgres.stop)
            if not config.keep:
                await trio.to_thread.run_sync(
                    lambda: shutil.rmtree(root, ignore_errors=True))


# --- the run ----------------------------------------------------------------------------------


class Run:
    def __init__(self, config: ChaosConfig, stack: Stack) -> None:
        self.config = config
        self.stack = stack
        self.result = ChaosResult(config)
        self.t0 = trio.current_time()
        self.on_air: dict[str, float] = {}  # text -> when the radio first took it
        self.db_down: list[list[float]] = []  # [stopped, gateway ready again]
        self.stop_load = trio.Event()
        self._rng = random.Random(config.seed)

    def now(self) -> float:
        return trio.current_time() - self.t0

    async def watch_air(self) -> None:
        """Note when the radio first takes each text (the radio runs in this process)."""
        while True:
            accepted = self.stack.radio.stats.accepted_by_text
            if len(accepted) != len(self.on_air):
                now = self.now()
                for text in accepted:
                    self.on_air.setdefault(text, now)
            await trio.sleep(0.02)

    async def load(self, client: httpx.AsyncClient, index: int) -> None:
        user = self.stack.users[index]
        rng = random.Random(self.config.seed * 1000 + index)
        interval = self.config.users / self.config.rate
        seq = 0
        while not self.stop_load.is_set():
            seq += 1
            text = f"chaos u{index} #{seq}"
            node = (UNREACHABLE if rng.random() < self.config.unreachable_share
                    else rng.choice(REACHABLE))
            sent = self.now()
            try:
                response = await client.post(
                    "/api/v1/messages", headers={"X-User-ID": str(user)},
                    json={"target_node_id": node, "text": text})
            except httpx.HTTPError:
                self.result.sends.append(Send(index, text, sent, self.now(), None))
                await trio.sleep(0.2)
            else:
                send = Send(index, text, sent, self.now(), response.status_code,
                            retry_after=response.headers.get("Retry-After"))
                if response.status_code == 201:
                    send.message_id = response.json()["message_id"]
                self.result.sends.append(send)
            await trio.sleep(interval * (0.5 + rng.random()))

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float = 90) -> float:
        with trio.fail_after(timeout):
            while True:
                self.stack.gateway.check_running()
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return self.now()
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.05)

    async def inject(self, client: httpx.AsyncClient, kind: str) -> Fault:
        stack = self.stack
        fault = Fault(kind, self.now())
        log.info("fault: %s at %.1f s", kind, fault.start)
        if kind == "gateway":
            await stack.gateway.kill()
            await stack.gateway.start()
        elif kind == "bridge":
            await stack.bridge.kill()
            await stack.bridge.start()
        elif kind == "broker":
            await trio.to_thread.run_sync(stack.broker.stop)
            await trio.sleep(self.config.outage)
            await trio.to_thread.run_sync(stack.broker.start)
        elif kind == "postgres":
            window = [fault.start, float("inf")]
            self.db_down.append(window)
            await trio.to_thread.run_sync(stack.postgres.stop)
            await trio.sleep(self.config.outage)
            stack.postgres = await trio.to_thread.run_sync(start_postgres,
                                                           stack.postgres.data_dir)
        else:
            raise ValueError(f"unknown fault {kind!r}")
        fault.back = self.now()
        fault.ready = await self.wait_ready(client)
        if kind == "postgres":
            self.db_down[-1][1] = fault.ready
        return fault

    async def run(self) -> ChaosResult:
        config = self.config
        limits = httpx.Limits(max_connections=config.users + 2)
        async with httpx.AsyncClient(base_url=self.stack.url, timeout=5, limits=limits) as client, \
                trio.open_nursery() as nursery:
            await self.wait_ready(client)
            nursery.start_soon(self.watch_air)
            async with trio.open_nursery() as load:
                for index in range(config.users):
                    load.start_soon(self.load, client, index)
                for _ in range(config.rounds):
                    for kind in config.faults:
                        # Jittered, so that faults hit the flow at different moments.
                        await trio.sleep(config.quiet * (0.75 + 0.5 * self._rng.random()))
                        self.result.faults.append(await self.inject(client, kind))
                await trio.sleep(config.quiet)
                self.stop_load.set()
            self.result.duration = self.now()
            await self.settle()
            nursery.cancel_scope.cancel()
        self.check()
        return self.result

    async def settle(self) -> None:
        """Wait until every outbound message is final (or the settle timeout passes)."""
        start = self.now()
        with trio.move_on_after(self.config.settle_timeout):
            while await trio.to_thread.run_sync(self._open_messages) > 0:
                await trio.sleep(0.5)
        await trio.sleep(1)  # late status reports and refunds, if any, land now
        self.result.settle = self.now() - start

    def _open_messages(self) -> int:
        with psycopg.connect(self.stack.postgres.url) as conn:
            row = conn.execute("SELECT count(*) FROM messages WHERE direction = 'outbound'"
                               " AND status NOT IN ('delivered', 'failed', 'expired')").fetchone()
        return int(row[0]) if row else 0

    def check(self) -> None:
        result, stats = self.result, self.stack.radio.stats
        with psycopg.connect(self.stack.postgres.url) as conn:
            rows = conn.execute(
                "SELECT id::text, user_id::text, text, status, reason, charged FROM messages"
                " WHERE direction = 'outbound'").fetchall()
            used: dict[str, int] = dict(conn.execute(
                "SELECT user_id::text, sum(used)::int FROM quota_usage GROUP BY user_id"
            ).fetchall())
        by_id = {row[0]: row for row in rows}
        by_text = {row[2]: row for row in rows}
        result.lost = [str(s.message_id) for s in result.sends
                       if s.status == 201 and s.message_id not in by_id]
        result.stuck = [f"{r[0]} {r[3]}" for r in rows if r[3] not in FINAL]
        answered = {s.message_id for s in result.sends if s.status == 201}
        result.unanswered_stored = sum(1 for r in rows if r[0] not in answered)
        result.final = Counter(r[3] for r in rows)
        result.reasons = Counter(f"{r[3]}/{r[4]}" for r in rows if r[4])
        result.duplicates_on_air = [t for t, n in stats.accepted_by_text.items() if n > 1]
        result.unknown_on_air = [t for t in stats.accepted_by_text if t not in by_text]
        for user in map(str, self.stack.users):
            mine = [r for r in rows if r[1] == user]
            result.quota[user] = {
                "used": used.get(user, 0),
                "on_air": sum(1 for r in mine if stats.heard_by_text[r[2]]),
                "charged": sum(1 for r in mine if r[5]),
                "messages": len(mine),
                "delivered": sum(1 for r in mine if r[3] == "delivered"),
                "delivery_acks": sum(1 for r in mine if stats.delivered_by_text[r[2]]),
            }
        result.bad_5xx = bad_5xx(result.sends, self.db_down)
        for fault in result.faults:
            api = [s.answered for s in result.sends if s.status == 201 and s.sent >= fault.start]
            fault.api_back = min(api) - fault.start if api else None
            # (A text sent just as the fault began may have gone out before it took effect.)
            air = [self.on_air[s.text] for s in result.sends
                   if s.status == 201 and s.sent >= fault.start
                   and self.on_air.get(s.text, -1.0) >= fault.back]
            fault.air_back = min(air) - fault.back if air else None
            later = [self.on_air[s.text] for s in result.sends
                     if s.status == 201 and s.sent >= fault.back and s.text in self.on_air]
            fault.caught_up = min(later) - fault.back if later else None
            fault.slowest = max([s.answered - s.sent for s in result.sends
                                 if fault.start <= s.sent <= fault.ready], default=0.0)
        result.error_logs = {part: _error_lines(self.stack.root / f"{part}.log")
                             for part in ("gateway", "bridge")}
        result.sim = {"transmissions": stats.transmissions.total(), "naks": dict(stats.naks),
                      "acks": dict(stats.acks), "replies": stats.replies,
                      "duplicate_packets": stats.duplicates,
                      "queue_rejects": stats.queue_rejects}


async def chaos_run(config: ChaosConfig) -> ChaosResult:
    async with trio.open_nursery() as nursery:
        async with running_stack(config, nursery) as stack:
            result = await Run(config, stack).run()
        nursery.cancel_scope.cancel()
    return result


def dump(result: ChaosResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_json(), indent=2, default=str))
