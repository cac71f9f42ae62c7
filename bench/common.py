"""What the benchmarks share: progress lines and the version of the code measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
