"""Running blocking calls in worker threads from Trio with one scheduler pass, not two.

Rules:
- ``run_sync(fn, *args, limiter=...)`` calls ``fn(*args)`` in a worker thread (Trio's thread
  cache) holding a token of ``limiter``, and returns its result or raises its exception, like
  ``trio.to_thread.run_sync``. The difference: when a token is free, the thread starts at once.
  ``trio.to_thread.run_sync`` first yields to every other runnable task (its limiter's
  checkpoint), and under load one such pass of the Trio loop takes milliseconds; the call's own
  wait for the thread's result is the one checkpoint here.
- A caller already cancelled starts nothing. A call that started is never abandoned: a
  cancellation waits for the thread to finish (the caller may hold a transaction open there),
  then the caller sees the thread's outcome and the cancellation at its next checkpoint.
- The thread runs ``fn`` in a copy of the caller's context variables.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")


async def run_sync(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter) -> T:
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    try:
        limiter.acquire_on_behalf_of_nowait(task)
    except trio.WouldBlock:
        await limiter.acquire_on_behalf_of(task)
    try:
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[T]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(
            partial(contextvars.copy_context().run, fn, *args), deliver)
        value: T = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)
        return value
    finally:
        limiter.release_on_behalf_of(task)
