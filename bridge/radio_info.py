"""What the radio says about itself, read from the meshtastic library's interface once its
configuration download is done.

Rules:
- Read once per link (bridge/radio.py calls ``radio_info`` in the connecting worker thread,
  after ``waitForConfig``); the result is frozen and describes that link only.
- Region and modem preset are the firmware's enum names; a value this library version does not
  know reads ``UNKNOWN_<n>``. Airtime is costed with the preset's LoRa parameters, or the
  radio's own spreading factor, bandwidth and coding rate when it uses no preset (falling back
  to the preset, as the firmware does, when those are not valid). A preset unknown to the
  bridge is costed as kosmo/airtime.py says, with a warning.
- ``queue_max`` is the size of the radio's transmit queue as its QueueStatus reports it (None
  until it did), which bounds the texts in flight (bridge/sender.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kosmo import airtime
from kosmo.airtime import LoraParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RadioInfo:
    node_num: int
    long_name: str | None
    short_name: str | None
    hw_model: str | None
    firmware: str | None
    region: str
    modem_preset: str | None  # None: custom LoRa settings
    lora: LoraParams
    queue_max: int | None

    @property
    def node_id(self) -> str:
        return f"!{self.node_num:08x}"

    def describe(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "long_name": self.long_name,
                "short_name": self.short_name, "hw_model": self.hw_model,
                "firmware_version": self.firmware, "region": self.region,
                "modem_preset": self.modem_preset or "CUSTOM", "lora": self.lora.describe()}


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return f"UNKNOWN_{value}"


def radio_info(iface: Any) -> RadioInfo:
    """What the radio told us during its configuration download."""
    from meshtastic.protobuf import config_pb2

    lora_enum = config_pb2.Config.LoRaConfig
    num = int(iface.myInfo.my_node_num)
    user = ((iface.nodesByNum or {}).get(num) or {}).get("user") or {}
    lora = iface.localNode.localConfig.lora
    region = _enum_name(lora_enum.RegionCode, lora.region)
    wide = region in airtime.WIDE_LORA_REGIONS
    preset: str | None = _enum_name(lora_enum.ModemPreset, lora.modem_preset)
    params = airtime.preset_params(preset or "", wide=wide)
    if not lora.use_preset:
        try:
            params = airtime.custom_params(lora.spread_factor, lora.bandwidth, lora.coding_rate)
            preset = None
        except ValueError:
            pass  # the firmware also falls back to the preset
    if preset is not None and preset not in airtime.PRESETS:
        log.warning("modem preset %s is unknown to the bridge: airtime is costed as %s",
                    preset, params.describe())
    metadata = getattr(iface, "metadata", None)
    queue = getattr(iface, "queueStatus", None)
    return RadioInfo(
        node_num=num, long_name=user.get("longName"), short_name=user.get("shortName"),
        hw_model=user.get("hwModel"),
        firmware=(metadata.firmware_version or None) if metadata is not None else None,
        region=region, modem_preset=preset, lora=params,
        queue_max=int(queue.maxlen) if queue is not None and queue.maxlen else None)
