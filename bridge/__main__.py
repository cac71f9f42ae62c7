"""``python -m bridge``: the bridge daemon on its own, with the flags of ``kosmo bridge``.

Rules: as the ``kosmo`` CLI. A bad setting prints one line and exits 2. The first SIGINT or
SIGTERM stops the bridge cleanly (it takes well under 5 s; after 10 s whatever is left is
cancelled); a second signal stops it at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

from bridge.cli import DESCRIPTION, add_arguments, run
from kosmo.config import ConfigError

STOP_DEADLINE = 10.0


async def _serve(args: argparse.Namespace) -> None:
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    if shutdown.is_set():
                        nursery.cancel_scope.cancel()
                        return
                    logging.getLogger("kosmo.bridge").info(
                        "%s received: shutting down", signal.Signals(signum).name)
                    shutdown.set()
                    nursery.cancel_scope.deadline = trio.current_time() + STOP_DEADLINE

            nursery.start_soon(watch)
            await run(args, shutdown)
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge", description=DESCRIPTION)
    parser.add_argument("--log-level", default=os.environ.get("KOSMO_LOG_LEVEL", "INFO"),
                        type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log verbosity (default INFO) [env KOSMO_LOG_LEVEL]")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failed: ConfigError | None = None
    try:
        trio.run(_serve, args)
    except* ConfigError as group:
        failed = group.exceptions[0]  # type: ignore[assignment]
    if failed is not None:
        print(f"bridge: error: {failed}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
