"""The bridge's Prometheus metrics, served with ``kosmo bridge --metrics-bind HOST:PORT``.

Rules:
- One registry per bridge (never the global one). Every family is read from the bridge at
  scrape time: the counters are the sender's own counts (texts handed to the radio, routing
  errors by name), the gauges its queue, its pace and its radio link. Nothing is written from
  a second task, and the send path only adds one to an integer.
- The queue depth is read from the SQLite store, so it is refreshed (awaited) just before each
  scrape (``refresh``); the rest are plain reads in the Trio thread.
- ``kosmo_bridge_airtime_used_ratio``: airtime in the rolling hour over the region's
  duty-cycle budget (EU_868: 10 % of the hour); without a duty-cycle rule, over the hour.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.radio import Radio
from bridge.sender import Sender


class BridgeMetrics(Collector):
    """The bridge's families, in ``registry``; ``refresh`` before each scrape."""

    def __init__(self, sender: Sender, radio: Radio) -> None:
        self._sender = sender
        self._radio = radio
        self._queue_depth = 0
        self.registry = CollectorRegistry()
        self.registry.register(self)

    async def refresh(self) -> None:
        self._queue_depth, _ = await self._sender.held()

    def collect(self) -> Iterable[Metric]:
        sender = self._sender
        yield GaugeMetricFamily("kosmo_bridge_queue_depth", "Texts queued at the bridge, not "
                                "yet handed to the radio", value=self._queue_depth)
        on_air = CounterMetricFamily("kosmo_bridge_texts_on_air", "Texts handed to the radio")
        on_air.add_metric([], sender.on_air)
        yield on_air
        naks = CounterMetricFamily("kosmo_bridge_naks", "Routing errors the radio reported "
                                   "for our texts, by Meshtastic error name", labels=["reason"])
        for reason, count in sorted(sender.naks.items()):
            naks.add_metric([reason], count)
        yield naks
        rules, now = sender.pacer.rules, sender.clock.now()
        used = sender.pacer.used(now)
        yield GaugeMetricFamily("kosmo_bridge_airtime_used_ratio", "Airtime used in the "
                                "rolling hour over the duty-cycle budget (over the hour "
                                "without one)", value=used / (rules.budget or rules.window))
        yield GaugeMetricFamily("kosmo_bridge_radio_connected", "1 while the radio link is up",
                                value=int(self._radio.link is not None))
