"""The chaos run: steady sends through the whole stack while its parts are killed and restarted.

What runs (all on 127.0.0.1, under one temporary directory, nothing of the machine's touched):
- an embedded PostgreSQL (kosmo.embedded), migrated and seeded, plus the run's own users;
- an MQTT broker process (mosquitto, persistent: sessions and queued messages survive a
  restart);
- ``gateways`` ``kosmo gateway`` processes (one by default; each with its own HTTP port and
  MQTT client id, in one shared subscription group) and ``kosmo bridge``, as child processes,
  as a process manager would run them (a killed one is started again, with the same settings
  and the same state; one that exits by itself is noted and started again after 1 s);
- a simulated radio (bridge/sim) in this process, sped up by ``time_scale``, whose counters say
  which texts were handed to the air and how many times, and which were delivered;
- a subscriber of its own to every bridge's outbound topics (tests/chaos/publishes.py), which
  counts what the gateways publish, by message id.

Load: ``users`` users send at ``rate`` messages a second in all, each text unique, mostly to
nodes that answer, a few to a node nobody can reach (those fail and are refunded). One user
has a tight quota and runs into 429s. Sends go round robin over the gateways, as a proxy in
front of them would: a gateway that refuses the connection is skipped (nothing reached it),
a send that got no answer is not sent again (a send is not idempotent). A client that gets no
answer goes on with its next send.

Faults, in turn, each after ``quiet`` seconds of steady load: kill -9 a gateway (the next one
in turn when there are several) and start it again after ``gateway_down`` seconds; stop and
start the broker; stop and start PostgreSQL (``outage`` seconds down); kill -9 the bridge and
start it again. Then the load stops and the stack settles.

Invariants (``ChaosResult.violations``):
- every message answered 201 exists, and every outbound message ends ``delivered``, ``failed``
  or ``expired`` (none stuck);
- no text was handed to the air twice (the radio's ``accepted_by_text``), and nothing went on
  air that the database does not hold;
- per user: quota used = their messages that reached the air (some node heard them, by the
  radio's ``heard_by_text``) = their messages still charged;
- no 5xx but 503 with ``Retry-After``, and those only while the database was down (from its
  stop until the gateways reported ready again);
- no part exited by itself, no ERROR line in a gateway's or the bridge's log.
A message published twice on a bridge's topic is counted and reported, not a violation: the
bridge dedupes by message id, and the promise is about the air.

Recovery is measured per fault, from the harness's own clock:
- *API back*: from the fault until the first 201 for a request sent after it started;
- *air back*: from the moment the part is back (process started again, service accepting)
  until the radio next takes a text sent since the fault began;
- *caught up*: from that moment until the radio takes the first text sent after it, which had
  to wait for the backlog of the fault to go out first.
For a gateway kill, from the kill:
- *nodes back*: until every node that answers has had a text sent since the kill on air;
- *longest wait to publish*: of the texts accepted while the killed gateway was down, the
  longest from the 201 to the first publish on the bridge's topic;
- *texts recovered*: texts handed to a bridge before the kill and first published after it
  (those the killed process had claimed and not yet published, or published unacknowledged),
  and when the last of them was first published;
- *adopted*: when the schema has membership tables (``node_publishers``), until no node names
  the killed process as its publisher any more;
- *session drained*: when it has ``stranded_sessions``, until another process drained the
  killed one's MQTT session (its row marked and released while the killed one was down).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import trio

from bridge.sim.config import SimConfig, make_nodes
from bridge.sim.protocol import node_id as node_text
from bridge.sim.radio import SimRadio
from bridge.sim.server import serve_radio
from kosmo import migrate
from kosmo.embedded import Broker, EmbeddedPostgres, free_port, start_broker, start_postgres
from tests.chaos.owners import owned_by_pid, still_published_by, stranded
from tests.chaos.publishes import PublishWatch
from tests.chaos.report import ChaosResult, Fault, Send, bad_5xx
from tests.users import add_users

log = logging.getLogger(__name__)

FAULTS = ("gateway", "broker", "postgres", "bridge")
FINAL = {"delivered", "failed", "expired"}
REACHABLE_NODES = 3  # !a1b2c3d4 and two more answer; one more node is unreachable
UNREACHABLE_NUM = 0xDEAD0001
UNREACHABLE = node_text(UNREACHABLE_NUM)
REACHABLE = [node_text(node.num) for node in make_nodes(REACHABLE_NODES)]
TIGHT_QUOTA = 25
TOPIC_ROOT = "kosmo"
RESTART_PAUSE = 1.0  # before a part that exited by itself is started again


@dataclass(frozen=True)
class ChaosConfig:
    users: int = 5  # the last one has a tight quota
    rate: float = 4.0  # sends per second, all users together
    rounds: int = 1  # the four faults, this many times
    faults: tuple[str, ...] = FAULTS
    quiet: float = 12.0  # seconds of steady load before each fault (on average; +-25 %)
    outage: float = 4.0  # seconds a stopped broker or database stays down
    gateways: int = 1  # gateway processes on the one database and broker
    gateway_down: float = 0.0  # seconds a killed gateway stays down before it is started again
    settle_timeout: float = 180.0
    time_scale: float = 30.0  # radio seconds per real second
    unreachable_share: float = 0.03
    seed: int = 1
    keep: bool = False  # keep the run's directory (logs) afterwards


def two_gateway_faults(faults: tuple[str, ...] = FAULTS) -> tuple[str, ...]:
    """``faults`` with a second gateway kill after the broker restart, so that each round
    kills each of two gateways once."""
    out = list(faults)
    if "gateway" in out:
        out.insert(out.index("broker") + 1 if "broker" in out else len(out), "gateway")
    return tuple(out)


# --- the parts --------------------------------------------------------------------------------


class Child:
    """A ``kosmo`` subcommand as a child process, its output appended to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._argv = argv
        self._env = env
        self._process: trio.Process | None = None
        self._killing = False
        self.client_id = ""  # a gateway's MQTT client id

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self._process = await trio.lowlevel.open_process(
                self._argv, env=self._env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        self._killing = False

    async def kill(self) -> None:
        """kill -9, and reap it."""
        assert self._process is not None
        self._killing = True
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

    def exited(self) -> int | None:
        """The exit status of a process that ended by itself (not killed here), else None."""
        if self._process is None or self._killing:
            return None
        return self._process.returncode

    def check_running(self) -> None:
        if self.exited() is not None:
            raise RuntimeError(f"{self.name} exited with {self.exited()}; see {self.log_path}")


@dataclass
class Stack:
    root: Path
    postgres: EmbeddedPostgres
    broker: Broker
    radio: SimRadio
    gateways: list[Child]
    bridge: Child
    urls: list[str]
    users: list[uuid.UUID]


def _kosmo(*args: str) -> list[str]:
    return [sys.executable, "-m", "kosmo", *args]


def _add_users(database_url: str, count: int) -> list[uuid.UUID]:
    """``count`` users on the sanctuary plan (any node); the last one with a tight quota."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return add_users(conn, count, quota=1_000_000, last_quota=TIGHT_QUOTA)


def _gateway_names(count: int) -> list[str]:
    return ["gateway"] if count == 1 else [f"gateway-{k}" for k in range(1, count + 1)]


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
        env = {**os.environ, "KOSMO_DATABASE_URL": postgres.url, "KOSMO_MQTT_URL": broker.url,
               "KOSMO_MQTT_TOPIC_ROOT": TOPIC_ROOT, "KOSMO_LOG_LEVEL": "INFO"}
        for name in [k for k in env if k.startswith("KOSMO_TEST_")]:
            del env[name]
        gateways, urls = [], []
        for name in _gateway_names(config.gateways):
            http_port = free_port()
            settings = {"KOSMO_HTTP_BIND": f"127.0.0.1:{http_port}",
                        "KOSMO_AUTH_MODE": "header", "KOSMO_MQTT_CLIENT_ID": f"chaos-{name}",
                        "KOSMO_OUTBOX_INTERVAL": "5s", "KOSMO_START_TIMEOUT": "60s"}
            if config.gateways > 1:
                settings["KOSMO_MQTT_SHARED_GROUP"] = "chaos"
            gateway = Child(name, _kosmo("gateway"), {**env, **settings}, root / f"{name}.log")
            gateway.client_id = settings["KOSMO_MQTT_CLIENT_ID"]
            gateways.append(gateway)
            urls.append(f"http://127.0.0.1:{http_port}")
        bridge = Child("bridge", _kosmo("bridge"), {
            **env, "KOSMO_RADIO": f"tcp:127.0.0.1:{radio_port}",
            "KOSMO_BRIDGE_STATE_DIR": str(root / "bridge"),
            "KOSMO_BRIDGE_TIME_SCALE": str(config.time_scale), "KOSMO_BRIDGE_REGION": "US"},
            root / "bridge.log")
        stack = Stack(root, postgres, broker, radio, gateways, bridge, urls, users)
        try:
            for gateway in gateways:
                await gateway.start()
            await bridge.start()
            yield stack
        finally:
            with trio.CancelScope(shield=True):
                await bridge.stop()
                for gateway in gateways:
                    await gateway.stop()
    finally:
        with trio.CancelScope(shield=True):
            if broker is not None:
                await trio.to_thread.run_sync(broker.stop)
            await trio.to_thread.run_sync(postgres.stop)
            if not config.keep:
                await trio.to_thread.run_sync(
                    lambda: shutil.rmtree(root, ignore_errors=True))


class Balancer:
    """Round robin over the gateways, as a proxy in front of them would do it: a gateway that
    refuses the connection is skipped (nothing reached it); a request sent and not answered
    is not sent again (a send is not idempotent)."""

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self.clients = clients
        self._next = 0

    async def post(self, path: str, *, headers: dict[str, str], json: object
                   ) -> tuple[int, httpx.Response]:
        first, self._next = self._next, (self._next + 1) % len(self.clients)
        for step in range(len(self.clients)):
            index = (first + step) % len(self.clients)
            try:
                return index, await self.clients[index].post(path, headers=headers, json=json)
            except httpx.ConnectError:
                if step == len(self.clients) - 1:
                    raise
        raise AssertionError("unreachable")


# --- the run ----------------------------------------------------------------------------------


class Run:
    def __init__(self, config: ChaosConfig, stack: Stack) -> None:
        self.config = config
        self.stack = stack
        self.result = ChaosResult(config)
        # One clock for this task and paho's thread: perf_counter, from here.
        self.origin = time.perf_counter()
        self.wall_origin = time.time()
        self.on_air: dict[str, float] = {}  # text -> when the radio first took it
        self.db_down: list[list[float]] = []  # [stopped, gateways ready again]
        self.stop_load = trio.Event()
        self.kills = 0
        self._rng = random.Random(config.seed)

    def now(self) -> float:
        return time.perf_counter() - self.origin

    async def watch_air(self) -> None:
        """Note when the radio first takes each text (the radio runs in this process)."""
        while True:
            accepted = self.stack.radio.stats.accepted_by_text
            if len(accepted) != len(self.on_air):
                now = self.now()
                for text in accepted:
                    self.on_air.setdefault(text, now)
            await trio.sleep(0.02)

    async def watch_parts(self) -> None:
        """A part that exits by itself is noted and started again, as a process manager
        would."""
        while True:
            for child in [*self.stack.gateways, self.stack.bridge]:
                status = child.exited()
                if status is not None:
                    self.result.exits.append(f"{child.name} exited with {status} at "
                                             f"{self.now():.1f} s; see {child.log_path}")
                    await trio.sleep(RESTART_PAUSE)
                    await child.start()
            await trio.sleep(0.1)

    async def load(self, balancer: Balancer, index: int) -> None:
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
                gateway, response = await balancer.post(
                    "/api/v1/messages", headers={"X-User-ID": str(user)},
                    json={"target_node_id": node, "text": text})
            except httpx.HTTPError:
                self.result.sends.append(Send(index, text, sent, self.now(), None, node=node))
                await trio.sleep(0.2)
            else:
                send = Send(index, text, sent, self.now(), response.status_code,
                            retry_after=response.headers.get("Retry-After"), gateway=gateway,
                            node=node)
                if response.status_code == 201:
                    send.message_id = response.json()["message_id"]
                self.result.sends.append(send)
            await trio.sleep(interval * (0.5 + rng.random()))

    async def wait_ready(self, client: httpx.AsyncClient, child: Child, *, strict: bool = False,
                         timeout: float = 90) -> float:
        """Until this gateway answers /readyz 200; ``strict``: fail if it exits meanwhile
        (before the part watcher runs, which starts it again)."""
        with trio.fail_after(timeout):
            while True:
                if strict:
                    child.check_running()
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return self.now()
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.05)

    async def all_ready(self, clients: list[httpx.AsyncClient]) -> float:
        ready = 0.0
        for client, child in zip(clients, self.stack.gateways, strict=True):
            ready = max(ready, await self.wait_ready(client, child))
        return ready

    async def inject(self, clients: list[httpx.AsyncClient], kind: str,
                     nursery: trio.Nursery) -> Fault:
        stack = self.stack
        fault = Fault(kind, self.now(), part=kind)
        if kind == "gateway":
            index = self.kills % len(stack.gateways)
            self.kills += 1
            gateway = stack.gateways[index]
            if len(stack.gateways) > 1:
                fault.part = f"gateway {index + 1}"
            log.info("fault: kill -9 %s at %.1f s", gateway.name, fault.start)
            pid = gateway.pid
            owned = (None if pid is None else
                     await trio.to_thread.run_sync(owned_by_pid, stack.postgres.url, pid))
            fault.start = self.now()
            await gateway.kill()
            if owned is not None:
                fault.owned = owned[1]
                nursery.start_soon(self.watch_adoption, fault, owned[0])
                nursery.start_soon(self.watch_drain, fault, gateway.client_id)
            await trio.sleep(self.config.gateway_down)
            await gateway.start()
            fault.back = self.now()
            fault.ready = await self.wait_ready(clients[index], gateway)
            return fault
        log.info("fault: %s at %.1f s", kind, fault.start)
        if kind == "bridge":
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
        fault.ready = await self.all_ready(clients)
        if kind == "postgres":
            self.db_down[-1][1] = fault.ready
        return fault

    async def watch_adoption(self, fault: Fault, process_id: str) -> None:
        """Until no node names the killed process as its publisher (or 60 s)."""
        with trio.move_on_after(60):
            while True:
                left = await trio.to_thread.run_sync(still_published_by,
                                                     self.stack.postgres.url, process_id)
                if left == 0:
                    fault.adopted = self.now() - fault.start
                    return
                await trio.sleep(0.1)

    async def watch_drain(self, fault: Fault, client_id: str) -> None:
        """Until the killed process's MQTT session is marked stranded and then released; a
        release before the process is back is a drain by another process."""
        url = self.stack.postgres.url
        with trio.move_on_after(60):
            while not await trio.to_thread.run_sync(stranded, url, client_id):
                await trio.sleep(0.1)
            while await trio.to_thread.run_sync(stranded, url, client_id) is not False:
                await trio.sleep(0.1)
            if not fault.back:
                fault.drained = self.now() - fault.start

    async def run(self) -> ChaosResult:
        config = self.config
        limits = httpx.Limits(max_connections=config.users + 2)
        watch = PublishWatch(self.stack.broker.url, TOPIC_ROOT, origin=self.origin)
        try:
            await trio.to_thread.run_sync(watch.wait_subscribed)
            async with trio.open_nursery() as nursery:
                clients = [await nursery.start(_client, url, limits) for url in self.stack.urls]
                for client, child in zip(clients, self.stack.gateways, strict=True):
                    await self.wait_ready(client, child, strict=True)
                nursery.start_soon(self.watch_air)
                nursery.start_soon(self.watch_parts)
                balancer = Balancer(clients)
                async with trio.open_nursery() as load:
                    for index in range(config.users):
                        load.start_soon(self.load, balancer, index)
                    for _ in range(config.rounds):
                        for kind in config.faults:
                            # Jittered, so that faults hit the flow at different moments.
                            await trio.sleep(config.quiet * (0.75 + 0.5 * self._rng.random()))
                            self.result.faults.append(await self.inject(clients, kind, nursery))
                    await trio.sleep(config.quiet)
                    self.stop_load.set()
                self.result.duration = self.now()
                await self.settle()
                nursery.cancel_scope.cancel()
        finally:
            watch.close()
        self.check(watch)
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

    def check(self, watch: PublishWatch) -> None:
        result, stats = self.result, self.stack.radio.stats
        with psycopg.connect(self.stack.postgres.url) as conn:
            rows = conn.execute(
                "SELECT id::text, user_id::text, text, status, reason, charged,"
                " extract(epoch FROM handed_at)::float8 FROM messages"
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
        result.published = len(watch.copies)
        result.publish_copies = sum(watch.copies.values())
        result.published_twice = [m for m, n in watch.copies.items() if n > 1]
        result.unpublished = [t for t in stats.accepted_by_text
                              if t in by_text and by_text[t][0] not in watch.first]
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
        for send in result.sends:
            send.on_air = self.on_air.get(send.text)
            send.published = watch.first.get(send.message_id or "")
        handed = {r[0]: r[6] - self.wall_origin for r in rows if r[6] is not None}
        for fault in result.faults:
            self._recovery(fault)
            if fault.kind == "gateway":
                self._takeover(fault, handed, watch.first)
        result.error_logs = {child.name: _error_lines(child.log_path)
                             for child in [*self.stack.gateways, self.stack.bridge]}
        result.sim = {"transmissions": stats.transmissions.total(), "naks": dict(stats.naks),
                      "acks": dict(stats.acks), "replies": stats.replies,
                      "duplicate_packets": stats.duplicates,
                      "queue_rejects": stats.queue_rejects,
                      "publish_redeliveries_to_watcher": watch.redelivered}

    def _recovery(self, fault: Fault) -> None:
        sends = self.result.sends
        api = [s.answered for s in sends if s.status == 201 and s.sent >= fault.start]
        fault.api_back = min(api) - fault.start if api else None
        # (A text sent just as the fault began may have gone out before it took effect.)
        air = [self.on_air[s.text] for s in sends
               if s.status == 201 and s.sent >= fault.start
               and self.on_air.get(s.text, -1.0) >= fault.back]
        fault.air_back = min(air) - fault.back if air else None
        later = [self.on_air[s.text] for s in sends
                 if s.status == 201 and s.sent >= fault.back and s.text in self.on_air]
        fault.caught_up = min(later) - fault.back if later else None
        fault.slowest = max([s.answered - s.sent for s in sends
                             if fault.start <= s.sent <= fault.ready], default=0.0)

    def _takeover(self, fault: Fault, handed: dict[str, float],
                  published: dict[str, float]) -> None:
        firsts = []
        for node in REACHABLE:
            times = [self.on_air[s.text] for s in self.result.sends
                     if s.status == 201 and s.node == node and s.sent >= fault.start
                     and s.text in self.on_air]
            firsts.append(min(times) - fault.start if times else None)
        fault.nodes_back = None if None in firsts else max(t for t in firsts if t is not None)
        waits = [s.published - s.answered for s in self.result.sends
                 if s.status == 201 and fault.start <= s.sent < fault.back
                 and s.published is not None]
        fault.publish_wait = max(waits, default=None)
        late = [published[m] - fault.start for m, at in handed.items()
                if at < fault.start and published.get(m, -1.0) >= fault.start]
        fault.recovered = len(late)
        fault.recovered_by = max(late) if late else None


async def _client(url: str, limits: httpx.Limits, *,
                  task_status: trio.TaskStatus[httpx.AsyncClient] = trio.TASK_STATUS_IGNORED
                  ) -> None:
    """An HTTP client to one gateway, open while the run's nursery lives."""
    async with httpx.AsyncClient(base_url=url, timeout=5, limits=limits) as client:
        task_status.started(client)
        await trio.sleep_forever()


def _error_lines(path: Path) -> list[str]:
    """ERROR and CRITICAL records and tracebacks in a part's log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines()
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]


async def chaos_run(config: ChaosConfig) -> ChaosResult:
    async with trio.open_nursery() as nursery:
        async with running_stack(config, nursery) as stack:
            result = await Run(config, stack).run()
        nursery.cancel_scope.cancel()
    return result


def dump(result: ChaosResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_json(), indent=2, default=str))
