"""The inbound benchmark's measurement: the publishers' ceiling, a warm-up, then round after
round, for each layout (where the streams are held) and number of streams, a ladder of steps
per kind (replies, delivery reports), each measured end to end (published, visible in the
database, received on the streams) with the CPU of every process involved; a backlog that
stops draining restarts the gateway; an extra step or two under py-spy when asked."""

from __future__ import annotations

import argparse
import math
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import trio
from common import (  # bench/ is on sys.path when run as a script
    BenchError,
    percentile,
    say,
    sigterm_interrupts,
)
from inbound_figures import Connected, Results, Step
from inbound_load import Publishers
from inbound_poller import Poller
from inbound_profile import PROFILE_RATE_HZ, summarize_profile, summarize_wall
from inbound_setup import GatewayProcess
from inbound_streams import StreamClients
from proc_stats import machine_cpu, process_cpu, rss_kib
from servers import BIN

WS_WAIT_S = 10.0  # longest wait, after the database has all of a step, for its stream frames


@dataclass
class Meter:
    """CPU used between ``start`` and ``stop``, in % of one core, per role."""

    gateway: int
    broker: int | None
    holder: int | None = None  # a second gateway holding the streams (layouts two, base)
    backends: list[int] = field(default_factory=list)
    publishers: list[int] = field(default_factory=list)
    clients: list[int] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        return {"gateway": process_cpu(self.gateway),
                "main": process_cpu(self.gateway, self.gateway),  # its Trio thread
                "holder": process_cpu(self.holder) if self.holder else math.nan,
                "holder_main": (process_cpu(self.holder, self.holder) if self.holder
                                else math.nan),
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


class Bench:
    def __init__(self, args: argparse.Namespace, gateway: GatewayProcess,
                 holders: dict[str, GatewayProcess], broker_pid: int | None, db_url: str,
                 poller: Poller) -> None:
        self.args = args
        self.db_url = db_url
        self.poller = poller
        self.gateway = gateway  # consumes the MQTT messages, writes the events
        self.holders = holders  # layout -> the second gateway that holds the streams
        self.layout = "one"
        self.meter = Meter(gateway.pid, broker_pid)
        self.publishers = Publishers()
        self.streams = StreamClients()
        self.results = Results()

    async def backends(self) -> list[int]:
        def query() -> list[int]:
            with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5) as conn:
                return [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'kosmo'").fetchall()]
        return await trio.to_thread.run_sync(query)

    @property
    def holder(self) -> GatewayProcess:
        """The gateway process holding the streams in the current layout."""
        return self.gateway if self.layout == "one" else self.holders[self.layout]

    async def step(self, kind: str, rate: float, seconds: float, *, round_: int = 0,
                   clients: int = 0) -> Step:
        a = self.args
        total = int(rate * seconds)
        first = self.publishers.first(kind, total)
        step = Step(round_, clients, kind, rate, seconds, self.layout)
        self.meter.backends = await self.backends()
        t0 = time.monotonic() + 0.3
        await self.publishers.offer(kind, rate, seconds, t0, first)
        await trio.sleep(max(0.0, t0 - time.monotonic()))
        self.meter.start()
        await trio.sleep(seconds)
        step.cpu = self.meter.stop()
        answers = await self.publishers.answers(within=seconds + 30)
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

        # websocket side: which persisted items had a stream, which arrived, when; streams
        # that lag behind the database get up to WS_WAIT_S more (their lateness counts).
        def user(k: Any) -> int:
            return int(k if kind == "inbound" else k[0]) % int(a.users)

        expected = [k for k in seen if user(k) < clients]
        received: dict[Any, float] = {}
        wait_until = time.monotonic() + WS_WAIT_S
        while True:
            more, closed = await self.streams.received(kind)
            step.closed.update(closed)
            for k, at_ in more.items():
                received.setdefault(k, at_)
            if (not clients or all(k in received for k in expected)
                    or time.monotonic() > wait_until):
                break
            await trio.sleep(0.25)
        step.ws_expected = len(expected)
        ws = [1000 * (received[k] - sched(index[k])) for k in expected if k in received]
        step.ws_received = len(ws)
        step.ws_p50, step.ws_p99 = percentile(ws, 50), percentile(ws, 99)
        step.ws_max = max(ws, default=math.nan)
        # visible in the database -> received on the stream: the stream side alone
        after = [1000 * (received[k] - at(seen[k])) for k in expected if k in received]
        step.fan_p50, step.fan_p99 = percentile(after, 50), percentile(after, 99)
        return step

    async def connect_clients(self, count: int, round_: int) -> Connected:
        a = self.args
        await trio.sleep(1)
        before = rss_kib(self.holder.pid)
        started = time.monotonic()
        connected, failed = await self.streams.connect(
            count, gateway_url=self.holder.url, per_process=a.per_process,
            max_seconds=a.max_seconds)
        seconds = time.monotonic() - started
        self.meter.clients = self.streams.pids
        await trio.sleep(2)
        return Connected(round_, connected, failed, seconds, before, rss_kib(self.holder.pid),
                         layout=self.layout)

    async def disconnect_clients(self) -> None:
        self.meter.clients = []
        await self.streams.disconnect()

    async def ladder(self, round_: int, clients: int) -> None:
        """Each kind's rates upward, up to the first step not sustained (that one included:
        its persisted rate is what the gateway managed under overload)."""
        a = self.args
        for kind, rates in (("inbound", a.rates), ("status", a.status_rates)):
            for rate in rates:
                say(f"round {round_}, layout {self.layout}, {clients} streams: {kind} at "
                    f"{rate:g}/s for "
                    f"{a.seconds:g} s")
                step = await self.step(kind, rate, a.seconds, round_=round_, clients=clients)
                self.results.steps.append(step)
                drain = ("stalled" if step.stalled else "timeout" if step.drain_s is None
                         else f"{step.drain_s:.1f} s")
                say(f"  persisted {step.window_rate:.0f}/s, drain {drain}, "
                    f"db p99 {step.db_p99:.0f} ms, ws p99 {step.ws_p99:.0f} ms, db>ws p99 "
                    f"{step.fan_p99:.0f} ms "
                    f"({step.ws_received}/{step.ws_expected}), gateway "
                    f"{step.cpu['gateway']:.0f}%, holder {step.cpu['holder']:.0f}%, machine "
                    f"{step.cpu['machine']:.0f}%")
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
        self.results.restarts.append(f"round {step.round}, layout {step.layout}, "
                                     f"{step.clients} streams, "
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
                f"streams, layout {self.layout}, the stream-holding gateway under py-spy -> "
                f"{out}")
            cmd = [spy, "record", "--pid", str(self.holder.pid), "--duration",
                   str(round(a.seconds)), "--rate", str(PROFILE_RATE_HZ), "--format", "raw",
                   "--threads", flag, "--nonblocking", "--output", str(out)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(trio.run_process, cmd, capture_stdout=True,
                                           capture_stderr=True, check=False))
                await trio.sleep(0.5)  # py-spy attaches
                step = await self.step("inbound", a.profile_rate, a.seconds, clients=clients)
            if step.drain_s is None:
                await self.recover(clients, step)
            ms = step.holder_cpu_ms
            parts.append(f"{mode}: layout {self.layout}, {step.window_rate:.0f} replies/s "
                         f"persisted under the profiler, the stream-holding gateway "
                         f"{step.cpu['holder' if self.layout != 'one' else 'gateway']:.0f}% of "
                         f"a core ({ms:.3f} ms per reply), db p50 {step.db_p50:.0f} ms, ws p50 "
                         f"{step.ws_p50:.0f} ms, p99 {step.ws_p99:.0f} ms\n"
                         + (summarize_profile(out, ms) if mode == "gil"
                            else summarize_wall(out)))
        return "\n".join(parts)

    async def configuration(self, round_: int, clients: int) -> None:
        """One layout with this many streams: (its second gateway started,) the streams
        connected, the ladders, everything stopped again."""
        a = self.args
        holder = self.holder
        if holder is not self.gateway:
            say(f"round {round_}, layout {self.layout}: starting the stream-holding gateway")
            await trio.to_thread.run_sync(holder.start)
            self.meter.holder = holder.pid
        try:
            say(f"round {round_}, layout {self.layout}: connecting {clients} streams")
            conn = await self.connect_clients(clients, round_)
            self.results.connected.append(conn)
            say(f"  {conn.clients} connected ({conn.failed} failed) in "
                f"{conn.seconds:.1f} s; stream-holding gateway RSS "
                f"{conn.rss_before / 1024:.0f} -> {conn.rss_connected / 1024:.0f} MiB")
            restarts = self.gateway.restarts
            try:
                await self.ladder(round_, clients)
                conn.rss_loaded = rss_kib(holder.pid)
                if (a.profile and round_ == a.rounds and clients == max(a.clients)
                        and self.layout == a.layouts[-1]):
                    self.results.profile = await self.profile(clients)
            finally:
                await self.disconnect_clients()
            await trio.sleep(2)
            conn.rss_after = rss_kib(holder.pid)
            conn.restarted = self.gateway.restarts != restarts and holder is self.gateway
        finally:
            if holder is not self.gateway:
                self.meter.holder = None
                await trio.to_thread.run_sync(holder.stop)

    async def run(self) -> Results:
        """The whole measurement; SIGTERM stops it as Ctrl-C does, through Trio."""
        async with sigterm_interrupts():
            await self.measure()
        return self.results

    async def measure(self) -> None:
        a = self.args
        await self.publishers.start(a)
        self.meter.publishers = self.publishers.pids
        try:
            say(f"publishers' ceiling: {a.ceiling_rate:g}/s offered for 3 s to a topic "
                f"nobody reads")
            self.results.ceiling = await self.step("void", a.ceiling_rate, 3)
            say(f"  {self.results.ceiling.window_rate:.0f}/s acknowledged by the broker")
            say(f"warm-up: replies at {a.rates[0]:g}/s for {a.warmup:g} s, no streams")
            await self.step("inbound", a.rates[0], a.warmup)
            for round_ in range(1, a.rounds + 1):
                for self.layout in a.layouts:
                    for clients in a.clients:
                        await self.configuration(round_, clients)
        finally:
            async with trio.open_nursery() as nursery:
                for helper in self.publishers.helpers + self.streams.helpers:
                    nursery.start_soon(helper.stop)
