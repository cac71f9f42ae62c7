"""A bridge's side of MQTT for tests: publish status reports, replies and bridge states.

What it publishes is built by ``kosmo.wire``, as the bridge builds it; ``publish`` sends any
bytes (or a dict as plain JSON) for payloads the contract does not allow.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import paho.mqtt.client as paho

from kosmo import wire
from kosmo.clock import utcnow
from kosmo.config import MqttEndpoint


class FakeBridgeLink:
    """A real MQTT client publishing what a bridge would, QoS 1, waiting for each PUBACK."""

    def __init__(self, url: str, root: str, bridge_id: str = "!b0000001") -> None:
        endpoint = MqttEndpoint.from_url(url)
        self.root = root
        self.bridge_id = bridge_id
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                   client_id=f"bridge-{uuid.uuid4().hex[:8]}")
        self._client.connect(endpoint.host, endpoint.port)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes | dict[str, Any], *, retain: bool = False) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self._client.publish(topic, raw, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)

    def status(self, message_id: str, status: str, *, reason: str | None = None,
               packet_id: int | None = None, bridge_id: str | None = None) -> None:
        self.publish(wire.status_topic(self.root), wire.status_payload(
            message_id, status, bridge_id=bridge_id or self.bridge_id, at=utcnow(),
            packet_id=packet_id, reason=reason))

    def reply(self, from_node: str, text: str, packet_id: int, *,
              reply_to: int | None = None, bridge_id: str | None = None) -> None:
        self.publish(wire.inbound_topic(self.root), wire.inbound_payload(
            from_node, text, packet_id=packet_id, bridge_id=bridge_id or self.bridge_id,
            rx_time=utcnow(), reply_to=reply_to))

    def state(self, state: str, info: dict[str, Any] | None = None, *,
              bridge_id: str | None = None, retain: bool = True) -> None:
        """A bridge state, retained as a bridge publishes it."""
        self.publish(wire.bridge_state_topic(self.root, bridge_id or self.bridge_id),
                     wire.state_payload(state, info), retain=retain)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
