"""Coverage: which nodes this bridge's radio hears, reported to the gateway (docs/mqtt.md).

Rules:
- Two sources. The radio's node database (the library's ``nodesByNum``: ``lastHeard``,
  ``snr``, ``hopsAway``), read each time the radio (re)connects, which is when the library
  downloads it. And every packet the radio receives from another node: heard now (the bridge's
  clock: the radio's own clock may be unset), with its ``rxSnr`` and, when the packet carries
  ``hopStart``, ``hopStart - hopLimit`` hops. Our own node, nodes without a ``lastHeard`` and
  packets that came over MQTT rather than the air are not coverage and are left out.
- Observations wait in memory, the newest per node, for at most ``MAX_PENDING`` nodes (past
  that the oldest observation is dropped: it says the least). They are published at most once
  per ``interval`` (real seconds), in chunks within the 4 KiB limit (``wire.heard_payloads``),
  QoS 1, not retained: a busy mesh costs one publish a second, not one per packet.
- Not durable: a restart loses at most the last interval's packets, and the node database read
  at the next connect says much the same. While the broker is away they keep waiting (merged
  with newer ones); a chunk the broker may have had before the loss can go again, which the
  gateway takes idempotently (an observation never makes a row older). A chunk that matched
  no subscription (MQTT 5 PUBACK reason code 16: no gateway subscribed yet) is kept the same
  way and tried again at the next interval; one log line when that starts, one when it ends.
- Only the Trio thread touches the pending set: the radio's pypubsub listener hands each
  observation over with ``trio.from_thread.run_sync`` (bridge/radio.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import trio

from actors.mqtt import MqttActor, MqttUnavailable, NoSubscribers
from bridge.timing import Wakeup
from kosmo import wire

log = logging.getLogger(__name__)

MAX_PENDING = 1024  # nodes whose observations wait to be published
INTERVAL = 1.0  # real seconds between two publishes


def _hops(value: object) -> int | None:
    return value if isinstance(value, int) and 0 <= value <= wire.MAX_HOPS else None


def _snr(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and -wire.MAX_SNR <= value <= wire.MAX_SNR:
        return round(float(value), 2)
    return None


def node_db_heard(nodes: Iterable[Mapping[str, Any]]) -> list[wire.Heard]:
    """The nodes of the library's node database that were ever heard (``lastHeard`` set)."""
    found = []
    for node in nodes:
        num, last = node.get("num"), node.get("lastHeard")
        if not isinstance(num, int) or not isinstance(last, int) or last <= 0:
            continue
        try:
            at = datetime.fromtimestamp(last, UTC)
        except (OverflowError, OSError, ValueError):
            continue
        found.append(wire.Heard(f"!{num & 0xFFFFFFFF:08x}", at, _snr(node.get("snr")),
                                _hops(node.get("hopsAway"))))
    return found


def packet_heard(packet: Mapping[str, Any], at: datetime) -> wire.Heard | None:
    """What a packet the library received says about its sender, heard ``at``; None for a
    packet that came over MQTT or names no sender."""
    sender = packet.get("from")
    if not isinstance(sender, int) or sender <= 0 or packet.get("viaMqtt"):
        return None
    hops = None
    start = packet.get("hopStart")
    if isinstance(start, int):  # protobuf-to-dict leaves a hopLimit of 0 out
        hops = _hops(start - int(packet.get("hopLimit", 0)))
    return wire.Heard(f"!{sender & 0xFFFFFFFF:08x}", at, _snr(packet.get("rxSnr")), hops)


class CoverageReporter:
    """Collects observations (Trio thread only) and publishes them, batched, to the gateway."""

    def __init__(self, mqtt: MqttActor, topic: str, *, interval: float = INTERVAL,
                 max_pending: int = MAX_PENDING) -> None:
        self._mqtt, self._topic = mqtt, topic
        self._interval, self._max = interval, max_pending
        self._pending: dict[str, wire.Heard] = {}
        self._wake = Wakeup()
        self.own_node_id: str | None = None  # the radio's own node: not coverage
        self.published = 0  # nodes published (one per observation sent)
        self.dropped = 0
        self._unheard = False  # the last publish matched no subscription

    def observe(self, heard: wire.Heard | None) -> None:
        if heard is None or heard.node_id == self.own_node_id:
            return
        kept = self._pending.get(heard.node_id)
        if kept is not None and kept.last_heard >= heard.last_heard:
            return
        if kept is None and len(self._pending) >= self._max:
            oldest = min(self._pending.values(), key=lambda h: h.last_heard)
            if oldest.last_heard >= heard.last_heard:
                self.dropped += 1
                return
            del self._pending[oldest.node_id]
            self.dropped += 1
        self._pending[heard.node_id] = heard
        self._wake.set()

    def observe_all(self, found: Iterable[wire.Heard]) -> None:
        for heard in found:
            self.observe(heard)

    def pending(self) -> list[wire.Heard]:
        return list(self._pending.values())

    async def run(self) -> None:
        while True:
            if not self._pending:
                await self._wake.wait()
                continue
            await self._mqtt.wait_connected()
            taken, self._pending = self._pending, {}
            try:
                for payload in wire.heard_payloads(taken.values()):
                    await self._mqtt.publish(self._topic, payload, qos=1)
                self.published += len(taken)
                log.debug("published %d nodes heard", len(taken))
                if self._unheard:
                    log.info("nodes heard go out again: %s has a subscriber", self._topic)
                    self._unheard = False
            except MqttUnavailable as exc:
                log.info("nodes heard wait for the broker: %s", exc)
                self.observe_all(taken.values())  # back, unless newer ones came meanwhile
            except NoSubscribers:
                if not self._unheard:
                    log.info("nodes heard wait for a subscriber to %s", self._topic)
                    self._unheard = True
                self.observe_all(taken.values())
            await trio.sleep(self._interval)
