"""LoRa time on air, the firmware's retransmission delay and the regional duty-cycle limits.

Rules:
- Pure functions of the modem preset and the packet size; times are seconds.
- Time on air is Semtech's formula (AN1200.13) with the firmware's radio settings: 16 preamble
  symbols, explicit header, CRC on, low-data-rate optimisation when a symbol lasts 16 ms or more.
- A packet on air is the 16-byte Meshtastic header plus the encoded ``Data`` (channel
  encryption is AES-CTR, so it adds no bytes).
- The retransmission delay follows the firmware's ``getRetransmissionMsec`` on an idle channel:
  two airtimes, a contention window of slots, and 4.5 s of processing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HEADER_BYTES = 16  # MESHTASTIC_HEADER_LENGTH
MAX_LORA_PAYLOAD = 255  # MAX_LORA_PAYLOAD_LEN
PKC_OVERHEAD = 12  # MESHTASTIC_PKC_OVERHEAD: a direct message encrypted to the node's key
PREAMBLE_SYMBOLS = 16
PROCESSING_TIME = 4.5
CW_MIN, CW_MAX = 3, 8


@dataclass(frozen=True)
class Modem:
    spreading_factor: int
    bandwidth_hz: float
    coding_rate: int  # the denominator: 5 means 4/5


# The firmware's modemPresetToParams (narrow-band LoRa, not 2.4 GHz).
PRESETS: dict[str, Modem] = {
    "SHORT_TURBO": Modem(7, 500e3, 5),
    "SHORT_FAST": Modem(7, 250e3, 5),
    "SHORT_SLOW": Modem(8, 250e3, 5),
    "MEDIUM_FAST": Modem(9, 250e3, 5),
    "MEDIUM_SLOW": Modem(10, 250e3, 5),
    "LONG_TURBO": Modem(11, 500e3, 8),
    "LONG_FAST": Modem(11, 250e3, 5),
    "LONG_MODERATE": Modem(11, 125e3, 8),
    "LONG_SLOW": Modem(12, 125e3, 8),
    "VERY_LONG_SLOW": Modem(12, 62.5e3, 8),
    "LITE_FAST": Modem(9, 125e3, 5),
    "LITE_SLOW": Modem(10, 125e3, 5),
    "NARROW_FAST": Modem(7, 62.5e3, 6),
    "NARROW_SLOW": Modem(8, 62.5e3, 6),
}

# Percent of each hour a node may transmit; regions not listed have no limit.
# (The firmware's region table; EU_866 allows 10 % to routers, 2.5 % to other roles.)
DUTY_CYCLE: dict[str, float] = {
    "EU_433": 10.0, "EU_868": 10.0, "EU_866": 2.5, "EU_N_868": 10.0, "TH": 10.0, "UA_433": 10.0,
}


def symbol_time(modem: Modem) -> float:
    return float(2 ** modem.spreading_factor) / modem.bandwidth_hz


def time_on_air(size: int, modem: Modem) -> float:
    """Seconds a LoRa frame of ``size`` bytes (header included) occupies the channel."""
    sf = modem.spreading_factor
    tsym = symbol_time(modem)
    ldro = 1 if tsym >= 0.016 else 0
    bits = 8 * size - 4 * sf + 28 + 16  # explicit header, CRC on
    payload_symbols = 8 + max(math.ceil(bits / (4 * (sf - 2 * ldro))) * modem.coding_rate, 0)
    return (PREAMBLE_SYMBOLS + 4.25 + payload_symbols) * tsym


def packet_airtime(data_size: int, modem: Modem) -> float:
    """Time on air of a mesh packet whose encoded ``Data`` is ``data_size`` bytes."""
    return time_on_air(HEADER_BYTES + data_size, modem)


def retransmission_delay(data_size: int, modem: Modem) -> float:
    """How long the firmware waits for an ACK before sending a want_ack packet again."""
    slot = 2.5 * symbol_time(modem) + 0.0076
    window = (1 << CW_MIN) + 2 * CW_MAX + (1 << ((CW_MIN + CW_MAX) // 2))
    return 2 * packet_airtime(data_size, modem) + window * slot + PROCESSING_TIME
