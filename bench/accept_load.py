"""The load of bench/accept.py: wrk runs (closed loop), the open-loop sender and its MQTT
subscriber, and the CPU each run used. Everything here runs inside the bench's Trio loop,
bounded by timeouts."""

from __future__ import annotations

import contextlib
import json
import math
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h11
import trio
from common import BenchError, percentile  # bench/ is on sys.path when run as a script
from proc_stats import machine_cpu, process_cpu, process_tree

HERE = Path(__file__).resolve().parent
SANCTUARY = "33333333-3333-3333-3333-333333333333"  # demo user with unlimited quota
PATH = "/api/v1/messages"
BRIDGE = "bench"


def user_id(index: int) -> str:
    """The ``index``-th sending user (``--users``): the demo Sanctuary user first, then users of
    the same plan that the bench adds (``accept.add_users``)."""
    return SANCTUARY if index == 0 else f"33333333-3333-3333-3333-{index:012x}"


def node_id(index: int) -> str:
    """The ``index``-th node of the open-loop runs (``!a1b2c3d4`` is the first)."""
    return f"!{0xA1B2C3D4 + index:08x}"


def body(node: str) -> bytes:
    return json.dumps({"target_node_id": node, "text": "bench: hello from the web"}).encode()


# --- CPU accounting -------------------------------------------------------------------------


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """CPU used between ``start`` and ``stop``, in % of one core, per role. ``server`` counts
    the server's process and its descendants (``--workers``: the supervisor and every
    worker); ``main`` their Trio threads only."""

    server: int
    backends: list[int] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        tree = process_tree(self.server)
        return {"server": sum(process_cpu(p) for p in tree),
                "main": sum(process_cpu(p, p) for p in tree),
                "postgres": sum(process_cpu(p) for p in self.backends),
                "client": children_cpu(), "machine": machine_cpu(), "wall": time.monotonic()}

    def start(self) -> None:
        self.marks = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        wall = now["wall"] - self.marks["wall"]
        return {k: 100 * (now[k] - self.marks[k]) / wall for k in now if k != "wall"}


# --- closed loop with wrk -------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu: dict[str, float]
    transactions: float = math.nan  # database transactions committed per request

    def cpu_ms(self, role: str) -> float:
        """CPU of ``role`` per request, in ms."""
        return 10 * self.cpu[role] / self.rps if self.rps else math.nan


async def run_wrk(target: str, url: str, seconds: float, connections: int, meter: CpuMeter,
                  *, get: str | None = None, users: int = 1) -> Throughput:
    """``connections`` keep-alive clients in a closed loop for ``seconds``: sends (as
    ``users`` users in turn), or GETs of the path ``get``."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
           "-s", str(HERE / "post.lua"), url]
    env = {"BENCH_GET": get} if get else {"BENCH_USERS": str(users)}
    meter.start()
    with trio.fail_after(seconds + 30):
        done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                                      env={**_environ(), **env})
    cpu = meter.stop()
    out = done.stdout.decode(errors="replace")
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{out}\n{done.stderr.decode()}")
    s = json.loads(line.removeprefix("BENCH "))
    errors = sum(s[k] for k in ("connect_errors", "read_errors", "write_errors",
                                "status_errors", "timeouts"))
    return Throughput(target, connections, s["requests"] / (s["duration_us"] / 1e6),
                      s["p50_us"] / 1000, s["p99_us"] / 1000, s["requests"], errors, cpu)


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("BENCH_GET", "BENCH_USERS")}


# --- open loop: sends at a fixed rate, and the MQTT subscriber ------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 client connection (h11 over a Trio socket)."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self._stream = stream
        self._h11 = h11.Connection(h11.CLIENT)
        self._host = host

    async def post(self, data: bytes, user: str = SANCTUARY) -> tuple[int, bytes]:
        conn = self._h11
        headers = [("Host", self._host), ("Content-Type", "application/json"),
                   ("X-User-ID", user), ("Content-Length", str(len(data)))]
        await self._stream.send_all(
            conn.send(h11.Request(method="POST", target=PATH, headers=headers))
            + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
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


async def open_loop(host: str, port: int, rate: float, seconds: float, connections: int,
                    nodes: int, users: int = 1) -> list[Sample]:
    """Offer ``rate`` sends/s for ``seconds``, request i due at start + i / rate, to node
    i mod ``nodes``, as user i mod ``users``."""
    total = int(rate * seconds)
    bodies = [body(node_id(n)) for n in range(nodes)]
    senders = [user_id(u) for u in range(users)]
    samples: list[Sample] = []

    async def worker(conn: HttpConnection,
                     jobs: trio.MemoryReceiveChannel[tuple[float, bytes, str]]) -> None:
        async with jobs:
            async for scheduled, data, user in jobs:
                sent = time.monotonic()
                status, answer = await conn.post(data, user)
                answered = time.monotonic()
                message_id = json.loads(answer).get("message_id") if status == 201 else None
                samples.append(Sample(scheduled, sent, answered, status, message_id))

    async with contextlib.AsyncExitStack() as stack:
        conns = []
        for _ in range(connections):
            stream = await stack.enter_async_context(await trio.open_tcp_stream(host, port))
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(HttpConnection(stream, f"{host}:{port}"))
        send, receive = trio.open_memory_channel[tuple[float, bytes, str]](total)  # bounded
        # An overloaded server may not answer everything in time: what is still unanswered
        # then is reported as such (``unanswered``), and the run goes on.
        with trio.move_on_after(seconds + 30):
            async with trio.open_nursery() as nursery:
                async with receive:
                    for conn in conns:
                        nursery.start_soon(worker, conn, receive.clone())
                async with send:
                    start, mono = trio.current_time(), time.monotonic()
                    for i in range(total):
                        await trio.sleep_until(start + i / rate)
                        send.send_nowait((mono + i / rate, bodies[i % nodes],
                                          senders[i % users]))
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
    target: str
    nodes: int
    offered: int
    unanswered: int  # no answer within the run's deadline (the run length + 30 s)
    accepted: int
    published_p50_ms: float
    published_p99_ms: float
    published_max_ms: float
    http_p50_ms: float
    http_p99_ms: float
    lag_p99_ms: float  # how late the client sent, against the schedule
    missing: int  # accepted but never seen by the subscriber
    twice: int = 0  # publishes of a message the subscriber had already seen


async def accept_to_publish(target: str, mqtt_url: str, port: int, topic_root: str, *,
                            rate: float, seconds: float, connections: int, nodes: int,
                            drained: Callable[[], Awaitable[None]], users: int = 1) -> Latency:
    cmd = [sys.executable, str(HERE / "subscriber.py"), "--mqtt-url", mqtt_url,
           "--topic", f"{topic_root}/bridge/{BRIDGE}/outbound/+", "--max-seconds",
           str(seconds + 120)]
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(partial(trio.run_process, cmd, stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, check=False))
        lines = LineReader(proc.stdout)
        with trio.fail_after(10):
            while await lines.readline() != b"subscribed":
                pass
        samples = await open_loop("127.0.0.1", port, rate, seconds, connections, nodes, users)
        await drained()
        await trio.sleep(0.5)  # the last publishes reach the subscriber before `queued` commits
        await proc.stdin.aclose()
        seen: dict[str, float] = {}
        copies = 0  # arrivals of a message already seen
        with trio.fail_after(30):
            while (line := await lines.readline()) != b"end":
                message_id, at = line.decode().split()
                copies += message_id in seen
                seen.setdefault(message_id, float(at))
    accepted = [s for s in samples if s.status == 201 and s.message_id]
    published = [1000 * (seen[s.message_id] - s.scheduled) for s in accepted
                 if s.message_id in seen]
    http = [1000 * (s.answered - s.scheduled) for s in samples]
    lag = [1000 * (s.sent - s.scheduled) for s in samples]
    return Latency(target, nodes, int(rate * seconds), int(rate * seconds) - len(samples),
                   len(accepted), percentile(published, 50),
                   percentile(published, 99), max(published, default=math.nan),
                   percentile(http, 50), percentile(http, 99), percentile(lag, 99),
                   len(accepted) - len(published), copies)


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
