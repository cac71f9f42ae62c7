"""The ``sim-radio`` command: a simulated Meshtastic radio on TCP, for demos and tests.

Rules:
- One line on stdout once listening (it names the port, so ``--port 0`` is usable), then serve
  until Ctrl-C or SIGTERM, then one summary line and exit 0.
- A port that cannot be bound: one line on stderr (``sim-radio: error: ...``), exit 1.
- Bad arguments are argparse errors (exit 2), and so are contradictory ones (one line on
  stderr, exit 2).
- The remote nodes the radio reaches are ``--hears`` if given (exactly those), else ``--nodes``
  generated ones; giving both is an error. ``--unreachable``, ``--silent`` and ``--no-key``
  mark nodes either way, adding the ones not reached as known nodes; a node both in
  ``--hears`` and ``--unreachable`` is an error. Several radios (several commands, each on its
  own port, each with its own ``--node-id``) may hear some of the same nodes.
- ``--air-log FILE``: one JSON line per text put on air, appended (bridge/sim/air.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from bridge.sim.air import AirLog
from bridge.sim.config import OUR_NODE_NUM, Reach, SimConfig, SimNode, make_nodes
from bridge.sim.protocol import parse_node_id
from bridge.sim.radio import SimRadio
from bridge.sim.server import DEFAULT_PORT, serve_radio
from kosmo.airtime import PRESETS

EPILOG = (
    "Which nodes the radio reaches: exactly those of --hears if given, else --nodes generated "
    "ones (not both). --unreachable, --silent and --no-key mark nodes either way; those not "
    "reached become known nodes the radio cannot reach (a node both in --hears and "
    "--unreachable is an error). A text to a node the radio does not know is retried, then "
    "NAKed MAX_RETRANSMIT. Several radios, each on its own --port with its own --node-id, may "
    "hear some of the same nodes.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port to listen on, 0 for any free one (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--node-id", type=_node_id, default=OUR_NODE_NUM, metavar="!ID",
                        help=f"this radio's own node id (default !{OUR_NODE_NUM:08x})")
    parser.add_argument("--nodes", type=_positive_int, default=None,
                        help="remote nodes this radio reaches, generated: the first is "
                             "!a1b2c3d4 (default 3; not with --hears)")
    parser.add_argument("--hears", type=_node_id, nargs="+", action="extend", default=None,
                        metavar="!ID", help="exactly the remote nodes this radio reaches, "
                                            "instead of --nodes; several radios may share some")
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
    parser.add_argument("--no-key", type=_node_id, nargs="+", action="extend", default=[],
                        metavar="!ID", help="nodes whose public key this radio lacks: a direct "
                                            "message to one is refused unsent with "
                                            "PKI_SEND_FAIL_PUBLIC_KEY, as firmware 2.7 does")
    parser.add_argument("--air-log", type=Path, default=None, metavar="FILE",
                        help='append one JSON line per text put on air (a retransmission '
                             'too, with its packet id): {"at", "packet_id", "to", "bytes", '
                             '"text"}')
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
    """The radio the arguments describe; ``ValueError`` for a contradiction among them."""
    if args.hears is not None and args.nodes is not None:
        raise ValueError("give --hears or --nodes, not both")
    nodes = make_nodes(3 if args.nodes is None else args.nodes, hears=args.hears,
                       unreachable=args.unreachable, silent=args.silent, no_key=args.no_key,
                       auto_reply=args.auto_reply)
    return SimConfig(nodes=nodes, my_node_num=args.node_id, latency=args.latency,
                     loss=args.loss, auto_reply=args.auto_reply, region=args.region,
                     modem_preset=args.modem_preset, duty_cycle=args.duty_cycle, seed=args.seed)


async def run(args: argparse.Namespace, config: SimConfig) -> int:
    air_log = AirLog(args.air_log) if args.air_log is not None else None
    try:
        return await _serve(args, config, air_log)
    finally:
        if air_log is not None:
            air_log.close()


async def _serve(args: argparse.Namespace, config: SimConfig, air_log: AirLog | None) -> int:
    radio = SimRadio(config, epoch=time.time(), on_air=air_log.write if air_log else None)
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
    notes += [] if node.has_key else ["no key"]
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
