"""kosmo/supervise.py: a shutdown abandons a start, never a daemon that serves."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio

from kosmo.supervise import start_or_abandon

log = logging.getLogger("tests.supervise")


async def test_a_shutdown_before_started_abandons_the_start(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    shutdown = trio.Event()
    reached: list[str] = []

    async def serve(task_status: trio.TaskStatus[str]) -> None:
        reached.append("starting")
        await trio.sleep_forever()  # waits for a broker that never comes

    async def stop_soon() -> None:
        await trio.sleep(5)
        shutdown.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_soon)
        with trio.fail_after(10):
            await start_or_abandon(shutdown, serve, what="daemon", log=log)
    assert reached == ["starting"]
    assert "stopping before the daemon was ready" in caplog.text


async def test_a_shutdown_after_started_is_the_daemons_to_handle(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    shutdown = trio.Event()
    stopped: list[str] = []

    async def serve(task_status: trio.TaskStatus[str]) -> None:
        task_status.started("serving")
        await shutdown.wait()
        await trio.sleep(1)  # its own stop, by its own deadline: not cancelled
        stopped.append("cleanly")

    async with trio.open_nursery() as nursery:
        value = await nursery.start(partial(start_or_abandon, shutdown, serve, what="daemon",
                                            log=log))
        assert value == "serving"
        shutdown.set()
    assert stopped == ["cleanly"]
    assert "stopping before" not in caplog.text


async def test_a_daemon_failing_while_starting_reaches_the_caller() -> None:
    async def serve(task_status: trio.TaskStatus[None]) -> None:
        raise OSError("no such device")

    with pytest.RaisesGroup(OSError, flatten_subgroups=True):
        await start_or_abandon(trio.Event(), serve, what="daemon", log=log)
