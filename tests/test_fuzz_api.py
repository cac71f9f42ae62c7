"""Schemathesis against the served /openapi.json: no input yields a 5xx (header auth mode).

Sized for CI; set KOSMO_FUZZ_EXAMPLES for a longer run by hand."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trio

from tests.conftest import SANCTUARY, Gateway

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


async def test_no_generated_request_gets_a_server_error(gateway: Gateway, tmp_path: Path):
    examples = os.environ.get("KOSMO_FUZZ_EXAMPLES", "25")
    result = await trio.run_process(
        [str(SCHEMATHESIS), "run", f"{gateway.url}/openapi.json",
         "-H", f"X-User-ID: {SANCTUARY}", "--checks", "not_a_server_error",
         "--max-examples", examples, "--seed", "1", "--no-color"],
        capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path)
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output[-4000:]
