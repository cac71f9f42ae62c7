"""The MQTT publisher of bench/inbound.py: a bridge's replies and delivery reports at a set rate.

One process, one paho client (QoS 1, clean session), one thread: it publishes each item at its
scheduled time and reads the PUBACKs in between. Open loop: item i of a step is due at
``t0 + i / rate`` (``time.monotonic()``, a clock shared by all processes of the machine)
whatever happened before, so a slow broker or gateway cannot slow the offered load down.
Several processes share a step: process ``index`` of ``procs`` publishes the items whose
partition key is ``index`` modulo ``procs`` (the item for replies; the message for delivery
reports, so that the two reports on one message leave one connection, in order).

Prints ``connected`` once the broker accepted the connection. Then reads one JSON command per
line on stdin and answers each with one JSON line on stdout:

  {"kind": "inbound" | "status" | "void", "rate": R, "seconds": S, "t0": T, "first": N}
  -> {"published": n, "acked": n, "lag_p50_ms": x, "lag_p99_ms": x, "cpu_s": x,
      "first_at": t, "last_at": t}

- ``inbound``: item i is a reply, sequence number ``first + i``, from the node of user
  ``seq % users``, text ``bench <seq> ...``, packet id ``seq``.
- ``status``: item i is a report on outbound message ``first + i // 2``: ``transmitted``
  (with packet id) for even i, ``delivered`` for odd i.
- ``void``: a small payload to ``{root}/bench/void`` (no subscriber): the publisher's own
  ceiling, with the broker.

Every step ends by its deadline (``seconds`` + 10 s at most for the PUBACKs). stdin closing, or
``--max-seconds``, ends the process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import select
import time
import uuid
from typing import Any

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from kosmo.config import MqttEndpoint

ACK_GRACE = 10.0  # seconds after a step's last publish to collect its PUBACKs


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Publisher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        endpoint = MqttEndpoint.from_url(args.mqtt_url)
        self.client = Client(CallbackAPIVersion.VERSION2,
                             client_id=f"bench-pub-{uuid.uuid4().hex[:10]}", clean_session=True)
        if endpoint.username is not None:
            self.client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            self.client.tls_set()
        self.client.max_inflight_messages_set(0)  # no limit: the schedule decides
        self.client.max_queued_messages_set(0)
        self.acked = 0
        self.client.on_publish = self._on_publish
        self.client.connect(endpoint.host, endpoint.port, keepalive=60)
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise SystemExit("mesh_publisher: no CONNACK within 10 s")
            self.client.loop(timeout=0.05)
        root = args.topic_root
        self.topics = {"inbound": f"{root}/mesh/inbound", "status": f"{root}/mesh/status",
                       "void": f"{root}/bench/void"}

    def _on_publish(self, *_: Any) -> None:
        self.acked += 1

    def payload(self, kind: str, seq: int) -> bytes:
        a = self.args
        if kind == "inbound":
            node = a.node_template.format(seq % a.users)
            return json.dumps({"from_node_id": node, "text": f"bench {seq} reply from the mesh",
                               "packet_id": seq, "bridge_id": "bench-bridge",
                               "rx_time": time.time()}).encode()
        if kind == "status":
            message, delivered = divmod(seq, 2)
            report: dict[str, Any] = {"message_id": a.message_template.format(message),
                                      "status": "delivered" if delivered else "transmitted",
                                      "bridge_id": "bench-bridge", "at": time.time()}
            if not delivered:
                report["packet_id"] = message
            return json.dumps(report).encode()
        return b'{"bench": %d}' % seq

    def step(self, command: dict[str, Any]) -> dict[str, Any]:
        kind, rate, seconds = command["kind"], float(command["rate"]), float(command["seconds"])
        t0, first = float(command["t0"]), int(command["first"])
        procs, index = self.args.procs, self.args.index
        total = int(rate * seconds)
        topic = self.topics[kind]
        # status: item i is report i % 2 on message first/2 + i // 2 (first is even)
        pair = kind == "status"
        cpu0, acked0 = time.process_time(), self.acked
        lags: list[float] = []
        published = 0
        first_at = last_at = float("nan")
        hard_end = t0 + seconds + 5  # a publisher that fell this far behind stops
        for i in range(total):
            if (i // 2 if pair else i) % procs != index:
                continue
            due = t0 + i / rate
            now = time.monotonic()
            while now < due:
                self.client.loop(timeout=min(due - now, 0.01))
                now = time.monotonic()
            if now > hard_end:
                break
            if published % 64 == 0 and now - due > 0.002:
                self.client.loop(timeout=0)  # behind: still read PUBACKs now and then
            info = self.client.publish(topic, self.payload(kind, first + i), qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise SystemExit(f"mesh_publisher: publish failed, rc={info.rc}")
            lags.append(now - due)
            published += 1
            if published == 1:
                first_at = now
            last_at = now
        deadline = time.monotonic() + ACK_GRACE
        while self.acked - acked0 < published and time.monotonic() < deadline:
            self.client.loop(timeout=0.01)
        return {"published": published, "acked": self.acked - acked0,
                "lag_p50_ms": 1000 * percentile(lags, 50),
                "lag_p99_ms": 1000 * percentile(lags, 99),
                "cpu_s": time.process_time() - cpu0, "first_at": first_at, "last_at": last_at}

    def serve(self) -> None:
        print("connected", flush=True)
        deadline = time.monotonic() + self.args.max_seconds
        buffer = b""
        while time.monotonic() < deadline:
            if b"\n" not in buffer:
                ready, _, _ = select.select([0], [], [], 0.05)
                if not ready:
                    self.client.loop(timeout=0)  # keep-alive while idle
                    continue
                data = os.read(0, 65536)
                if not data:
                    break  # stdin closed: the bench is done with us
                buffer += data
                continue
            line, buffer = buffer.split(b"\n", 1)
            print(json.dumps(self.step(json.loads(line))), flush=True)
        self.client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mqtt-url", required=True)
    parser.add_argument("--topic-root", required=True)
    parser.add_argument("--procs", type=int, default=1, help="publisher processes in all")
    parser.add_argument("--index", type=int, default=0, help="this one's number, 0-based")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--node-template", required=True, help="node id of user u, str.format")
    parser.add_argument("--message-template", required=True,
                        help="id of outbound message m, str.format")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    Publisher(args).serve()


if __name__ == "__main__":
    main()
