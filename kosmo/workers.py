"""``kosmo gateway --workers N``: N full gateway processes on one address, and their supervisor.

Rules:
- The supervisor is the ``kosmo gateway`` process itself. It serves nothing: it starts each
  worker as a new ``python -m kosmo gateway --worker K`` process (never a fork: the parent may
  hold threads), with the settings the supervisor was given (flags passed on as their
  ``KOSMO_*`` variables, so that no secret appears in a process list) and, per worker:
  ``KOSMO_MQTT_CLIENT_ID=<client id>-w<K>`` (its own persistent session, stable across restarts),
  ``KOSMO_MQTT_SHARED_GROUP`` (as set, else ``DEFAULT_GROUP``: reports, replies and nodes heard
  are shared among the workers, each stored once), ``KOSMO_METRICS_BIND`` port + K - 1 when
  metrics are served (port 0 stays 0), and ``KOSMO_WORKERS=1``.
- Each worker binds its own HTTP socket with ``SO_REUSEPORT`` on the one address.
- A worker that exits while the supervisor is not stopping is restarted after a backoff:
  ``BACKOFF`` seconds, doubled for each exit within ``STEADY`` seconds of its start, at most
  ``MAX_BACKOFF``.
- On the supervisor's first SIGTERM/SIGINT every worker is sent SIGTERM and stops as a single
  gateway does; what has not stopped by the stop deadline is killed. Workers run in their own
  process group, so a Ctrl-C at a terminal reaches the supervisor only (a worker seeing it too
  would take it for a second signal), and a worker whose supervisor has gone (``kill -9``)
  stops by itself within ``PARENT_POLL`` seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping

import trio

from kosmo.config import OPTIONS, Settings

log = logging.getLogger("kosmo.workers")

DEFAULT_GROUP = "kosmo"
BACKOFF = 1.0
MAX_BACKOFF = 30.0
STEADY = 30.0
PARENT_POLL = 1.0


def worker_environ(base: Mapping[str, str], flags: Mapping[str, str], settings: Settings,
                   index: int) -> dict[str, str]:
    """The environment of worker ``index`` (1-based): ``base`` with the given ``flags`` (setting
    name -> raw text) as their variables, and the per-worker settings of the module's rules."""
    env = dict(base)
    for name, raw in flags.items():
        env[OPTIONS[name].env] = raw
    env[OPTIONS["workers"].env] = "1"
    env[OPTIONS["mqtt_client_id"].env] = f"{settings.mqtt_client_id}-w{index}"
    env[OPTIONS["mqtt_shared_group"].env] = settings.mqtt_shared_group or DEFAULT_GROUP
    if settings.metrics_bind is not None:
        host, port = settings.metrics_bind
        host = f"[{host}]" if ":" in host else host
        env[OPTIONS["metrics_bind"].env] = f"{host}:{port + index - 1 if port else 0}"
    return env


def worker_command(index: int, log_level: str, log_format: str) -> list[str]:
    return [sys.executable, "-m", "kosmo", "--log-level", log_level, "--log-format", log_format,
            "gateway", "--worker", str(index)]


async def supervise(commands: Mapping[int, tuple[list[str], dict[str, str]]],
                    shutdown: trio.Event) -> None:
    """Run one worker per entry (index -> command, environment), restarting any that exits,
    until ``shutdown`` is set; then SIGTERM them all and wait for them (the caller's deadline
    cancels this wait, which kills what is left)."""
    running: dict[int, trio.Process] = {}

    async def keep(index: int) -> None:
        command, env = commands[index]
        backoff = BACKOFF
        while not shutdown.is_set():
            started = trio.current_time()
            proc = await trio.lowlevel.open_process(command, env=env, process_group=0)
            running[index] = proc
            log.info("worker %d started (pid %d)", index, proc.pid)
            if shutdown.is_set():
                proc.terminate()
            try:
                code = await proc.wait()
            finally:
                if proc.returncode is None:  # cancelled: past the stop deadline
                    log.warning("worker %d (pid %d) did not stop in time: killed",
                                index, proc.pid)
                    proc.kill()
                    with trio.CancelScope(shield=True):
                        await proc.wait()
            running.pop(index, None)
            if shutdown.is_set():
                log.info("worker %d (pid %d) stopped with code %d", index, proc.pid, code)
                return
            if trio.current_time() - started >= STEADY:
                backoff = BACKOFF
            log.warning("worker %d (pid %d) exited with code %d; restarting in %.0f s",
                        index, proc.pid, code, backoff)
            with trio.move_on_after(backoff):
                await shutdown.wait()
            backoff = min(backoff * 2, MAX_BACKOFF)

    async with trio.open_nursery() as nursery:
        for index in commands:
            nursery.start_soon(keep, index)
        await shutdown.wait()
        log.info("stopping %d workers", len(running))
        for proc in list(running.values()):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)


async def watch_parent(shutdown: trio.Event) -> None:
    """In a worker: set ``shutdown`` once the supervisor that started this process is gone."""
    parent = os.getppid()
    while True:  # no event tells of a parent's death
        await trio.sleep(PARENT_POLL)
        if os.getppid() != parent:
            break
    log.warning("the supervisor (pid %d) is gone: shutting down", parent)
    shutdown.set()
