"""The gateway's Prometheus metrics (docs/metrics.md lists every family).

Rules:
- One ``CollectorRegistry`` per gateway (never the global one), so several gateways in one
  process, and tests, each count their own.
- Counters and histograms are moved only by the actor that does the work: the ledger (accepted,
  rejected by reason, status transitions it committed, refunds, the latency between statuses),
  the inbound consumer (dead letters, bucketed into ``DEAD_LETTER_REASONS``) and the HTTP front
  (the accept latency, and the mesh-congested refusals it answers before the ledger). Each
  increment is O(1) and made once per batch item already in hand: no lock, no I/O.
- Gauges whose value lives in an actor (dispatcher queues, conversations, streams, bridges,
  broker, database) are not written at all: ``LiveGauges`` reads them when Prometheus scrapes,
  in the Trio thread, where no actor runs at the same time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kosmo.delivery import Status
from kosmo.domain import Refusal
from kosmo.ledger_store import Accepted, Applied, Refused

# Latency buckets, seconds: an accept is milliseconds, time on the mesh is seconds to hours.
ACCEPT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MESH_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
DEAD_LETTER_REASONS = ("too_large", "not_utf8", "not_json", "bad_topic", "unknown_message",
                       "bad_fields")


def dead_letter_reason(reason: str) -> str:
    """The stable label for a dead letter's free-text reason."""
    if reason.startswith("unknown message id"):
        return "unknown_message"
    if "bytes is over" in reason:
        return "too_large"
    if "not UTF-8" in reason:
        return "not_utf8"
    if "not JSON" in reason or "not a JSON" in reason:
        return "not_json"
    if "topic" in reason:
        return "bad_topic"
    return "bad_fields"


class GatewayMetrics:
    """The counters and histograms of one gateway, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.accepted = Counter("kosmo_messages_accepted", "Messages accepted (stored and "
                                "debited)", registry=r)
        self.rejected = Counter("kosmo_messages_rejected", "Sends refused, by problem type",
                                ["reason"], registry=r)
        self.status = Counter("kosmo_message_status", "Status changes committed by the ledger, "
                              "by the status entered", ["status"], registry=r)
        self.refunds = Counter("kosmo_refunds", "Messages refunded (failed, expired, "
                               "canceled)", registry=r)
        self.dead_letters = Counter("kosmo_dead_letters", "Unusable MQTT messages kept in "
                                    "dead_letters, by reason", ["reason"], registry=r)
        self.accept_seconds = Histogram(
            "kosmo_accept_seconds", "Time to answer an accepted send (admission, debit, "
            "commit)", buckets=ACCEPT_BUCKETS, registry=r)
        self.accept_to_publish = Histogram(
            "kosmo_accept_to_publish_seconds", "From accepted to published on its bridge's "
            "topic (queued)", buckets=MESH_BUCKETS, registry=r)
        self.publish_to_transmitted = Histogram(
            "kosmo_publish_to_transmitted_seconds", "From queued to transmitted by the radio",
            buckets=MESH_BUCKETS, registry=r)
        self.transmitted_to_delivered = Histogram(
            "kosmo_transmitted_to_delivered_seconds", "From transmitted to acknowledged by the "
            "node", buckets=MESH_BUCKETS, registry=r)
        # Each labelled family shows its known labels at 0 from the start (rate() needs that).
        for refusal in Refusal:
            self.rejected.labels(refusal.value)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        self._latency = {(Status.PENDING, Status.QUEUED): self.accept_to_publish,
                         (Status.QUEUED, Status.TRANSMITTED): self.publish_to_transmitted,
                         (Status.TRANSMITTED, Status.DELIVERED): self.transmitted_to_delivered}

    def dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(dead_letter_reason(reason)).inc()

    def sends(self, results: Iterable[Accepted | Refused]) -> None:
        """A committed batch of sends (the ledger)."""
        for result in results:
            if isinstance(result, Accepted):
                self.accepted.inc()
            else:
                self.rejected.labels(result.refusal.value).inc()

    def reports(self, applied: Iterable[Applied]) -> None:
        """A committed batch of delivery reports (the ledger): statuses entered, refunds and
        the time spent in the status left."""
        for item in applied:
            transition = item.transition
            if transition is None or not transition.changed:
                continue
            self.status.labels(transition.after.value).inc()
            if transition.refund:
                self.refunds.inc()
            latency = self._latency.get((transition.before, transition.after))
            if latency is not None and item.since is not None:
                latency.observe(max(0.0, (item.report.at - item.since).total_seconds()))

    def canceled(self, count: int) -> None:
        """Messages canceled (and refunded) in a committed batch (the ledger)."""
        if count:
            self.status.labels(Status.CANCELED.value).inc(count)
            self.refunds.inc(count)


@dataclass(frozen=True)
class LiveGauges(Collector):
    """Gauges read from the actors at scrape time. Each source is a plain call, no await."""

    waiting: Callable[[], Mapping[str, int]]  # dispatcher: waiting messages per bridge ('' none)
    held: Callable[[], Mapping[str, int]]  # dispatcher: messages each online bridge holds
    node_actors: Callable[[], int]
    streams: Callable[[], int]
    bridges: Callable[[], Mapping[str, str]]  # bridge id -> state
    mqtt_connected: Callable[[], bool]
    mqtt_reconnects: Callable[[], int]
    database_up: Callable[[], bool]

    def collect(self) -> Iterable[Metric]:
        waiting = self.waiting()
        yield _gauge("kosmo_pending_messages", "Accepted messages waiting for a bridge's turn "
                     "(this process's dispatcher)", sum(waiting.values()))
        family = GaugeMetricFamily("kosmo_waiting_messages", "Waiting messages by the bridge "
                                   "whose queue they are in ('' for none)", labels=["bridge"])
        for bridge, count in sorted(waiting.items()):
            family.add_metric([bridge], count)
        yield family
        family = GaugeMetricFamily("kosmo_bridge_credit_held", "Messages handed to a bridge "
                                   "and not yet on air (its credit in use)", labels=["bridge"])
        for bridge, count in sorted(self.held().items()):
            family.add_metric([bridge], count)
        yield family
        yield _gauge("kosmo_node_actors", "Node conversation actors running",
                     self.node_actors())
        yield _gauge("kosmo_streams", "Live event streams open", self.streams())
        states: dict[str, int] = {"online": 0, "offline": 0}
        for state in self.bridges().values():
            states[state] = states.get(state, 0) + 1
        family = GaugeMetricFamily("kosmo_bridges", "Bridges known, by their last state",
                                   labels=["state"])
        for state, count in sorted(states.items()):
            family.add_metric([state], count)
        yield family
        yield _gauge("kosmo_mqtt_connected", "1 while connected to the broker",
                     int(self.mqtt_connected()))
        counter = CounterMetricFamily("kosmo_mqtt_reconnects", "Connections to the broker "
                                      "after the first")
        counter.add_metric([], self.mqtt_reconnects())
        yield counter
        yield _gauge("kosmo_database_up", "1 while the database answers",
                     int(self.database_up()))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
