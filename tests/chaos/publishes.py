"""What the gateways publish to the bridges, seen by a subscriber of the chaos run's own.

Rules:
- One paho client on its own thread, subscribed at QoS 1 to every bridge's outbound topics
  with a persistent session, so what is published while it reconnects (after a broker
  restart) is kept for it and nothing is missed.
- Each publish is counted by its payload's ``message_id``. A copy the broker sends again to
  this subscriber (DUP set: it had no PUBACK from us before the connection dropped) is a
  redelivery to the watcher, not a second publish by a gateway, and is not counted unless it
  is the first copy seen.
- Times are ``time.perf_counter()`` minus the ``origin`` given, the harness's clock.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as paho

from kosmo.config import MqttEndpoint


class PublishWatch:
    def __init__(self, url: str, topic_root: str, *, origin: float) -> None:
        self.copies: Counter[str] = Counter()  # message id -> publishes seen
        self.first: dict[str, float] = {}  # message id -> when first seen
        self.redelivered = 0  # copies the broker sent this subscriber again
        self._origin = origin
        self._topic = f"{topic_root}/bridge/+/outbound/+"
        self._subscribed = threading.Event()
        endpoint = MqttEndpoint.from_url(url)
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                   client_id="chaos-publish-watch", clean_session=False)
        self._client.reconnect_delay_set(0.05, 0.5)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(endpoint.host, endpoint.port)
        self._client.loop_start()

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"no subscription to {self._topic} within {timeout} s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(self._topic, qos=1)

    def _on_subscribe(self, *_: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        message_id = str(json.loads(msg.payload)["message_id"])
        if msg.dup and message_id in self.first:
            self.redelivered += 1
            return
        self.copies[message_id] += 1
        self.first.setdefault(message_id, time.perf_counter() - self._origin)
