"""LoRa time on air, the firmware's retransmission delay and the duty-cycle rules of each
Meshtastic region. Pure: no I/O, no clock. The one implementation for the bridge's pacing and
the simulated radio (bridge/sim).

Rules:
- Airtime follows the Semtech SX127x/SX126x formula (AN1200.13): explicit header, CRC on, a
  16-symbol preamble, low data rate optimisation when a symbol lasts more than 16 ms (as
  Meshtastic's ``RadioInterface::getPacketTime``). The firmware's own estimate rounds up after
  multiplying by the coding rate, so it counts at most a few symbols less than this: a budget
  spent by this formula never exceeds the firmware's.
- A modem preset maps to (spreading factor, bandwidth, coding rate) as in the firmware's
  ``modemPresetToParams``; 2.4 GHz regions (wide LoRa) use the wider bandwidths, except for
  the LITE and NARROW presets, which have none. A preset we do not know is costed as LONG_SLOW,
  the slowest standard preset, so that the estimate errs on the side of sending less.
- A packet on air is the 16-byte radio header plus the encoded ``Data`` protobuf (channel
  encryption is AES-CTR: no bytes added). A direct text from the bridge also carries the 12
  bytes of public-key encryption of firmware 2.5+; ``text_airtime`` counts them. Texts longer
  than ``MAX_TEXT_BYTES`` are refused by the radio (TOO_LARGE).
- Duty cycle is a share of airtime per rolling hour; ``None`` means the region sets no limit.
  A region missing from the table gets 10 % in ``duty_cycle``, again erring on the side of
  sending less.
- The retransmission delay follows the firmware's ``getRetransmissionMsec`` on an idle channel:
  two airtimes, a contention window of slots, and 4.5 s of processing.
- Argument order: functions of a frame or a text take the LoRa parameters first
  (``packet_airtime``, ``text_airtime``); those of a ``Data`` size take the size first
  (``data_airtime``, ``retransmission_delay``), as the simulated radio calls them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MAX_TEXT_BYTES = 233  # meshtastic Constants.DATA_PAYLOAD_LEN
HEADER_BYTES = 16  # MESHTASTIC_HEADER_LENGTH
MAX_LORA_PAYLOAD = 255  # MAX_LORA_PAYLOAD_LEN: header and Data together
PKI_OVERHEAD_BYTES = 12  # MESHTASTIC_PKC_OVERHEAD: 8-byte auth tag and 4-byte extra nonce
PREAMBLE_SYMBOLS = 16
DUTY_WINDOW = 3600.0  # seconds
PROCESSING_TIME = 4.5  # seconds the firmware adds to a retransmission delay
CW_MIN, CW_MAX = 3, 8  # the firmware's contention window exponents


@dataclass(frozen=True)
class LoraParams:
    spreading_factor: int
    bandwidth_hz: float
    coding_rate: int  # the denominator: 5 means 4/5
    preamble: int = PREAMBLE_SYMBOLS

    @property
    def symbol_time(self) -> float:
        return (1 << self.spreading_factor) / self.bandwidth_hz

    def describe(self) -> str:
        return (f"SF{self.spreading_factor} BW{self.bandwidth_hz / 1000:g}kHz "
                f"CR4/{self.coding_rate}")


# The firmware's modemPresetToParams for narrow-band regions.
PRESETS: dict[str, LoraParams] = {
    "SHORT_TURBO": LoraParams(7, 500e3, 5),
    "SHORT_FAST": LoraParams(7, 250e3, 5),
    "SHORT_SLOW": LoraParams(8, 250e3, 5),
    "MEDIUM_FAST": LoraParams(9, 250e3, 5),
    "MEDIUM_SLOW": LoraParams(10, 250e3, 5),
    "LONG_FAST": LoraParams(11, 250e3, 5),
    "LONG_TURBO": LoraParams(11, 500e3, 8),
    "LONG_MODERATE": LoraParams(11, 125e3, 8),
    "LONG_SLOW": LoraParams(12, 125e3, 8),
    "VERY_LONG_SLOW": LoraParams(12, 62.5e3, 8),
    "LITE_FAST": LoraParams(9, 125e3, 5),
    "LITE_SLOW": LoraParams(10, 125e3, 5),
    "NARROW_FAST": LoraParams(7, 62.5e3, 6),
    "NARROW_SLOW": LoraParams(8, 62.5e3, 6),
}
_FALLBACK_PRESET = "LONG_SLOW"
# Narrow-band bandwidth -> the 2.4 GHz one, in Hz (the LITE and NARROW presets keep theirs).
_WIDE_BANDWIDTH = {62.5e3: 203.125e3, 125e3: 406.25e3, 250e3: 812.5e3, 500e3: 1625e3}
_NO_WIDE_VARIANT = frozenset({"LITE_FAST", "LITE_SLOW", "NARROW_FAST", "NARROW_SLOW"})
# The firmware stores a few bandwidths rounded to whole kHz.
_CUSTOM_BANDWIDTH = {31: 31.25, 62: 62.5, 200: 203.125, 400: 406.25, 800: 812.5, 1600: 1625}

# Duty cycle in percent per region (firmware RadioInterface.cpp); 100 means no limit.
# EU_866: 2.5 % for client roles (the firmware allows routers 10 %).
REGION_DUTY_PERCENT: dict[str, float] = {
    "UNSET": 100, "US": 100, "EU_433": 10, "EU_868": 10, "CN": 100, "JP": 100, "ANZ": 100,
    "ANZ_433": 100, "KR": 100, "TW": 100, "RU": 100, "IN": 100, "NZ_865": 100, "TH": 100,
    "LORA_24": 100, "UA_433": 10, "UA_868": 1, "MY_433": 100, "MY_919": 100, "SG_923": 100,
    "PH_433": 100, "PH_868": 100, "PH_915": 100, "KZ_433": 100, "KZ_863": 100, "NP_865": 100,
    "BR_902": 100, "EU_866": 2.5, "EU_N_868": 10,
}
UNKNOWN_REGION_PERCENT = 10.0
WIDE_LORA_REGIONS = frozenset({"LORA_24"})


def preset_params(preset: str, *, wide: bool = False) -> LoraParams:
    """The LoRa parameters of a modem preset (an unknown name costs as LONG_SLOW)."""
    name = preset if preset in PRESETS else _FALLBACK_PRESET
    params = PRESETS[name]
    if wide and name not in _NO_WIDE_VARIANT:
        params = replace(params, bandwidth_hz=_WIDE_BANDWIDTH[params.bandwidth_hz])
    return params


def custom_params(spreading_factor: int, bandwidth_khz: int, coding_rate: int) -> LoraParams:
    """Parameters set by hand on the radio (``use_preset`` off)."""
    if not 5 <= spreading_factor <= 12 or bandwidth_khz <= 0 or not 5 <= coding_rate <= 8:
        raise ValueError(f"implausible LoRa settings: SF{spreading_factor} "
                         f"BW{bandwidth_khz} CR4/{coding_rate}")
    return LoraParams(spreading_factor,
                      _CUSTOM_BANDWIDTH.get(bandwidth_khz, float(bandwidth_khz)) * 1000,
                      coding_rate)


def duty_cycle(region: str) -> float | None:
    """The share of each hour the region allows on air (0.1 for 10 %), None when unlimited."""
    percent = REGION_DUTY_PERCENT.get(region, UNKNOWN_REGION_PERCENT)
    return None if percent >= 100 else percent / 100


def packet_airtime(params: LoraParams, length: int) -> float:
    """Seconds on air of a LoRa packet of ``length`` bytes (header included)."""
    sf = params.spreading_factor
    t_sym = params.symbol_time
    low_rate = 1 if t_sym > 16e-3 else 0
    preamble = (params.preamble + 4.25) * t_sym
    bits = 8 * length - 4 * sf + 28 + 16  # CRC on, explicit header
    payload_symbols = 8 + max(math.ceil(bits / (4 * (sf - 2 * low_rate))) * params.coding_rate,
                              0)
    return preamble + payload_symbols * t_sym


def data_airtime(data_size: int, params: LoraParams) -> float:
    """Seconds on air of a mesh packet whose encoded ``Data`` is ``data_size`` bytes."""
    return packet_airtime(params, HEADER_BYTES + data_size)


def retransmission_delay(data_size: int, params: LoraParams) -> float:
    """How long the firmware waits for an ACK before sending a want_ack packet again."""
    slot = 2.5 * params.symbol_time + 0.0076
    window = (1 << CW_MIN) + 2 * CW_MAX + (1 << ((CW_MIN + CW_MAX) // 2))
    return 2 * data_airtime(data_size, params) + window * slot + PROCESSING_TIME


def _varint_len(value: int) -> int:
    return max(1, math.ceil(value.bit_length() / 7))


def text_on_air_bytes(text_bytes: int) -> int:
    """Bytes on air for a direct text message of ``text_bytes`` bytes of UTF-8."""
    data = 2 + 1 + _varint_len(text_bytes) + text_bytes + 2  # portnum, payload, bitfield
    return HEADER_BYTES + data + PKI_OVERHEAD_BYTES


def text_airtime(params: LoraParams, text_bytes: int) -> float:
    return packet_airtime(params, text_on_air_bytes(text_bytes))
