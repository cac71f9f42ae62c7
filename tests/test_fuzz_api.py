"""Schemathesis against the served /openapi.json, every operation, in both auth modes.

Checks: no input yields a 5xx (``not_a_server_error``), and every error response is RFC 9457
problem+json with ``type``, ``title`` and the HTTP ``status`` (``error_is_problem_json``, a
custom check in tests/fuzz_hooks.py, loaded through ``SCHEMATHESIS_HOOKS``).

Sized for CI (a few seconds per mode). For a longer run by hand, set KOSMO_FUZZ_EXAMPLES, the
examples per operation (default 25), e.g.

    KOSMO_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/test_fuzz_api.py -s

``-s`` prints the figures of each mode: operations, test cases, duration, failures.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio

from kosmo.config import Settings
from tests.conftest import SANCTUARY, db_value, start_gateway
from tests.fuzz_hooks import problem_json_violation

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
HOOKS = Path(__file__).with_name("fuzz_hooks.py")
CHECKS = "not_a_server_error,error_is_problem_json"
JWT_SECRET = "fuzz-secret-0123456789abcdef0123456789"


async def schemathesis(schema_url: str, cwd: Path, *args: str,
                       examples: str | None = None) -> tuple[int, str, dict[str, Any]]:
    """Run the schemathesis CLI; its exit code, its output and its JSON report."""
    examples = examples or os.environ.get("KOSMO_FUZZ_EXAMPLES", "25")
    report = cwd / "schemathesis.json"
    result = await trio.run_process(
        [str(SCHEMATHESIS), "run", schema_url, "--checks", CHECKS, "--max-examples", examples,
         "--seed", "1", "--no-color", "--report", "json", "--report-json-path", str(report),
         *args],
        capture_stdout=True, capture_stderr=True, check=False, cwd=cwd,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)})
    output = (result.stdout + result.stderr).decode(errors="replace")
    return result.returncode, output, json.loads(report.read_text()) if report.exists() else {}


@pytest.mark.parametrize("mode", ["header", "jwt"])
async def test_every_operation_answers_without_5xx_and_errors_as_problems(
        nursery: trio.Nursery, settings: Settings, sql, tmp_path: Path, mode: str):
    if mode == "jwt":
        settings = settings.replace(auth_mode="jwt", jwt_secret=JWT_SECRET)
        token = jwt.encode({"sub": str(SANCTUARY), "exp": int(time.time()) + 3600},
                           JWT_SECRET, algorithm="HS256")
        credential = f"Authorization: Bearer {token}"
    else:
        credential = f"X-User-ID: {SANCTUARY}"
    async with start_gateway(nursery, settings) as gateway:
        code, output, report = await schemathesis(f"{gateway.url}/openapi.json", tmp_path,
                                                  "-H", credential)
    assert code == 0, output[-6000:]
    operations, cases = report["operations"], report["test_cases"]
    print(f"\n{mode} mode: {operations['tested']}/{operations['total']} operations, "
          f"{cases['generated']} test cases, {report['running_time']:.1f} s, "
          f"{len(report['failures'])} failures")
    assert operations["tested"] == operations["total"] >= 8
    assert report["failures"] == []
    assert report["errors"] == []
    # The credential worked: generated sends got past authentication and were stored.
    assert db_value(sql, "SELECT count(*) FROM messages WHERE user_id = %s", SANCTUARY) > 0


# --- the check itself -------------------------------------------------------------------------

PROBLEM = {"content-type": ["application/problem+json"]}


@pytest.mark.parametrize(("status", "headers", "body", "broken"), [
    (404, PROBLEM, b'{"type": "/problems/not-found", "title": "Not found", "status": 404}', False),
    (422, {"Content-Type": ["application/problem+json; charset=utf-8"]},
     b'{"type": "/problems/x", "title": "X", "status": 422, "errors": []}', False),
    (200, {"content-type": ["text/plain"]}, b"fine", False),
    (404, {"content-type": ["text/html"]}, b"<h1>Not Found</h1>", True),
    (404, {}, b"", True),
    (404, {"content-type": ["application/json"]},
     b'{"type": "/problems/not-found", "title": "Not found", "status": 404}', True),
    (404, PROBLEM, b"not json", True),
    (404, PROBLEM, b"[]", True),
    (404, PROBLEM, b'{"title": "Not found", "status": 404}', True),
    (404, PROBLEM, b'{"type": "/problems/not-found", "status": 404}', True),
    (404, PROBLEM, b'{"type": "/problems/not-found", "title": "Not found"}', True),
    (404, PROBLEM, b'{"type": "/problems/not-found", "title": "Not found", "status": 400}', True),
    (404, PROBLEM, b'{"type": "/problems/not-found", "title": "Not found", "status": "404"}',
     True),
    (500, PROBLEM, b'{"type": "/problems/internal-error", "title": "Internal error", '
                   b'"status": 500}', False),
])
def test_the_problem_check_judges_responses(status, headers, body, broken):
    assert (problem_json_violation(status, headers, body) is not None) == broken


def test_the_problem_check_wants_no_body_from_head():
    assert problem_json_violation(404, PROBLEM, b"", "HEAD") is None
    assert problem_json_violation(404, PROBLEM, b"", "GET") is not None
    assert problem_json_violation(404, {"content-type": ["text/plain"]}, b"", "HEAD") is not None


class _PlainErrors(BaseHTTPRequestHandler):
    """An API whose one operation answers errors as text/plain: the check must fail it."""

    SCHEMA = json.dumps({
        "openapi": "3.1.0", "info": {"title": "plain", "version": "1"},
        "paths": {"/things/{id}": {"get": {
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "ok"}, "404": {"description": "no"}}}}},
    }).encode()

    def do_GET(self) -> None:
        if self.path == "/openapi.json":
            status, kind, body = 200, "application/json", self.SCHEMA
        else:
            status, kind, body = 404, "text/plain", b"no such thing"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_errors_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PlainErrors)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_the_problem_check_fails_a_run_against_plain_text_errors(
        plain_errors_api: str, tmp_path: Path):
    code, output, report = await schemathesis(f"{plain_errors_api}/openapi.json", tmp_path,
                                              "--phases", "examples,fuzzing", examples="5")
    assert code != 0, output
    assert "error_is_problem_json" in output
    assert "not application/problem+json" in output
    assert report["failures"]
