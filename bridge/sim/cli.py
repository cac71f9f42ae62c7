"""The ``sim-radio`` command: a simulated Meshtastic radio on TCP, for demos and tests.

Rules:
- One line on stdout once listening (it names the port, so ``--port 0`` is usable), then serve
  until Ctrl-C or SIGTERM, then one summary line and exit 0.
- A port that cannot be bound: one line on stderr (``sim-radio: error: ...``), exit 1.
- Bad arguments are argparse errors (exit 2).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from functools import partial

import trio

from bridge.airtime import PRESETS
from bridge.sim.config import Reach, SimConfig, SimNode, make_nodes
from bridge.sim.protocol import parse_node_id
from bridge.sim.radio import SimRadio
from bridge.sim.server import DEFAULT_PORT, serve_radio


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port to listen on, 0 for any free one (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--nodes", type=_positive_int, default=3,
                        help="remote nodes in the mesh, the first is !a1b2c3d4 (default 3)")
    parser.add_argument("--time-scale", type=_positive, default=1.0, metavar="X",
                        help="simulated time runs X times faster than wall time (default 1)")
    parser.add_argument("--latency", type=_non_negative, default=2.0, metavar="SECONDS",
                        help="simulated seconds between a transmission, its implicit ACK, the "
                             "delivery ACK and the reply (default 2)")
    parser.add_argument("--loss", type=_probability, default=0.0, metavar="P",
                        help="probability that one transmission is heard by nobody (default 0)")
    parser.add_argument("--unreachable", type=_node_id, nargs="+", action="extend", default=[],
                        metavar="!ID", help="known nodes nobody can reach: retries, then a "
                                            "MAX_RETRANSMIT NAK")
    parser.add_argument("--silent", type=_node_id, nargs="+", action="extend", default=[],
                        metavar="!ID", help="known nodes that are relayed to (implicit ACK) but "
                                            "never answer")
    parser.add_argument("--no-auto-reply", dest="auto_reply", action="store_false",
                        help="remote nodes do not answer texts with 'ack: <text>'")
    parser.add_argument("--region", default="EU_868", help="LoRa region (default EU_868)")
    parser.add_argument("--modem-preset", default="LONG_FAST", choices=sorted(PRESETS),
                        metavar="PRESET", help="modem preset, sets the airtime: "
                        f"{', '.join(sorted(PRESETS))} (default LONG_FAST)")
    parser.add_argument("--duty-cycle", type=_positive, default=None, metavar="PERCENT",
                        help="hourly transmit budget (default: the region's, 10 for EU_868; "
                             "100 for none)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for loss and ids")


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"sim-radio: error: {exc}", file=sys.stderr)
        return 2
    return trio.run(run, args, config)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    nodes = make_nodes(args.nodes, unreachable=args.unreachable, silent=args.silent,
                       auto_reply=args.auto_reply)
    return SimConfig(nodes=nodes, latency=args.latency, loss=args.loss,
                     auto_reply=args.auto_reply, region=args.region,
                     modem_preset=args.modem_preset, duty_cycle=args.duty_cycle, seed=args.seed)


async def run(args: argparse.Namespace, config: SimConfig) -> int:
    radio = SimRadio(config, epoch=time.time())
    bind_error: BaseException | None = None
    port: int | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(partial(serve_radio, radio, args.port, host=args.host,
                                                   time_scale=args.time_scale))
                print(f"sim-radio: listening on {args.host}:{port} - {describe(config)}",
                      flush=True)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
        except* OSError as group:
            if port is not None:  # not a failure to bind
                raise
            bind_error = group.exceptions[0]
    if bind_error is not None:
        print(f"sim-radio: error: cannot listen on {args.host}:{args.port}: {bind_error}",
              file=sys.stderr)
        return 1
    stats = radio.stats
    print(f"sim-radio: stopped; {stats.received} packets from clients, "
          f"{stats.transmissions.total()} transmissions, {stats.naks.total()} NAKs", flush=True)
    return 0


def describe(config: SimConfig) -> str:
    """Our node, the region and the remote nodes with how they behave, on one line."""
    return (f"node !{config.my_node_num:08x}, {config.region} {config.modem_preset}, "
            f"remote nodes: {', '.join(_describe_node(n) for n in config.nodes)}")


def _describe_node(node: SimNode) -> str:
    notes = [] if node.reach is Reach.REACHABLE else [node.reach.value]
    notes += ["direct"] if node.hops_away == 0 else []
    return node.id + (f" ({', '.join(notes)})" if notes else "")


def _number(kind: Callable[[str], float], ok: Callable[[float], bool],
            why: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} {why}")
        return value
    return parse


_positive_int = _number(int, lambda v: v > 0, "must be positive")
_positive = _number(float, lambda v: v > 0, "must be positive")
_non_negative = _number(float, lambda v: v >= 0, "must not be negative")
_probability = _number(float, lambda v: 0 <= v <= 1, "must be between 0 and 1")


def _node_id(text: str) -> int:
    try:
        return parse_node_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
