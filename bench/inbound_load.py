"""The inbound benchmark's load generator: publisher processes (bench/mesh_publisher.py, paho,
QoS 1) that offer a step open loop, item i due at t0 + i/rate, and which items each step
offers (a reply's packet id, a report's message, are never offered twice in a run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio
from helper_process import Helper, start_helper  # bench/ is on sys.path when run as a script
from inbound_setup import MESSAGE_TEMPLATE, NODE_TEMPLATE

HERE = Path(__file__).resolve().parent


class Publishers:
    def __init__(self) -> None:
        self.helpers: list[Helper] = []
        self.next_seq = 1  # packet ids of replies
        self.next_report = 0  # report i is on message i // 2

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.helpers]

    async def start(self, a: argparse.Namespace) -> None:
        """``--publishers`` processes, each connected to the broker."""
        n = a.publishers
        for index in range(n):
            cmd = [sys.executable, str(HERE / "mesh_publisher.py"), "--mqtt-url", a.mqtt_url,
                   "--topic-root", a.topic_root, "--procs", str(n), "--index", str(index),
                   "--users", str(a.users), "--node-template", NODE_TEMPLATE,
                   "--message-template", MESSAGE_TEMPLATE, "--max-seconds", str(a.max_seconds)]
            self.helpers.append(await start_helper(f"publisher {index}", cmd, "connected", 15))

    def first(self, kind: str, total: int) -> int:
        """The first item of a step of ``total`` items of this kind (0 for ``void``)."""
        if kind == "status":
            first, self.next_report = self.next_report, self.next_report + total + total % 2
        elif kind == "inbound":
            first, self.next_seq = self.next_seq, self.next_seq + total
        else:
            first = 0
        return first

    async def offer(self, kind: str, rate: float, seconds: float, t0: float,
                    first: int) -> None:
        """Every publisher starts the step: its share of the items, due from ``t0`` on."""
        command = json.dumps({"kind": kind, "rate": rate, "seconds": seconds, "t0": t0,
                              "first": first})
        for pub in self.helpers:
            await pub.send(command)

    async def answers(self, within: float) -> list[dict[str, Any]]:
        """Each publisher's account of the step: published, acked, its lag and CPU."""
        with trio.fail_after(within):
            return [json.loads(await pub.readline()) for pub in self.helpers]
