"""What the benchmarks share: progress lines, the version measured, stopping and errors,
percentiles."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent


def say(text: str) -> None:
    """A progress line on stderr; the results go to stdout."""
    print(f"  .. {text}", file=sys.stderr, flush=True)


def source_version() -> str:
    """The commit measured, ``-dirty`` when the working tree has uncommitted changes."""
    try:
        done = subprocess.run(["git", "-C", str(HERE.parent), "describe", "--always",
                               "--dirty"], capture_output=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return done.stdout.decode().strip() or "unknown"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class BenchError(Exception):
    """The benchmark cannot go on; ``str()`` says why."""


def interrupted(exc: BaseException) -> bool:
    """True for Ctrl-C or SIGTERM, also inside exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return all(interrupted(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


@contextmanager
def log_dir(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A new directory for the servers' logs, removed afterwards unless ``keep`` or the run
    failed other than by an interruption (the logs say why); a kept one is named on stderr."""
    logs = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield logs
    except BaseException as exc:
        keep = keep or not interrupted(exc)
        raise
    finally:
        if keep:
            print(f"logs kept in {logs}", file=sys.stderr)
        else:
            shutil.rmtree(logs, ignore_errors=True)


def log_problems(path: Path) -> list[str]:
    """The WARNING and ERROR lines of a gateway's log, but the header auth mode's warning."""
    return [line for line in path.read_text(errors="replace").splitlines()
            if (" WARNING " in line or " ERROR " in line) and "auth mode is" not in line]


@asynccontextmanager
async def sigterm_interrupts() -> AsyncIterator[None]:
    """Inside Trio, SIGTERM stops the body as Ctrl-C does (so cleanup runs the same way)."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_sigterm() -> None:
                async for _ in signals:
                    raise KeyboardInterrupt

            nursery.start_soon(on_sigterm)
            yield
            nursery.cancel_scope.cancel()


def run_main(body: Callable[[], str], stopped: str) -> None:
    """Run a benchmark's ``body`` and print its report; Ctrl-C or SIGTERM prints ``stopped``
    and exits 130, a ``BenchError`` prints its reason and exits 1."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # outside Trio; inside, sigterm_interrupts() takes over

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        text = body()
    except* KeyboardInterrupt:
        print(f"interrupted; {stopped}", file=sys.stderr)
        sys.exit(130)
    except* BenchError as group:
        for exc in group.exceptions:
            print(f"bench: error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(text)
