"""A bridge's side of MQTT for tests: publish status reports, replies and bridge states."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho

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
        body: dict[str, Any] = {"message_id": message_id, "status": status,
                                "bridge_id": bridge_id or self.bridge_id,
                                "at": datetime.now(UTC).isoformat()}
        if reason is not None:
            body["reason"] = reason
        if packet_id is not None:
            body["packet_id"] = packet_id
        self.publish(f"{self.root}/mesh/status", body)

    def reply(self, from_node: str, text: str, packet_id: int, *,
              reply_to: int | None = None, bridge_id: str | None = None) -> None:
        body: dict[str, Any] = {"from_node_id": from_node, "text": text, "packet_id": packet_id,
                                "bridge_id": bridge_id or self.bridge_id,
                                "rx_time": int(datetime.now(UTC).timestamp())}
        if reply_to is not None:
            body["reply_to_packet_id"] = reply_to
        self.publish(f"{self.root}/mesh/inbound", body)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
