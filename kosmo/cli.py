"""The ``kosmo`` command: migrate, seed, gateway, up.

Rules:
- A bad or missing setting prints one line (``kosmo: error: ...``) and exits 2; a service that
  cannot be reached at start prints one line and exits 1. No traceback for either.
- Ctrl-C or SIGTERM stops cleanly: the HTTP front finishes requests in progress, actors stop,
  embedded services (``kosmo up``) are shut down. A second signal stops at once.
- ``kosmo gateway`` with one worker (the default) serves in its own process; with more it
  supervises that many worker processes (``kosmo.workers``), each a ``kosmo gateway --worker K``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import trio

from kosmo import config, heap, logs, migrate
from kosmo.config import ConfigError, Settings
from kosmo.db import DatabaseUnavailable
from kosmo.process_store import Fenced

log = logging.getLogger("kosmo")
T = TypeVar("T")

DESCRIPTION = """\
KosmoConnect Gateway: lets people on the web message nodes of a Meshtastic mesh.

Every option can also be set in the environment (KOSMO_*); a command-line flag wins.
Start here:  kosmo up   (the whole stack on embedded defaults, data in ./.kosmo)
"""

GATEWAY_OPTIONS = list(config.OPTIONS)
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
STOP_DEADLINE = 15.0  # seconds from the first signal to a forced stop
DB_OPTIONS = ["database_url"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kosmo", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=os.environ.get("KOSMO_LOG_LEVEL", "INFO"),
                        type=str.upper, choices=LOG_LEVELS,
                        help="log verbosity (default INFO) [env KOSMO_LOG_LEVEL]")
    parser.add_argument("--log-format", default=os.environ.get("KOSMO_LOG_FORMAT", "text"),
                        type=str.lower, choices=logs.FORMATS,
                        help="text lines, or json: one JSON object per line with time, level, "
                             "logger, message and the message, node and bridge ids "
                             "(default text) [env KOSMO_LOG_FORMAT]")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser("migrate", help="apply pending database migrations (idempotent)")
    config.add_arguments(sub, DB_OPTIONS)
    sub = commands.add_parser("seed", help="load the demo users, subscriptions and whitelist")
    config.add_arguments(sub, DB_OPTIONS)
    sub = commands.add_parser("gateway", help="serve the HTTP API and the MQTT actors")
    config.add_arguments(sub, GATEWAY_OPTIONS)
    sub.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    from kosmo.up import MAX_RADIOS, parse_radios

    sub = commands.add_parser(
        "up", help="run the whole stack on embedded defaults (PostgreSQL, MQTT broker, "
                   "gateway, simulated radios and their bridges)",
        description="Start an embedded PostgreSQL and an MQTT broker (mosquitto if installed, "
                    "else amqtt), migrate, seed the demo data and serve the gateway in header "
                    "auth mode, with simulated radios (one by default), each with a bridge "
                    "attached to it. Data is kept in --data-dir. Ctrl-C stops everything.")
    sub.add_argument("--data-dir", type=Path, default=Path(".kosmo"),
                     help="where the embedded services keep their data (default ./.kosmo)")
    sub.add_argument("--radios", type=parse_radios, default=1, metavar="N",
                     help=f"simulated radios, each with its own bridge, 1..{MAX_RADIOS}; all hear "
                          "!a1b2c3d4 and each two nodes of its own (default 1)")
    config.add_arguments(sub, ["http_bind", "metrics_bind", "max_text_bytes", "message_ttl"])

    import bridge.cli
    from bridge.sim import cli as sim_cli

    sub = commands.add_parser("bridge", help="run a bridge next to a Meshtastic radio",
                              description=bridge.cli.DESCRIPTION)
    bridge.cli.add_arguments(sub)

    sub = commands.add_parser(
        "sim-radio", help="a simulated Meshtastic radio on TCP, for tests and demos",
        description="A TCP server speaking the Meshtastic device protocol, with simulated "
                    "remote nodes that acknowledge and reply. The stock meshtastic CLI and "
                    "the bridge connect to it as to a real radio.")
    sim_cli.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level not in LOG_LEVELS:
        parser.error(f"KOSMO_LOG_LEVEL is invalid: {args.log_level!r} is not one of "
                     + ", ".join(LOG_LEVELS))
    if args.log_format not in logs.FORMATS:
        parser.error(f"KOSMO_LOG_FORMAT is invalid: {args.log_format!r} is not one of "
                     + ", ".join(logs.FORMATS))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.formatter(args.log_format))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    try:
        code = COMMANDS[args.command](args)
    except Exception as exc:  # known start-up failures become one line; others go on up
        line, code = _one_line(exc)
        if line is None:
            raise
        print(f"kosmo: error: {line}", file=sys.stderr)
    sys.exit(code)


def _one_line(exc: BaseException) -> tuple[str | None, int]:
    """The one line and exit code for a known start-up failure, also inside task groups."""
    from kosmo.embedded import EmbeddedServiceError

    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, ConfigError):
        return str(exc), 2
    if isinstance(exc, DatabaseUnavailable):
        return f"cannot reach the database: {exc}", 1
    if isinstance(exc, EmbeddedServiceError | migrate.SchemaNotCurrent):
        return str(exc), 1
    if isinstance(exc, Fenced):
        return f"{exc}: stopped publishing; start it again", 1
    return None, 1


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = config.load(os.environ, args)
    applied = _db_call(migrate.migrate, settings.database_url)
    print(f"applied {len(applied)} migrations: {', '.join(applied)}" if applied
          else "database schema is up to date")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    settings = config.load(os.environ, args)
    _db_call(migrate.seed, settings.database_url)
    print("demo data loaded (users 1111..., 2222..., 3333..., 4444..., 5555...)")
    return 0


def _db_call(fn: Callable[[str], T], url: str) -> T:
    import psycopg

    try:
        return fn(url)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(str(exc).strip().splitlines()[0]) from None


def cmd_gateway(args: argparse.Namespace) -> int:
    settings = config.load(os.environ, args, serving=True)
    if args.worker is not None:  # one of the processes of --workers N
        settings = settings.replace(reuse_port=True)
        return trio.run(_until_signal, lambda shutdown: _serve_worker(settings, shutdown))
    log.info("settings: %s", settings.describe())
    if settings.workers > 1:
        return trio.run(_until_signal, lambda shutdown: _supervise(args, settings, shutdown))
    return trio.run(_until_signal, lambda shutdown: _serve(settings, shutdown))


async def _serve(settings: Settings, shutdown: trio.Event) -> None:
    from actors.gateway import run_gateway

    heap.settle()
    await run_gateway(settings, shutdown)


async def _serve_worker(settings: Settings, shutdown: trio.Event) -> None:
    from kosmo.workers import watch_parent

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_parent, shutdown)
        await _serve(settings, shutdown)
        nursery.cancel_scope.cancel()


async def _supervise(args: argparse.Namespace, settings: Settings, shutdown: trio.Event) -> None:
    from kosmo import workers

    flags = {name: getattr(args, name) for name in GATEWAY_OPTIONS
             if getattr(args, name, None) is not None}
    commands = {
        k: (workers.worker_command(k, args.log_level, args.log_format),
            workers.worker_environ(os.environ, flags, settings, k))
        for k in range(1, settings.workers + 1)}
    log.info("starting %d gateway workers on %s:%d", settings.workers, *settings.http_bind)
    await workers.supervise(commands, shutdown)


def cmd_up(args: argparse.Namespace) -> int:
    from kosmo.up import run_up

    environ = {k: v for k, v in os.environ.items() if k.startswith("KOSMO_")}
    environ["KOSMO_AUTH_MODE"] = "header"
    return trio.run(_until_signal, lambda shutdown: run_up(args, environ, shutdown))


async def _until_signal(body: Callable[[trio.Event], Awaitable[None]]) -> int:
    """Run ``body(shutdown)``; the first SIGINT/SIGTERM sets ``shutdown`` and starts the stop
    deadline, a second signal cancels at once."""
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    if shutdown.is_set():
                        log.warning("second signal: stopping now")
                        nursery.cancel_scope.cancel()
                        return
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    shutdown.set()
                    # Stop by deadline: whatever has not finished by then is cancelled.
                    nursery.cancel_scope.deadline = trio.current_time() + STOP_DEADLINE

            nursery.start_soon(watch)
            await body(shutdown)
            nursery.cancel_scope.cancel()
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    import bridge.cli

    return trio.run(_until_signal, lambda shutdown: bridge.cli.run(args, shutdown))


def cmd_sim_radio(args: argparse.Namespace) -> int:
    from bridge.sim import cli as sim_cli

    return sim_cli.main(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "migrate": cmd_migrate, "seed": cmd_seed, "gateway": cmd_gateway, "up": cmd_up,
    "bridge": cmd_bridge, "sim-radio": cmd_sim_radio,
}
