"""Taking a batch from a Trio memory channel: what waits there now, without waiting for more.

Rules: an actor that commits or publishes in batches receives one item (waiting for it), then
calls ``take_waiting`` to add what is already in the channel, up to its batch size. It never
waits, so a batch is never held back for items that have not come. A closed channel ends the
taking quietly: the items taken so far are the batch, and the next ``receive`` reports the end.
"""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")


def take_waiting(receive: trio.MemoryReceiveChannel[T], batch: list[T], limit: int) -> list[T]:
    """Append to ``batch`` the items waiting in ``receive``, until it holds ``limit``; return it."""
    while len(batch) < limit:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch
