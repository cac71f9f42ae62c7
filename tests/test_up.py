"""`kosmo up`: the whole stack on embedded services, as a newcomer runs it, then Ctrl-C."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kosmo.embedded import free_port

USER = {"X-User-ID": "11111111-1111-1111-1111-111111111111"}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's own temp tree: pytest resets that tree to mode 0700 whenever a session
    # starts, and the embedded PostgreSQL may run as another system user that must traverse it.
    path = Path(tempfile.mkdtemp(prefix="kosmo-up-test-"))
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def test_kosmo_up_serves_the_demo_and_stops_cleanly(data_dir: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    data = data_dir
    with subprocess.Popen(
            [sys.executable, "-m", "kosmo", "up", "--data-dir", str(data),
             "--http-bind", f"127.0.0.1:{port}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        output = []
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            output.append(line)
            if "API description:" in line or time.monotonic() > deadline:
                break
        banner = "".join(output)
        assert f"http://127.0.0.1:{port}" in banner, banner
        assert "curl -s -X POST" in banner

        url = f"http://127.0.0.1:{port}"
        created = httpx.post(f"{url}/api/v1/messages", headers=USER,
                             json={"target_node_id": "!a1b2c3d4", "text": "Hello mesh"})
        assert created.status_code == 201, created.text
        # Through the broker, the bridge and the simulated radio: delivered, then a reply.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            detail = httpx.get(url + created.headers["Location"], headers=USER).json()
            thread = httpx.get(f"{url}/api/v1/messages/conversations/!a1b2c3d4",
                               headers=USER).json()["messages"]
            if detail["status"] == "delivered" and len(thread) == 2:
                break
            time.sleep(0.2)
        assert [h["status"] for h in detail["status_history"]] == [
            "pending", "queued", "transmitted", "delivered"]
        assert thread[1]["direction"] == "inbound"
        assert "Hello mesh" in thread[1]["text"]
        assert httpx.get(f"{url}/readyz").status_code == 200
        bridges = httpx.get(f"{url}/healthz").json()["bridges"]
        assert [b["state"] for b in bridges] == ["online"]

        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0, rest
    assert "Traceback" not in banner + rest
    assert "embedded services stopped" in rest
    assert not (data / "postgres" / "postmaster.pid").exists()
    assert re.search(r"demo|queued|stopped", rest)
