"""Radio time and wake-ups for the bridge's tasks.

Rules:
- Everything the radio's rules are written in (the 2 s gap, airtime, the duty-cycle hour, the
  wait for a routing result) is in *radio seconds*. With a real radio one radio second is one
  second; a simulated radio may run faster: ``time_scale`` is how many radio seconds pass in
  one real second (20 runs the radio 20 times faster), as in bridge/sim. Wall-clock time
  (message expiry, timestamps on the wire) is never scaled.
- A ``Wakeup`` remembers a ``set()`` until the next ``wait()`` returns, so a change that comes
  between a task's look at the state and its wait is never missed.
"""

from __future__ import annotations

import trio


class RadioClock:
    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be above zero")
        self.time_scale = time_scale

    def now(self) -> float:
        return trio.current_time() * self.time_scale

    def real(self, radio_seconds: float) -> float:
        return radio_seconds / self.time_scale


class Wakeup:
    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()

    async def wait_at_most(self, seconds: float) -> bool:
        """Wait for a ``set()``, or ``seconds`` (real time), whichever comes first; True when
        it was a ``set()``."""
        with trio.move_on_after(max(seconds, 0.0)):
            await self._event.wait()
        if self._event.is_set():
            self._event = trio.Event()
            return True
        return False
