"""``kosmo gateway --workers N``: the workers share one address and serve, a killed one is
restarted while the other keeps serving, and SIGTERM stops them all within the deadline, code 0."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

from kosmo import cli, workers
from kosmo.config import ConfigError, Settings, load, parse_workers
from tests.conftest import WANDERER

KOSMO = [sys.executable, "-m", "kosmo"]
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
WAIT = 60.0  # seconds for a line to appear: starts are slower on a loaded machine


def test_workers_setting():
    assert parse_workers("3") == 3
    assert parse_workers("auto") == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="positive whole number or auto"):
        parse_workers("0")
    with pytest.raises(ConfigError, match="KOSMO_WORKERS is invalid"):
        load({"KOSMO_DATABASE_URL": "postgresql://u@h/db", "KOSMO_WORKERS": "many"})
    assert load({"KOSMO_DATABASE_URL": "postgresql://u@h/db"}).workers == 1


def test_each_worker_gets_its_client_id_group_and_metrics_port():
    settings = Settings(database_url="postgresql://u@h/db", mqtt_client_id="gw",
                        metrics_bind=("127.0.0.1", 9464), workers=2)
    env = workers.worker_environ({"PATH": "/bin"}, {"auth_mode": "header"}, settings, 2)
    assert env["PATH"] == "/bin"
    assert env["KOSMO_AUTH_MODE"] == "header"
    assert env["KOSMO_MQTT_CLIENT_ID"] == "gw-w2"
    assert env["KOSMO_MQTT_SHARED_GROUP"] == workers.DEFAULT_GROUP
    assert env["KOSMO_METRICS_BIND"] == "127.0.0.1:9465"
    assert env["KOSMO_WORKERS"] == "1"
    own = workers.worker_environ({}, {}, settings.replace(mqtt_shared_group="g"), 1)
    assert own["KOSMO_MQTT_SHARED_GROUP"] == "g"


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            held = []
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no free ports")


class Lines:
    """The lines of a stream, read in a thread, waited for by pattern."""

    def __init__(self, stream: Iterator[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Iterator[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """Wait until ``count`` lines seen in all match ``pattern``; their matches."""
        while True:
            found = [m for line in self.seen if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found
            line = self._queue.get(timeout=WAIT)
            if line is None:
                raise AssertionError(f"output ended before {pattern!r}:\n" + "".join(self.seen))
            self.seen.append(line)

    def rest(self) -> str:
        self._thread.join(timeout=WAIT)
        while (line := self._queue.get_nowait()) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def _accepted(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    match = re.search(r"^kosmo_messages_accepted_total (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def test_two_workers_serve_survive_a_kill_and_stop_cleanly(database_url: str, mqtt_url: str,
                                                           topic_root: str):
    port = _free_ports(3)
    metrics = port + 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    env.update(KOSMO_DATABASE_URL=database_url, KOSMO_MQTT_URL=mqtt_url,
               KOSMO_AUTH_MODE="header", KOSMO_MQTT_TOPIC_ROOT=topic_root,
               KOSMO_MQTT_CLIENT_ID=f"gw-{topic_root}", KOSMO_DB_POOL_SIZE="4")
    url = f"http://127.0.0.1:{port}"
    with subprocess.Popen([*KOSMO, "gateway", "--workers", "2",
                           "--http-bind", f"127.0.0.1:{port}",
                           "--metrics-bind", f"127.0.0.1:{metrics}"],
                          env=env, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        lines = Lines(proc.stderr)
        try:
            lines.wait_for("gateway listening on", 2)
            pids = {int(m.group(1)): int(m.group(2)) for m in lines.wait_for(STARTED.pattern, 2)}
            assert sorted(pids) == [1, 2]
            lines.wait_for(f"as 'gw-{topic_root}-w1'")
            lines.wait_for(f"as 'gw-{topic_root}-w2'")

            # Each send on a new connection: the kernel spreads them over both workers.
            sends = 24
            for _ in range(sends):
                reply = httpx.post(f"{url}/api/v1/messages",
                                   headers={"X-User-ID": str(WANDERER)},
                                   json={"target_node_id": "!a1b2c3d4", "text": "hi"}, timeout=10)
                assert reply.status_code == 201, reply.text
            per_worker = [_accepted(f"http://127.0.0.1:{metrics + k}/metrics") for k in (0, 1)]
            assert sum(per_worker) == sends
            assert all(n > 0 for n in per_worker), per_worker

            os.kill(pids[1], signal.SIGKILL)
            lines.wait_for(rf"worker 1 \(pid {pids[1]}\) exited with code -9; restarting")
            for _ in range(20):  # the other worker serves meanwhile
                assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            restarted = lines.wait_for(STARTED.pattern, 3)[2]
            assert restarted.group(1) == "1"
            assert int(restarted.group(2)) != pids[1]
            lines.wait_for("gateway listening on", 3)
            for _ in range(20):
                assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            assert _accepted(f"http://127.0.0.1:{metrics}/metrics") == 0  # the new worker 1

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=cli.STOP_DEADLINE + 5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        rest = lines.rest()
    assert "Traceback" not in rest
    assert len(re.findall(r"worker \d \(pid \d+\) stopped with code 0", rest)) == 2, rest
    for pid in [*pids.values(), int(restarted.group(2))]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
