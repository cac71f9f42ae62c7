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
from contextlib import contextmanager
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


@contextmanager
def kosmo_up(data: Path, port: int, *options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``kosmo up`` running, and its banner; killed if the test fails before it stops it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    with subprocess.Popen(
            [sys.executable, "-m", "kosmo", "up", "--data-dir", str(data),
             "--http-bind", f"127.0.0.1:{port}", "--metrics-bind", f"127.0.0.1:{free_port()}",
             *options],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            assert proc.stdout is not None
            output = []
            deadline = time.monotonic() + 60
            for line in proc.stdout:
                output.append(line)
                if "API description:" in line or time.monotonic() > deadline:
                    break
            yield proc, "".join(output)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_kosmo_up_serves_the_demo_and_stops_cleanly(data_dir: Path):
    port = free_port()
    data = data_dir
    with kosmo_up(data, port) as (proc, banner):
        assert proc.stdout is not None
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
        found = re.search(r"metrics:\s+(http://127\.0\.0\.1:\d+/metrics)", banner)
        assert found, banner
        scraped = httpx.get(found.group(1)).text
        assert "kosmo_messages_accepted_total 1.0" in scraped
        assert 'kosmo_message_status_total{status="delivered"} 1.0' in scraped
        assert 'kosmo_bridges{state="online"} 1.0' in scraped

        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0, rest
    assert "Traceback" not in banner + rest
    assert "embedded services stopped" in rest
    assert not (data / "postgres" / "postmaster.pid").exists()
    assert re.search(r"demo|queued|stopped", rest)


def test_kosmo_up_with_two_radios_attaches_a_bridge_to_each(data_dir: Path):
    port = free_port()
    with kosmo_up(data_dir, port, "--radios", "2") as (proc, banner):
        assert proc.stdout is not None
        # Which radio hears which nodes: the demo's node is shared, two nodes each are not.
        assert re.search(r"radio 1 !0a0a0a0a on 127\.0\.0\.1:\d+ hears !a1b2c3d4, !a2b3c4d5, "
                         r"!a3b4c5d6", banner), banner
        assert re.search(r"radio 2 !0b0b0b0b on 127\.0\.0\.1:\d+ hears !a1b2c3d4, !a4b5c6d7, "
                         r"!a5b6c7d8", banner), banner

        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            bridges = httpx.get(f"{url}/healthz").json()["bridges"]
            online = {b["bridge_id"] for b in bridges if b["state"] == "online"}
            if online == {"!0a0a0a0a", "!0b0b0b0b"}:
                break
            time.sleep(0.2)
        assert online == {"!0a0a0a0a", "!0b0b0b0b"}, bridges
        assert (data_dir / "bridge").is_dir()
        assert (data_dir / "bridge-2").is_dir()

        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0, rest
    assert "Traceback" not in banner + rest
    assert "embedded services stopped" in rest
