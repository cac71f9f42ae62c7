"""Accept benchmark: the gateway's send path against a hello-world route on the same stack.

What it does, in one run (see bench/README.md for how to read the figures):
1. Creates a fresh database ``bench_<tag>``, migrates and seeds it (``kosmo migrate``/``seed``).
2. Starts two servers, one process each: the gateway (``kosmo gateway``, header auth, a private
   MQTT topic root and client id) and ``bench/hello.py`` (Quart on quart-trio served by
   ``hypercorn.trio.serve`` with the gateway's own Hypercorn settings).
3. Throughput: ``wrk`` (a separate C process, 64 keep-alive connections, closed loop) POSTs
   sends to each server for ``--seconds``, alternating hello, gateway, hello, gateway ... for
   ``--rounds`` rounds, so slow drifts of a shared machine hit both alike. Per run: req/s,
   p50/p99 latency, CPU used by the server, by its PostgreSQL backends, by wrk and by the
   whole machine (100 % = one core).
4. Accept -> publish: each round also offers the gateway a fixed 200 req/s, open loop (request
   i is due at start + i/rate whatever happened before), from this process; a subscriber
   process notes when each message reaches it over MQTT. Latency = arrival at the subscriber
   minus the request's scheduled send time, matched by ``message_id``. Messages go to a bridge
   only while one is online: the run announces one (``bench``, a retained online state with a
   credit that takes every message at once) and the subscriber reads that bridge's topic, so
   the figure is accept -> dispatch -> publish.
5. Prints a table with medians over rounds, then stops the servers and drops the database.

Everything is bounded: each load runs a fixed time under a deadline, every wait has a timeout,
and Ctrl-C or SIGTERM stop the servers and drop the database too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import h11
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
from proc_stats import machine_cpu, process_cpu
from profile_summary import summarize
from servers import BIN, bench_database, forget_mqtt_session, free_port, gateway_env, wait_ready

HERE = Path(__file__).resolve().parent
SANCTUARY = "33333333-3333-3333-3333-333333333333"  # demo user with unlimited quota
NODE = "!a1b2c3d4"
PATH = "/api/v1/messages"
BODY = json.dumps({"target_node_id": NODE, "text": "bench: hello from the web"}).encode()
PROFILE_RATE = 200  # py-spy samples per second
RATIO_TARGET = 0.75
P99_TARGET_MS = 10.0


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
            proc.send_signal(signal.SIGTERM)  # both servers stop gracefully on SIGTERM
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop within 10 s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait(timeout=10)


# --- CPU accounting -------------------------------------------------------------------------


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """CPU used between ``start`` and ``stop``, in % of one core, per role."""

    server: int
    backends: list[int] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        return {"server": process_cpu(self.server),
                "main": process_cpu(self.server, self.server),  # the Trio thread
                "postgres": sum(process_cpu(p) for p in self.backends),
                "client": children_cpu(), "machine": machine_cpu(), "wall": time.monotonic()}

    def start(self) -> None:
        self.marks = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        wall = now["wall"] - self.marks["wall"]
        return {k: 100 * (now[k] - self.marks[k]) / wall for k in now if k != "wall"}


# --- closed-loop throughput with wrk --------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu: dict[str, float]


async def run_wrk(target: str, url: str, seconds: float, connections: int,
                  meter: CpuMeter) -> Throughput:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
           "-s", str(HERE / "post.lua"), url]
    meter.start()
    with trio.fail_after(seconds + 30):
        done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    cpu = meter.stop()
    out = done.stdout.decode(errors="replace")
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{out}\n{done.stderr.decode()}")
    s = json.loads(line.removeprefix("BENCH "))
    errors = sum(s[k] for k in ("connect_errors", "read_errors", "write_errors",
                                "status_errors", "timeouts"))
    return Throughput(target, s["requests"] / (s["duration_us"] / 1e6), s["p50_us"] / 1000,
                      s["p99_us"] / 1000, s["requests"], errors, cpu)


# --- open-loop sends and the MQTT subscriber ------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 client connection (h11 over a Trio socket)."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self._stream = stream
        self._h11 = h11.Connection(h11.CLIENT)
        self._headers = [("Host", host), ("Content-Type", "application/json"),
                         ("X-User-ID", SANCTUARY), ("Content-Length", str(len(BODY)))]

    async def post(self) -> tuple[int, bytes]:
        conn = self._h11
        await self._stream.send_all(
            conn.send(h11.Request(method="POST", target=PATH, headers=self._headers))
            + conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage()))
        status, chunks = 0, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self._stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise BenchError("the server closed a keep-alive connection")
        conn.start_next_cycle()
        return status, b"".join(chunks)


@dataclass(frozen=True)
class Sample:
    scheduled: float  # time.monotonic() at which the request was due
    sent: float
    answered: float
    status: int
    message_id: str | None


async def open_loop(host: str, port: int, rate: float, seconds: float,
                    connections: int) -> list[Sample]:
    """Offer ``rate`` requests/s for ``seconds``; request i is due at start + i / rate."""
    total = int(rate * seconds)
    samples: list[Sample] = []

    async def worker(conn: HttpConnection, jobs: trio.MemoryReceiveChannel[float]) -> None:
        async with jobs:
            async for scheduled in jobs:
                sent = time.monotonic()
                status, body = await conn.post()
                answered = time.monotonic()
                message_id = json.loads(body).get("message_id") if status == 201 else None
                samples.append(Sample(scheduled, sent, answered, status, message_id))

    async with contextlib.AsyncExitStack() as stack:
        conns = []
        for _ in range(connections):
            stream = await stack.enter_async_context(await trio.open_tcp_stream(host, port))
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(HttpConnection(stream, f"{host}:{port}"))
        send, receive = trio.open_memory_channel[float](total)  # bounded by the request count
        with trio.fail_after(seconds + 30):
            async with trio.open_nursery() as nursery:
                async with receive:
                    for conn in conns:
                        nursery.start_soon(worker, conn, receive.clone())
                async with send:
                    start, mono = trio.current_time(), time.monotonic()
                    for i in range(total):
                        await trio.sleep_until(start + i / rate)
                        send.send_nowait(mono + i / rate)
    return samples


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def readline(self) -> bytes:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(65536)
            if not data:
                raise BenchError("the subscriber process exited early")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line


@dataclass(frozen=True)
class Latency:
    offered: int
    accepted: int
    published_p50_ms: float
    published_p99_ms: float
    published_max_ms: float
    http_p50_ms: float
    http_p99_ms: float
    lag_p99_ms: float  # how late the client sent, against the schedule
    missing: int  # accepted but never seen by the subscriber


async def accept_to_publish(args: argparse.Namespace, port: int, topic_root: str,
                            drained: Any) -> Latency:
    cmd = [sys.executable, str(HERE / "subscriber.py"), "--mqtt-url", args.mqtt_url,
           "--topic", f"{topic_root}/bridge/{BRIDGE}/outbound/+", "--max-seconds",
           str(args.rate_seconds + 120)]
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(partial(trio.run_process, cmd, stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, check=False))
        lines = LineReader(proc.stdout)
        with trio.fail_after(10):
            while await lines.readline() != b"subscribed":
                pass
        samples = await open_loop("127.0.0.1", port, args.rate, args.rate_seconds,
                                  args.rate_connections)
        await drained()
        await trio.sleep(0.5)  # the last publishes reach the subscriber before `queued` commits
        await proc.stdin.aclose()
        seen: dict[str, float] = {}
        with trio.fail_after(30):
            while (line := await lines.readline()) != b"end":
                message_id, at = line.decode().split()
                seen.setdefault(message_id, float(at))
    accepted = [s for s in samples if s.status == 201 and s.message_id]
    published = [1000 * (seen[s.message_id] - s.scheduled) for s in accepted
                 if s.message_id in seen]
    http = [1000 * (s.answered - s.scheduled) for s in samples]
    lag = [1000 * (s.sent - s.scheduled) for s in samples]
    return Latency(len(samples), len(accepted), percentile(published, 50),
                   percentile(published, 99), max(published, default=math.nan),
                   percentile(http, 50), percentile(http, 99), percentile(lag, 99),
                   len(accepted) - len(published))


# --- the run --------------------------------------------------------------------------------

BRIDGE = "bench"


def announce_bridge(mqtt_url: str, topic_root: str) -> None:
    """A bridge that takes every message at once, as its retained state says."""
    import paho.mqtt.client as paho

    host, _, port = mqtt_url.removeprefix("mqtt://").rpartition("@")[2].partition(":")
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-{BRIDGE}")
    client.connect(host, int(port or 1883))
    client.loop_start()
    try:
        info = client.publish(f"{topic_root}/bridge/{BRIDGE}/state",
                              json.dumps({"state": "online", "credit": 100_000,
                                          "min_gap_s": 0.0}), qos=1, retain=True)
        info.wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass
class Results:
    hello: list[Throughput] = field(default_factory=list)
    gateway: list[Throughput] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    stored: int = 0
    pending: int = 0
    profile: str | None = None
    log_problems: list[str] = field(default_factory=list)


async def measure(args: argparse.Namespace, hello: Any, gateway: Any, db_url: str,
                  topic_root: str) -> Results:
    results = Results()
    monitor = await trio.to_thread.run_sync(
        partial(psycopg.connect, db_url, autocommit=True, connect_timeout=5))

    def query(sql: str) -> Any:
        return monitor.execute(sql).fetchone()

    async def drained() -> None:
        """Wait (60 s at most) until every stored message was published and reported."""
        with trio.fail_after(60):
            # the database is the only place that knows; polling it is the honest way here
            while (await trio.to_thread.run_sync(  # noqa: ASYNC110
                    query, "SELECT count(*) FROM messages WHERE status = 'pending'"))[0]:
                await trio.sleep(0.2)

    async def backends() -> list[int]:
        rows = await trio.to_thread.run_sync(lambda: monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()").fetchall())
        return [row[0] for row in rows]

    try:
        async with sigterm_interrupts():
            hello_meter, gateway_meter = CpuMeter(hello.pid), CpuMeter(gateway.pid)
            say(f"warm-up: {args.warmup:g} s each")
            await run_wrk("hello", args.hello_url, args.warmup, args.connections,
                          hello_meter)
            await run_wrk("gateway", args.gateway_url, args.warmup, args.connections,
                          gateway_meter)
            await drained()
            for n in range(1, args.rounds + 1):
                say(f"round {n}/{args.rounds}: hello-world then gateway, "
                    f"{args.seconds:g} s each, {args.connections} connections")
                results.hello.append(await run_wrk(
                    "hello", args.hello_url, args.seconds, args.connections, hello_meter))
                gateway_meter.backends = await backends()  # the pool may have grown
                results.gateway.append(await run_wrk(
                    "gateway", args.gateway_url, args.seconds, args.connections,
                    gateway_meter))
                await drained()
                say(f"round {n}/{args.rounds}: accept -> publish, {args.rate:g} req/s "
                    f"for {args.rate_seconds:g} s")
                results.latency.append(await accept_to_publish(
                    args, args.gateway_port, topic_root, drained))
            if args.profile:
                results.profile = await profile(args, [
                    ("hello", args.hello_url, hello_meter),
                    ("gateway", args.gateway_url, gateway_meter)], drained)
            results.stored, results.pending = await trio.to_thread.run_sync(
                query, "SELECT count(*), count(*) FILTER (WHERE status = 'pending')"
                       " FROM messages")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(monitor.close)
    return results


async def profile(args: argparse.Namespace, targets: list[tuple[str, str, CpuMeter]],
                  drained: Any) -> str:
    """One more run per server (not counted) under ``py-spy record``; returns a summary."""
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    folder = Path(args.profile)
    summaries = []
    for name, url, meter in targets:
        out = folder / f"{name}.txt"
        say(f"profile: one more {name} run under py-spy, {args.seconds:g} s -> {out}")
        cmd = [spy, "record", "--pid", str(meter.server), "--duration",
               str(round(args.seconds)), "--rate", str(PROFILE_RATE), "--format", "raw",
               "--threads", "--gil", "--nonblocking", "--output", str(out)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.run_process, cmd, capture_stdout=True,
                                       capture_stderr=True))
            await trio.sleep(0.5)  # py-spy attaches
            run = await run_wrk(name, url, args.seconds - 1, args.connections, meter)
        await drained()
        cpu = 10 * run.cpu["server"] / run.rps
        summaries.append(f"{name}: {run.rps:.0f} req/s under the profiler\n"
                         + summarize(out, cpu_ms_per_request=cpu))
    return "\n".join(summaries)


# --- report ---------------------------------------------------------------------------------





def report(args: argparse.Namespace, results: Results) -> str:
    out: list[str] = []
    w = out.append
    med = statistics.median
    w(f"KosmoConnect accept benchmark, {datetime.now():%Y-%m-%d %H:%M}, "
      f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, code {args.code}")
    w(f"closed loop: wrk, {args.connections} keep-alive connections, {args.rounds} "
      f"round{'s' if args.rounds != 1 else ''} "
      f"x {args.seconds:g} s per server, alternating; CPU in % of one core")
    w("")
    w(f"{'':<17}{'':>7}{'':>8}{'':>8}{'':>7}{'CPU, % of one core':^30}{'CPU ms/req':^14}")
    w(f"{'round':<8}{'server':<9}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}"
      f"{'server':>7}{'(main)':>7}{'pg':>5}{'wrk':>5}{'machine':>8}"
      f"{'server':>7}{'pg':>6}{'ratio':>7}")

    def row(label: str, t: Throughput, ratio: str) -> str:
        c = t.cpu
        return (f"{label:<8}{t.target:<9}{t.rps:>7.0f}{t.p50_ms:>8.1f}{t.p99_ms:>8.1f}"
                f"{t.errors:>7}{c['server']:>6.0f}%{c['main']:>6.0f}%{c['postgres']:>4.0f}%"
                f"{c['client']:>4.0f}%{c['machine']:>7.0f}%{10 * c['server'] / t.rps:>7.2f}"
                f"{10 * c['postgres'] / t.rps:>6.2f}{ratio:>7}")

    ratios = []
    for n, (h, g) in enumerate(zip(results.hello, results.gateway, strict=True), 1):
        ratios.append(g.rps / h.rps)
        w(row(str(n), h, ""))
        w(row(str(n), g, f"{ratios[-1]:.2f}"))
    for runs in (results.hello, results.gateway):
        middle = Throughput(runs[0].target, med(t.rps for t in runs),
                            med(t.p50_ms for t in runs), med(t.p99_ms for t in runs),
                            sum(t.requests for t in runs), sum(t.errors for t in runs),
                            {k: med(t.cpu[k] for t in runs) for k in runs[0].cpu})
        w(row("median", middle, f"{med(ratios):.2f}" if runs is results.gateway else ""))
    ratio = med(ratios)
    w("")
    w(f"ratio gateway/hello-world req/s (median of rounds): {ratio:.2f}   "
      f"target >= {RATIO_TARGET}: {'MET' if ratio >= RATIO_TARGET else 'NOT MET'}")
    w("")
    w(f"accept -> MQTT publish, open loop at {args.rate:g} req/s for {args.rate_seconds:g} s "
      f"per round ({args.rate_connections} connections), from the scheduled send time:")
    w(f"{'round':<8}{'offered':>8}{'201':>6}{'missing':>8}{'pub p50':>9}{'pub p99':>9}"
      f"{'pub max':>9}{'http p50':>10}{'http p99':>10}{'lag p99':>9}   (ms)")
    lat = results.latency
    for n, r in enumerate(lat, 1):
        w(f"{n:<8}{r.offered:>8}{r.accepted:>6}{r.missing:>8}{r.published_p50_ms:>9.1f}"
          f"{r.published_p99_ms:>9.1f}{r.published_max_ms:>9.1f}{r.http_p50_ms:>10.1f}"
          f"{r.http_p99_ms:>10.1f}{r.lag_p99_ms:>9.2f}")
    p99 = med(r.published_p99_ms for r in lat)
    w(f"{'median':<8}{'':>8}{'':>6}{sum(r.missing for r in lat):>8}"
      f"{med(r.published_p50_ms for r in lat):>9.1f}{p99:>9.1f}"
      f"{med(r.published_max_ms for r in lat):>9.1f}{med(r.http_p50_ms for r in lat):>10.1f}"
      f"{med(r.http_p99_ms for r in lat):>10.1f}{med(r.lag_p99_ms for r in lat):>9.2f}")
    w("")
    met = p99 <= P99_TARGET_MS and all(r.accepted == r.offered for r in lat)
    w(f"accept -> publish p99 (median of rounds): {p99:.1f} ms   target <= {P99_TARGET_MS:g} ms "
      f"at {args.rate:g} req/s: {'MET' if met else 'NOT MET'}")
    w(f"database: {results.stored} messages stored, {results.pending} still pending after "
      f"the last drain")
    w(f"gateway log: {len(results.log_problems)} warnings or errors"
      + "".join(f"\n  {line}" for line in results.log_problems[:5]))
    if results.profile:
        w("")
        w(f"profile: one extra run per server under py-spy --gil (not in the figures above), "
          f"files in {args.profile}")
        w(results.profile)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Gateway send path vs a hello-world route on the same stack.")
    parser.add_argument("--seconds", type=float, default=10, help="per load run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--connections", type=int, default=64,
                        help="wrk keep-alive connections (default 64)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds per server (default 2)")
    parser.add_argument("--rate", type=float, default=200,
                        help="open-loop offered load for accept -> publish (default 200 req/s)")
    parser.add_argument("--rate-seconds", type=float, default=None,
                        help="open-loop duration per round (default: --seconds)")
    parser.add_argument("--rate-connections", type=int, default=64,
                        help="open-loop keep-alive connections (default 64)")
    parser.add_argument("--pg-url", default=os.environ.get(
        "KOSMO_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (a role that may CREATE DATABASE) [env KOSMO_BENCH_PG_URL]")
    parser.add_argument("--mqtt-url", default=os.environ.get(
        "KOSMO_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883"),
        help="MQTT broker [env KOSMO_BENCH_MQTT_URL]")
    parser.add_argument("--gateway-cmd", default=f"{BIN / 'kosmo'} gateway",
                        help="command that serves the gateway, configured by the KOSMO_* "
                             "environment (default: this venv's `kosmo gateway`)")
    parser.add_argument("--profile", metavar="DIR",
                        help="after the rounds, record one more run of each server with "
                             "py-spy --gil (collapsed stacks) into DIR and summarize them")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds < 2 or args.rate <= 0 or args.connections < 1:
        parser.error("need --rounds >= 1, --seconds >= 2, --rate > 0, --connections >= 1")
    args.rate_seconds = args.rate_seconds or args.seconds
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    if args.profile and not (shutil.which("py-spy") or (BIN / "py-spy").exists()):
        parser.error("--profile needs py-spy (pip install py-spy)")

    run_main(lambda: run(args), "servers stopped, database dropped")


def run(args: argparse.Namespace) -> str:
    args.code = source_version()  # what the servers start from, before any edit lands
    tag = secrets.token_hex(4)
    topic_root, client_id = f"bench{tag}", f"bench-gw-{tag}"
    with log_dir("kosmo_bench_") as logs, contextlib.ExitStack() as stack:
        say(f"database bench_{tag}, topic root {topic_root}, logs in {logs}")
        db_url = stack.enter_context(bench_database(args.pg_url, f"bench_{tag}"))
        env = gateway_env(db_url, args.mqtt_url, topic_root, client_id)
        hello_port = args.gateway_port = free_port()
        while args.gateway_port == hello_port:
            args.gateway_port = free_port()
        args.hello_url = f"http://127.0.0.1:{hello_port}"
        args.gateway_url = f"http://127.0.0.1:{args.gateway_port}"
        env["KOSMO_HTTP_BIND"] = f"127.0.0.1:{args.gateway_port}"
        stack.callback(forget_mqtt_session, args.mqtt_url, client_id)
        announce_bridge(args.mqtt_url, topic_root)
        hello = stack.enter_context(server(
            "hello-world", [sys.executable, str(HERE / "hello.py"), "--bind",
                            f"127.0.0.1:{hello_port}"], env, logs / "hello.log"))
        gateway = stack.enter_context(server(
            "gateway", shlex.split(args.gateway_cmd), env, logs / "gateway.log"))
        wait_ready("hello-world", hello, args.hello_url + PATH, logs / "hello.log",
                   any_answer=True)
        wait_ready("gateway", gateway, args.gateway_url + "/readyz", logs / "gateway.log",
                   any_answer=False)
        results = trio.run(measure, args, hello, gateway, db_url, topic_root)
        results.log_problems = log_problems(logs / "gateway.log")
        return report(args, results)


if __name__ == "__main__":
    main()
