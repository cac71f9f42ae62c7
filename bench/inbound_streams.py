"""The inbound benchmark's websocket clients: processes of bench/stream_clients.py, up to
``--per-process`` live streams each, one synthetic user per stream, every frame timed on
arrival and handed over when asked."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio
from common import BenchError  # bench/ is on sys.path when run as a script
from helper_process import Helper
from inbound_setup import MESSAGE_PREFIX, USER_TEMPLATE

HERE = Path(__file__).resolve().parent


class StreamClients:
    def __init__(self) -> None:
        self.helpers: list[Helper] = []

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self.helpers]

    async def connect(self, count: int, *, gateway_url: str, per_process: int,
                      max_seconds: float) -> tuple[int, int]:
        """Streams for the users 0 .. count - 1; (connected, failed) once every process is
        ready."""
        per = per_process
        for n, low in enumerate(range(0, count, per)):
            users = ",".join(USER_TEMPLATE.format(u) for u in range(low, min(count, low + per)))
            cmd = [sys.executable, str(HERE / "stream_clients.py"), "--url", gateway_url,
                   "--users", users, "--message-prefix", MESSAGE_PREFIX,
                   "--max-seconds", str(max_seconds)]
            process = await trio.lowlevel.open_process(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            self.helpers.append(Helper(f"stream clients {n}", process))
        connected = failed = 0
        for helper in self.helpers:
            with trio.fail_after(120):
                line = (await helper.readline()).split()
            if line[0] != "ready":
                raise BenchError(f"{helper.name} said {line!r}")
            connected, failed = connected + int(line[1]), failed + int(line[2])
        return connected, failed

    async def disconnect(self) -> None:
        clients, self.helpers = self.helpers, []
        async with trio.open_nursery() as nursery:
            for helper in clients:
                nursery.start_soon(helper.stop)

    async def received(self, kind: str) -> tuple[dict[Any, float], Counter[int]]:
        """What the streams received since the last call: when each item of this kind
        (``inbound``: by packet id; ``status``: by (message, status)) first arrived, and how
        many streams the gateway closed, by close code."""
        received: dict[Any, float] = {}
        closed: Counter[int] = Counter()
        with trio.fail_after(60):
            for helper in self.helpers:
                await helper.send("dump")
                for line in await helper.read_until_end():
                    part = line.split()
                    if part[0] == "i" and kind == "inbound":
                        received.setdefault(int(part[1]), float(part[2]))
                    elif part[0] == "s" and kind == "status":
                        received.setdefault((int(part[1]), part[2]), float(part[3]))
                    elif part[0] == "c":
                        closed[int(part[1])] += int(part[2])
        return received, closed
