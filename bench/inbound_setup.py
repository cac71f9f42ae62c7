"""What the inbound benchmark runs against: synthetic users, each with a node of its own and
outbound messages to it, in the bench database; the MQTT broker; the gateway process, which
the bench restarts when a backlog stops draining. Plain blocking code, outside Trio."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
from servers import forget_mqtt_session, wait_ready  # bench/ is on sys.path when run as a script

USER_TEMPLATE = "b0b0b0b0-0000-4000-8000-{:012x}"  # synthetic user u
NODE_TEMPLATE = "!b{:07x}"  # the node of user u: its replies are threaded to u
MESSAGE_PREFIX = "0b0b0b0b-0000-4000-8000-"
MESSAGE_TEMPLATE = MESSAGE_PREFIX + "{:012x}"  # outbound message m, of user m % users


def populate(db_url: str, users: int, messages: int) -> None:
    """Synthetic users and their outbound messages (status ``queued``), one transaction."""
    def user(n: str) -> str:
        return f"('{USER_TEMPLATE[:-8]}' || lpad(to_hex({n}), 12, '0'))::uuid"

    def node(n: str) -> str:
        return f"('{NODE_TEMPLATE[:2]}' || lpad(to_hex({n}), 7, '0'))"

    owner = "mod(m, %(users)s)"
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        conn.execute(f"""
            INSERT INTO users (id, email, display_name)
            SELECT {user('u')}, 'bench' || u || '@example.org', 'Bench ' || u
            FROM generate_series(0, %(users)s - 1) AS u""", {"users": users})
        conn.execute(f"""
            INSERT INTO subscriptions (id, user_id, plan_code, status, current_period_start,
                                       current_period_end)
            SELECT gen_random_uuid(), {user('u')}, 'sanctuary', 'active',
                   date_trunc('month', now()), date_trunc('month', now()) + interval '1 month'
            FROM generate_series(0, %(users)s - 1) AS u""", {"users": users})
        conn.execute(f"""
            INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at,
                                  updated_at, expires_at)
            SELECT ('{MESSAGE_PREFIX}' || lpad(to_hex(m), 12, '0'))::uuid, 'outbound',
                   {user(owner)}, {node(owner)}, 'bench outbound ' || m, 'queued',
                   now() - interval '1 hour' + m * interval '1 microsecond',
                   now() - interval '1 hour' + m * interval '1 microsecond',
                   now() + interval '1 day'
            FROM generate_series(0, %(messages)s - 1) AS m""",
                     {"users": users, "messages": messages})
    with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("VACUUM ANALYZE messages")


@contextlib.contextmanager
def mqtt_broker(url: str | None, folder: Path) -> Iterator[tuple[str, int | None]]:
    """``url`` as given, or a private mosquitto configured as ``kosmo up`` does; (url, pid)."""
    if url is not None:
        yield url, None
        return
    from kosmo.embedded import start_broker

    broker = start_broker(folder, implementation="mosquitto")
    try:
        process = getattr(broker, "_process", None)
        yield broker.url, process.pid if process is not None else None
    finally:
        broker.stop()


class GatewayProcess:
    """The gateway, one process in its own session (a Ctrl-C reaches only the bench)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, url: str,
                 mqtt_url: str, client_id: str) -> None:
        self.cmd, self.env, self.log, self.url = cmd, env, log, url
        self.mqtt_url, self.client_id = mqtt_url, client_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_ready("gateway", self.proc, self.url + "/readyz", self.log, any_answer=False)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # a graceful stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print("gateway did not stop within 10 s; killing it", file=sys.stderr)
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop, drop the MQTT session and what the broker queued for it, start again."""
        self.stop()
        forget_mqtt_session(self.mqtt_url, self.client_id)
        self.restarts += 1
        self.start()
