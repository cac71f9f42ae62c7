"""Trio memory channels: taking a batch of what waits there now, without waiting for more;
and putting an item in without a pass of the scheduler when there is room.

Rules: an actor that commits or publishes in batches receives one item (waiting for it), then
calls ``take_waiting`` to add what is already in the channel, up to its batch size. It never
waits, so a batch is never held back for items that have not come. A closed channel ends the
taking quietly: the items taken so far are the batch, and the next ``receive`` reports the end.
An item may close its batch (``ends_batch``): nothing after it is taken into the same batch.

``put`` is ``send`` for a requester that awaits the answer next (that wait is its checkpoint):
``send`` always yields to every other runnable task, even when the channel has room, and under
load one pass of the Trio loop takes milliseconds. ``put`` yields only when it must wait for
room; items keep their order either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


def take_waiting(receive: trio.MemoryReceiveChannel[T], batch: list[T], limit: int, *,
                 ends_batch: Callable[[T], bool] | None = None) -> list[T]:
    """Append to ``batch`` the items waiting in ``receive``, until it holds ``limit`` or its last
    item is one that ``ends_batch`` (if given) says closes a batch; return it."""
    while len(batch) < limit and not (ends_batch and batch and ends_batch(batch[-1])):
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


async def put(send: trio.MemorySendChannel[T], item: T) -> None:
    """Send ``item``; a scheduler pass only when the channel is full (see the module's rules).
    A caller already cancelled sends nothing, as with ``send``."""
    await trio.lowlevel.checkpoint_if_cancelled()  # raises if cancelled; never yields otherwise
    try:
        send.send_nowait(item)
    except trio.WouldBlock:
        await send.send(item)
