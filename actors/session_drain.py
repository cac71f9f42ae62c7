"""Draining the MQTT session of a gateway process that is gone for good.

Why: a persistent session that holds a shared subscription keeps getting its turn of the
group's messages while its client is offline (mosquitto 2.0.11, measured: strict round robin
over the group's sessions, connected or not; docs/reliability.md). The session of a process
that never comes back would swallow its share of the reports, replies and nodes heard for ever,
and past the broker's queue limit drop them. The stranded-sessions actor (actors/stranded.py)
calls ``SessionDrains.drain`` with a gone process's client id; this module takes what the
session holds and deletes it.

Rules
- A drain connects as the dead process's client id (clean_session=False, an ``MqttActor`` with
  no subscriptions of its own) and hands each message to the gateway's inbound consumer, the
  path of the gateway's own messages, if its topic is one whose messages are stored once for
  all processes (reports, replies, nodes heard). Anything else (bridge states: retained, and
  the gateway already has the latest; an old one would mislead the dispatcher) is acknowledged
  unread.
- A handed message is acknowledged on the drain's connection only once the consumer has stored
  it: the consumer's ack path is ``SessionDrains.ack``, which routes each message to the
  connection it came from by its client id (this process's own, or one drain's).
- The session is settled when everything handed over is stored and nothing has come for
  ``quiet`` seconds on one unbroken connection. Steps: settle; unsubscribe the gateway's
  subscriptions (so the broker stops routing shares to the session); settle again (what came
  meanwhile); disconnect; connect once with clean_session=True, which deletes the session.
  MQTT 3.1.1 cannot tell what a session holds: quiet after the last acknowledgement is the
  sign it holds nothing more (the broker sends the next queued message as soon as one is
  acknowledged). The unsubscribed filters are this process's: the dead process is assumed to
  have had the same topic root and shared group.
- Bounded: the whole drain takes at most ``within`` seconds, else ``DrainFailed``. A broker that
  is unreachable, or drops the connection, within that time is waited for (messages not yet
  acknowledged come again and are stored again, which changes nothing). After ``DrainFailed``
  the session is kept with whatever it still holds; what was stored and acknowledged is gone
  from it, so a later attempt goes on where this one stopped.
- Never this process's own client id (``ValueError``); one drain per client id at a time in a
  process (a second call meanwhile fails with ``DrainFailed``). Two processes draining one
  session take the connection from each other but lose nothing.
- Ownership and shutdown: ``SessionDrains`` holds a clone of the consumer's channel for as long
  as the gateway runs (the consumer stops with the gateway's cancellation, never at the end of
  its channel, so the clone is never closed: closing it would fail a drain blocked on it with
  ClosedResourceError instead of Cancelled). Each drain runs in its caller's task; cancelling
  it disconnects politely and keeps the session.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio
from paho.mqtt.client import topic_matches_sub

from actors.mqtt import MqttActor, MqttInbound, MqttUnavailable
from kosmo.config import MqttEndpoint

log = logging.getLogger(__name__)

QUIET = 1.0  # seconds without a message, everything stored: the session holds nothing more
WITHIN = 60.0  # seconds for a whole drain


class DrainFailed(Exception):
    """The drain did not finish; the session is kept, with what it still holds."""


class SessionDrain:
    """One drain of one session (see the module's rules); ``run()`` returns how many messages
    were handed to the consumer."""

    def __init__(self, endpoint: MqttEndpoint, client_id: str, *,
                 deliver: Callable[[MqttInbound], Awaitable[None]],
                 stored: Sequence[str], unsubscribe: Sequence[str],
                 quiet: float = QUIET, within: float = WITHIN,
                 backoff_min: float = 0.2, backoff_max: float = 5.0) -> None:
        self.client_id = client_id
        self._endpoint, self._deliver = endpoint, deliver
        self._stored, self._unsubscribe = list(stored), list(unsubscribe)
        self._quiet, self._within, self._backoff = quiet, within, (backoff_min, backoff_max)
        send, self._received = trio.open_memory_channel[MqttInbound](0)
        self._mqtt = MqttActor(endpoint, client_id=client_id, inbound=send,
                               backoff_min=backoff_min, backoff_max=backoff_max)
        self._handed: set[MqttInbound] = set()  # given to the consumer, not yet stored
        self._change = trio.Event()  # set (and replaced) when a message comes or is stored
        self._step = "connecting"
        self.handed = self.skipped = 0

    async def ack(self, message: MqttInbound) -> None:
        """The consumer has stored ``message``: acknowledge it on this drain's connection."""
        self._handed.discard(message)
        await self._mqtt.ack(message)  # dropped if it came on an earlier connection
        self._changed()

    async def run(self) -> int:
        with trio.move_on_after(self._within) as bound:
            await self._drain()
        if bound.cancelled_caught:
            raise DrainFailed(
                f"drain of the MQTT session {self.client_id!r} did not finish within "
                f"{self._within:g} s ({self._step}; {self.handed} messages handed over, "
                f"{len(self._handed)} of them not stored yet); the session is kept")
        return self.handed

    async def _drain(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._mqtt.run)
            nursery.start_soon(self._forward)
            self._step = "taking what the session holds"
            await self._settle()
            self._step = "unsubscribing"
            while True:
                try:
                    await self._mqtt.unsubscribe(self._unsubscribe)
                    break
                except MqttUnavailable:
                    await self._mqtt.wait_connected()
            self._step = "taking what came meanwhile"
            await self._settle()
            nursery.cancel_scope.cancel()  # DISCONNECT: everything it sent us is stored
        self._step = "deleting the session"
        deleter = MqttActor(self._endpoint, client_id=self.client_id, clean_session=True,
                            backoff_min=self._backoff[0], backoff_max=self._backoff[1])
        async with trio.open_nursery() as nursery:
            await nursery.start(deleter.run)  # the CONNACK: the session is gone
            nursery.cancel_scope.cancel()

    async def _forward(self) -> None:
        async for message in self._received:
            if any(topic_matches_sub(f, message.topic) for f in self._stored):
                self._handed.add(message)
                self.handed += 1
                self._changed()
                await self._deliver(message)
            else:
                self.skipped += 1
                await self._mqtt.ack(message)
                self._changed()

    async def _settle(self) -> None:
        """Return once all handed over is stored and ``quiet`` seconds passed without a
        message, on one connection."""
        while True:
            change = self._change
            if not self._mqtt.connected:
                await self._mqtt.wait_connected()
            elif self._handed:
                await change.wait()
            else:
                epoch = self._mqtt.statistics().epoch
                with trio.move_on_after(self._quiet):
                    await change.wait()
                if not change.is_set() and self._mqtt.connected \
                        and self._mqtt.statistics().epoch == epoch:
                    return

    def _changed(self) -> None:
        self._change.set()
        self._change = trio.Event()


class SessionDrains:
    """A gateway's drains: ``drain`` is what actors/stranded.py calls for a gone process,
    ``ack`` the inbound consumer's ack path (for this process's messages and drained ones)."""

    def __init__(self, endpoint: MqttEndpoint, own: MqttActor,
                 inbound: trio.MemorySendChannel[MqttInbound], *, stored: Sequence[str],
                 subscriptions: Sequence[str], quiet: float = QUIET,
                 within: float = WITHIN) -> None:
        self._endpoint, self._own, self._inbound = endpoint, own, inbound
        self._stored, self._subscriptions = list(stored), list(subscriptions)
        self._quiet, self._within = quiet, within
        self._running: dict[str, SessionDrain] = {}

    async def ack(self, message: MqttInbound) -> None:
        """Acknowledge a stored message on the connection it came from (none left: dropped,
        and the broker sends it again to the next drain of that session)."""
        drain = self._running.get(message.client_id)
        if drain is not None:
            await drain.ack(message)
        else:
            await self._own.ack(message)  # checks the client id itself

    async def drain(self, client_id: str, *, quiet: float | None = None,
                    within: float | None = None) -> int:
        """Drain and delete the session of the gone process ``client_id``; return how many
        messages it handed to the consumer. Raises DrainFailed (logged here) if it could not
        within its time bound: keep the process's record and call again later. ``quiet`` and
        ``within`` replace this object's bounds for this call."""
        if client_id == self._own.client_id:
            raise ValueError(f"{client_id!r} is this process's own MQTT session")
        if client_id in self._running:
            busy = DrainFailed(f"the MQTT session {client_id!r} is being drained already")
            log.warning("%s", busy)
            raise busy
        drain = self._running[client_id] = SessionDrain(
            self._endpoint, client_id, deliver=self._inbound.send, stored=self._stored,
            unsubscribe=self._subscriptions, quiet=self._quiet if quiet is None else quiet,
            within=self._within if within is None else within)
        try:
            handed = await drain.run()
        except DrainFailed as exc:
            log.warning("%s", exc)
            raise
        finally:
            del self._running[client_id]
        log.info("MQTT session %r drained and deleted: %d messages handed over, %d skipped",
                 client_id, handed, drain.skipped)
        return handed
