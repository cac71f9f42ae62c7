"""Settings of the bridge daemon: environment first, then command-line flags.

Rules (as kosmo/config.py):
- Every setting has an environment variable and a ``--flag``; a flag wins.
- An invalid setting raises ``ConfigError`` with one line naming the variable or flag; the CLI
  prints it and exits 2. Nothing here prints or logs.
- The broker URL and topic root are the gateway's own variables (``KOSMO_MQTT_URL``,
  ``KOSMO_MQTT_TOPIC_ROOT``). The MQTT client id is not a setting: it is derived from the
  bridge id, which names the persistent session.
- ``credit`` is only said, in the retained state: the gateway hands the bridge at most that
  many unsent texts. The bridge takes whatever it is given all the same (an older gateway
  hands it everything).
- The bridge id, when not given, is the radio's node id, learned at the first start and kept
  in the state directory, so the session (and the retained state topic) stays the same.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from actors.mqtt import Protocol
from bridge.radio import Device
from kosmo import config as kosmo_config
from kosmo.airtime import REGION_DUTY_PERCENT
from kosmo.config import (
    MqttEndpoint,
    Option,
    parse_duration,
    parse_optional_bind,
    parse_topic_root,
)

MAX_CREDIT = 64  # texts held unsent at most: a few seconds to minutes of airtime


def parse_bridge_id(text: str) -> str:
    if not re.fullmatch(r"[^/+#\s\x00]{1,64}", text):
        raise ValueError(f"{text!r} must be 1..64 characters without '/', '+', '#' or spaces")
    return text


def parse_region(text: str) -> str:
    region = text.strip().upper()
    if region not in REGION_DUTY_PERCENT:
        raise ValueError(f"{text!r} is not a Meshtastic region (e.g. EU_868, US, ANZ)")
    return region


def parse_credit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_CREDIT:
        raise ValueError(f"{text!r} must be from 1 to {MAX_CREDIT}")
    return value


def parse_time_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0 < value <= 1000:
        raise ValueError(f"{text!r} must be above 0 and at most 1000")
    return value


OPTIONS: dict[str, Option] = {
    "device": Option(
        "KOSMO_RADIO", Device.parse, "serial:auto",
        "the radio: tcp:HOST[:PORT] (port 4403 by default), serial:PATH or serial:auto"),
    "bridge_id": Option(
        "KOSMO_BRIDGE_ID", parse_bridge_id, None,
        "this bridge's name in MQTT topics and reports (default: the radio's node id, "
        "kept in the state directory)"),
    "region": Option(
        "KOSMO_BRIDGE_REGION", parse_region, None,
        "the region whose duty-cycle rule paces sending, e.g. EU_868 (10%% of each hour) or US "
        "(none) (default: the radio's configured region)"),
    "mqtt_url": Option(
        "KOSMO_MQTT_URL", MqttEndpoint.from_url, "mqtt://127.0.0.1:1883",
        "broker URL: mqtt://user:pass@host:port, or mqtts:// for TLS", secret=True),
    "mqtt_topic_root": Option(
        "KOSMO_MQTT_TOPIC_ROOT", parse_topic_root, "kosmo", "first level of every MQTT topic"),
    "state_dir": Option(
        "KOSMO_BRIDGE_STATE_DIR", Path, ".kosmo/bridge",
        "where the bridge keeps its queue and outbox (SQLite); one bridge per directory"),
    "result_timeout": Option(
        "KOSMO_BRIDGE_RESULT_TIMEOUT", parse_duration, "5m",
        "how long after the hand-over to wait for a text's routing result and delivery ACK "
        "before reporting it failed (radio time)"),
    "credit": Option(
        "KOSMO_BRIDGE_CREDIT", parse_credit, "2",
        f"how many unsent texts the gateway may hand this bridge at a time, 1..{MAX_CREDIT}; "
        "the rest wait at the gateway, where they can still be rerouted or canceled"),
    "time_scale": Option(
        "KOSMO_BRIDGE_TIME_SCALE", parse_time_scale, "1",
        "radio seconds per real second, for a simulated radio that runs faster (keep 1 with "
        "a real radio)"),
    "metrics_bind": Option(
        "KOSMO_BRIDGE_METRICS_BIND", parse_optional_bind, None,
        "HOST:PORT serving the bridge's Prometheus metrics at /metrics, e.g. 127.0.0.1:9465; "
        "unset or 'off': none"),
}


@dataclass(frozen=True)
class BridgeSettings:
    device: Device = field(default_factory=lambda: Device("serial"))
    bridge_id: str | None = None
    region: str | None = None
    mqtt_url: MqttEndpoint = field(default_factory=lambda: MqttEndpoint("127.0.0.1", 1883))
    mqtt_topic_root: str = "kosmo"
    state_dir: Path = Path(".kosmo/bridge")
    result_timeout: float = 300.0
    credit: int = 2
    time_scale: float = 1.0
    metrics_bind: tuple[str, int] | None = None
    # Not an option: MQTT 5 (docs/mqtt.md); `kosmo up` falls back to 3.1.1 for amqtt, which
    # speaks nothing else (it leaves an MQTT 5 CONNECT unanswered).
    mqtt_protocol: Protocol = "5"

    def describe(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in OPTIONS:
            value = getattr(self, name)
            out[name] = value.redacted() if isinstance(value, MqttEndpoint) else str(value)
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kosmo_config.add_arguments(parser, options=OPTIONS)


def load(environ: Mapping[str, str], args: argparse.Namespace | None = None) -> BridgeSettings:
    return BridgeSettings(**kosmo_config.read_values(environ, args, OPTIONS))
