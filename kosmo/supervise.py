"""Starting a daemon that a shutdown may abandon: the gateway and the bridge both start this way.

Rules:
- ``serve(task_status)`` is the daemon: it starts its parts, calls ``task_status.started(x)``
  once it serves, then watches ``shutdown`` itself and stops by its own deadline.
- A shutdown that comes before ``started()`` (say, while the daemon still waits for its
  database, broker or radio) abandons the start at once: everything is cancelled and
  ``start_or_abandon`` returns normally, having logged one line on the caller's logger.
- A shutdown after ``started()`` is the daemon's to handle; the guard only stops watching.
- The daemon runs in the calling task, so its exceptions reach the caller as they would
  without the guard (in one more exception group: callers catch with ``except*``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, overload

import trio

T = TypeVar("T")


class _Watched(trio.TaskStatus[T], Generic[T]):
    """The caller's task status, noting whether ``started()`` was called."""

    def __init__(self, status: trio.TaskStatus[T]) -> None:
        self._status = status
        self.started_yet = False

    @overload
    def started(self: _Watched[None]) -> None: ...

    @overload
    def started(self, value: T) -> None: ...

    def started(self, value: T | None = None) -> None:
        self.started_yet = True
        self._status.started(value)  # type: ignore[arg-type]


async def start_or_abandon(shutdown: trio.Event,
                           serve: Callable[[trio.TaskStatus[T]], Awaitable[None]], *,
                           what: str, log: logging.Logger,
                           task_status: trio.TaskStatus[T] = trio.TASK_STATUS_IGNORED) -> None:
    """Run ``serve`` with ``task_status``; a ``shutdown`` before it reported started abandons
    the start (``what`` names the daemon in the log line)."""
    status = _Watched(task_status)
    async with trio.open_nursery() as guard:

        async def abandon_start() -> None:
            await shutdown.wait()
            if not status.started_yet:
                log.info("stopping before the %s was ready", what)
                guard.cancel_scope.cancel()

        guard.start_soon(abandon_start)
        await serve(status)
        guard.cancel_scope.cancel()
