"""The MQTT subscriber of bench/accept.py: when did each published message reach a consumer?

Runs in its own process so that the load generator never delays its clock readings. It
subscribes (QoS 1, clean session) to a topic filter, prints ``subscribed`` once the broker
confirmed, and notes ``time.monotonic()`` (a clock shared by all processes of the machine) as
each message arrives. When its stdin closes, or after ``--max-seconds``, it prints one line per
message, ``<message_id> <monotonic seconds>``, then ``end``, and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from typing import Any

from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

from kosmo.config import MqttEndpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--topic", required=True,
                        help="topic filter, e.g. root/bridge/ID/outbound/+")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    endpoint = MqttEndpoint.from_url(args.mqtt_url)

    seen: list[tuple[bytes, float]] = []
    stdin_closed = threading.Event()

    def on_connect(client: Client, *_: Any) -> None:
        client.subscribe(args.topic, qos=1)

    def on_subscribe(*_: Any) -> None:
        print("subscribed", flush=True)

    def on_message(client: Client, userdata: Any, msg: MQTTMessage) -> None:
        seen.append((bytes(msg.payload), time.monotonic()))  # parse later, off the clock

    def wait_stdin() -> None:
        sys.stdin.buffer.read()  # returns at EOF; blocks in a syscall, without the GIL
        stdin_closed.set()

    client = Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4().hex[:8]}",
                    clean_session=True)
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls:
        client.tls_set()
    client.on_connect, client.on_subscribe, client.on_message = (
        on_connect, on_subscribe, on_message)
    client.connect(endpoint.host, endpoint.port)
    threading.Thread(target=wait_stdin, daemon=True).start()
    deadline = time.monotonic() + args.max_seconds
    while not stdin_closed.is_set() and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    client.disconnect()

    out = sys.stdout
    for payload, at in seen:
        message_id = json.loads(payload).get("message_id", "?")
        out.write(f"{message_id} {at!r}\n")
    out.write("end\n")
    out.flush()


if __name__ == "__main__":
    main()
