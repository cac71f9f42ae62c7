"""LoRa time on air and the duty-cycle rules of each Meshtastic region. Pure: no I/O, no clock.

Rules:
- Airtime follows the Semtech SX127x/SX126x formula (AN1200.13, as Meshtastic's
  ``RadioInterface::getPacketTime``): explicit header, CRC on, a 16-symbol preamble, low data
  rate optimisation when a symbol lasts more than 16 ms.
- A modem preset maps to (spreading factor, bandwidth, coding rate) as in the firmware's
  ``applyModemConfig``; 2.4 GHz regions (wide LoRa) use the wider bandwidths. A preset we do not
  know is costed as LONG_SLOW, the slowest standard preset, so that the estimate errs on the
  side of sending less.
- A text's on-air length counts the 16-byte radio header, the encoded ``Data`` protobuf
  (port number, payload, bitfield) and the 12 bytes of public-key encryption that direct
  messages carry on firmware 2.5+. Texts longer than ``MAX_TEXT_BYTES`` are refused by the
  radio (TOO_LARGE).
- Duty cycle is a share of airtime per rolling hour; ``None`` means the region sets no limit.
  A region missing from the table gets 10 %, again erring on the side of sending less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_TEXT_BYTES = 233  # meshtastic Constants.DATA_PAYLOAD_LEN
HEADER_BYTES = 16
PKI_OVERHEAD_BYTES = 12
PREAMBLE_SYMBOLS = 16
DUTY_WINDOW = 3600.0  # seconds


@dataclass(frozen=True)
class LoraParams:
    spreading_factor: int
    bandwidth_hz: float
    coding_rate: int  # the denominator: 5 means 4/5
    preamble: int = PREAMBLE_SYMBOLS

    def describe(self) -> str:
        return (f"SF{self.spreading_factor} BW{self.bandwidth_hz / 1000:g}kHz "
                f"CR4/{self.coding_rate}")


# name -> (spreading factor, bandwidth kHz, coding rate denominator), narrow-band regions.
PRESETS: dict[str, tuple[int, float, int]] = {
    "SHORT_TURBO": (7, 500, 5),
    "SHORT_FAST": (7, 250, 5),
    "SHORT_SLOW": (8, 250, 5),
    "MEDIUM_FAST": (9, 250, 5),
    "MEDIUM_SLOW": (10, 250, 5),
    "LONG_FAST": (11, 250, 5),
    "LONG_TURBO": (11, 500, 8),
    "LONG_MODERATE": (11, 125, 8),
    "LONG_SLOW": (12, 125, 8),
    "VERY_LONG_SLOW": (12, 62.5, 8),
}
_FALLBACK_PRESET = "LONG_SLOW"
_WIDE_BANDWIDTH = {62.5: 203.125, 125: 406.25, 250: 812.5, 500: 1625}
# The firmware stores a few bandwidths rounded to whole kHz.
_CUSTOM_BANDWIDTH = {31: 31.25, 62: 62.5, 200: 203.125, 400: 406.25, 800: 812.5, 1600: 1625}

# Duty cycle in percent per region (firmware RadioInterface.cpp); 100 means no limit.
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
    sf, bw_khz, cr = PRESETS.get(preset, PRESETS[_FALLBACK_PRESET])
    if wide:
        bw_khz = _WIDE_BANDWIDTH[bw_khz]
    return LoraParams(sf, bw_khz * 1000, cr)


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
    t_sym = (1 << sf) / params.bandwidth_hz
    low_rate = 1 if t_sym > 16e-3 else 0
    preamble = (params.preamble + 4.25) * t_sym
    bits = 8 * length - 4 * sf + 28 + 16  # CRC on, explicit header
    payload_symbols = 8 + max(math.ceil(bits / (4 * (sf - 2 * low_rate))) * params.coding_rate,
                              0)
    return preamble + payload_symbols * t_sym


def _varint_len(value: int) -> int:
    return max(1, math.ceil(value.bit_length() / 7))


def text_on_air_bytes(text_bytes: int) -> int:
    """Bytes on air for a direct text message of ``text_bytes`` bytes of UTF-8."""
    data = 2 + 1 + _varint_len(text_bytes) + text_bytes + 2  # portnum, payload, bitfield
    return HEADER_BYTES + data + PKI_OVERHEAD_BYTES


def text_airtime(params: LoraParams, text_bytes: int) -> float:
    return packet_airtime(params, text_on_air_bytes(text_bytes))
