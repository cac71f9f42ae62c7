"""The bridge's retained state, ``{root}/bridge/{id}/state``: what it says and when it is said.

What it says (docs/mqtt.md; the gateway reads the pace with ``kosmo.wire.parse_pace``):
- Presence: ``online`` while serving (the will and a stop say ``offline``), the bridge id, the
  radio link, and what the radio says about itself once connected (node id, region, preset).
- What it holds: ``queue_depth`` (texts given to it and not yet handed to the radio) and,
  with a radio, ``in_flight`` (handed to the radio, no routing result yet). Together they are
  the texts it holds unsent, which the gateway keeps within ``credit``.
- Its pace, for the gateway's schedule: ``credit`` (a setting), ``min_gap_s`` (the pacer's
  gap between two texts), ``window_s`` (the duty-cycle window) and, with a radio,
  ``duty_cycle_percent`` (null: no limit), ``airtime_used_s`` (spent in the window that ends
  now) and ``estimated_wait_s`` (until the last text it holds is handed to the radio).
- Units: every ``*_s`` member is in real (wall-clock) seconds. A simulated radio may run
  ``time_scale`` radio seconds per real second (said only when it is not 1); the airtime of
  a text by kosmo/airtime.py is in radio seconds, so divide it by ``time_scale``.

When (``RetainedState.run``):
- On every (re)connect to the broker (a lost connection may have let the will say
  ``offline``), at once when what the bridge holds changes (the gateway's credit depends on
  it), on any other change at most once a second (``MIN_INTERVAL``), and at least every
  ``REFRESH`` seconds while something changes unannounced (airtime leaving the window).
- A payload equal to the last one published on the same connection is not published again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from actors.mqtt import MqttActor, MqttUnavailable
from bridge.pacing import PacingRules
from bridge.timing import RadioClock, Wakeup
from kosmo import wire

log = logging.getLogger(__name__)

MIN_INTERVAL = 1.0  # real seconds between two publishes, unless what the bridge holds changed
REFRESH = 30.0  # republish at least this often
RECONNECT_CHECK = 1.0  # real seconds between looks for a new broker connection

Held = tuple[int, int | None]  # (queue_depth, in_flight or None without a radio)


def pace(rules: PacingRules, clock: RadioClock, credit: int) -> dict[str, Any]:
    """The pace members known without a radio: the credit, the gap and the window."""
    members: dict[str, Any] = {"credit": credit,
                               "min_gap_s": round(clock.real(rules.min_gap), 3),
                               "window_s": round(clock.real(rules.window), 3)}
    if clock.time_scale != 1:
        members["time_scale"] = clock.time_scale
    return members


def held(info: dict[str, Any]) -> Held:
    """What a state says the bridge holds."""
    return info.get("queue_depth", 0), info.get("in_flight")


class RetainedState:
    """Publishes the state ``describe()`` returns on ``topic``, retained, QoS 1; ``held()``
    is the cheap look at what the bridge holds, ``wake`` is set on every change."""

    def __init__(self, mqtt: MqttActor, topic: str, *,
                 describe: Callable[[], Awaitable[dict[str, Any]]],
                 held: Callable[[], Awaitable[Held]], wake: Wakeup) -> None:
        self.topic = topic
        self._mqtt, self._describe, self._held, self._wake = mqtt, describe, held, wake

    async def run(self) -> None:
        last: tuple[int, bytes] | None = None
        while True:
            await self._mqtt.wait_connected()
            epoch = self._mqtt.statistics().epoch
            info = await self._describe()
            payload = wire.state_payload("online", info)
            if (epoch, payload) != last:
                try:
                    await self._mqtt.publish(self.topic, payload, qos=1, retain=True)
                    last = (epoch, payload)
                except MqttUnavailable:
                    continue
            await self._next_change(epoch, held(info))

    async def publish_offline(self) -> None:
        try:
            await self._mqtt.publish(self.topic, wire.state_payload("offline"), qos=1,
                                     retain=True)
        except MqttUnavailable:
            pass  # the will says the same

    async def _next_change(self, epoch: int, published: Held) -> None:
        """Return when the state is due again: at once on a new connection or when what the
        bridge holds is no longer ``published``; for another change no sooner than
        ``MIN_INTERVAL`` after the last publish; after ``REFRESH`` in any case."""
        now = trio.current_time()
        calm_until, refresh_at = now + MIN_INTERVAL, now + REFRESH
        changed = False
        while (now := trio.current_time()) < refresh_at:
            if self._mqtt.statistics().epoch != epoch:
                return
            if changed and now >= calm_until:
                return
            wait = min(RECONNECT_CHECK, refresh_at - now)
            if changed:
                wait = min(wait, calm_until - now)
            if await self._wake.wait_at_most(wait):
                changed = True
                if await self._held() != published:
                    return
