"""The ``kosmo bridge`` command: the two entry points the ``kosmo`` CLI wires in.

    sub = commands.add_parser("bridge", help=...)
    bridge.cli.add_arguments(sub)
    ...
    trio.run(_until_signal, lambda shutdown: bridge.cli.run(args, shutdown))

Rules: a bad setting raises ``kosmo.config.ConfigError`` (one line; the CLI exits 2), also
when another bridge already uses the state directory. An unreachable radio or broker is not an
error: the bridge waits for them, retrying with backoff, until ``shutdown`` is set.
"""

from __future__ import annotations

import argparse
import logging
import os

import trio

from bridge import config
from bridge.store import StoreLocked
from kosmo.config import ConfigError

log = logging.getLogger("kosmo.bridge")

DESCRIPTION = ("Run a bridge next to a Meshtastic radio: take outbound messages from the MQTT "
               "broker, transmit them at the pace the radio and the region allow, report "
               "their delivery, and publish direct messages the radio receives.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bridge's flags (each also settable in the environment) to ``parser``."""
    config.add_arguments(parser)


async def run(args: argparse.Namespace, shutdown: trio.Event) -> None:
    """Serve until ``shutdown`` is set, then stop within 5 s."""
    from bridge.daemon import run_bridge

    settings = config.load(os.environ, args)
    log.info("bridge settings: %s", settings.describe())
    try:
        await run_bridge(settings, shutdown)
    except* StoreLocked as group:
        raise ConfigError(f"KOSMO_BRIDGE_STATE_DIR is invalid: {group.exceptions[0]}") from None
