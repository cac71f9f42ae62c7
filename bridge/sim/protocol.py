"""The Meshtastic stream framing (serial and TCP), and node id spelling.

Rules:
- A frame is ``0x94 0xC3 len_hi len_lo`` followed by ``len`` bytes of protobuf: ``ToRadio``
  from the client, ``FromRadio`` from the device. ``len`` is at most 512; a longer header is a
  false start and the decoder resynchronises on the next ``0x94``.
- Bytes outside frames are skipped, not errors: clients send a burst of ``0xC3`` wake bytes
  before their first frame, and a device may interleave plain-text log lines.
- The decoder holds at most one partial frame (516 bytes): memory is bounded whatever the peer
  sends.
- Node ids are ``!`` and eight lowercase hex digits of the 32-bit node number.
"""

from __future__ import annotations

START1 = 0x94
START2 = 0xC3
HEADER_LEN = 4
MAX_PAYLOAD = 512  # the firmware's MAX_TO_FROM_RADIO_SIZE
BROADCAST_NUM = 0xFFFFFFFF


class FrameError(ValueError):
    """A frame that cannot be encoded (its payload is too long)."""


def encode_frame(payload: bytes) -> bytes:
    """One frame carrying ``payload`` (a serialized ``FromRadio`` or ``ToRadio``)."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return bytes([START1, START2, len(payload) >> 8, len(payload) & 0xFF]) + payload


class FrameDecoder:
    """Turns a byte stream into frame payloads, like the firmware's stream reader."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped = 0  # bytes outside frames (wake bytes, noise, false starts)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of the frames they complete, in order."""
        self._buf += data
        frames: list[bytes] = []
        while self._buf:
            start = self._buf.find(START1)
            if start < 0:
                self._skip(len(self._buf))
                break
            self._skip(start)
            if len(self._buf) < 2:
                break
            if self._buf[1] != START2:
                self._skip(1)
                continue
            if len(self._buf) < HEADER_LEN:
                break
            length = (self._buf[2] << 8) | self._buf[3]
            if length > MAX_PAYLOAD:
                self._skip(1)
                continue
            if len(self._buf) < HEADER_LEN + length:
                break
            frames.append(bytes(self._buf[HEADER_LEN:HEADER_LEN + length]))
            del self._buf[:HEADER_LEN + length]
        return frames

    def _skip(self, count: int) -> None:
        self.skipped += count
        del self._buf[:count]


def node_id(num: int) -> str:
    """``0xa1b2c3d4`` -> ``"!a1b2c3d4"``."""
    return f"!{num & 0xFFFFFFFF:08x}"


def parse_node_id(text: str) -> int:
    """``"!a1b2c3d4"`` (or ``"0xa1b2c3d4"`` or bare hex) -> the node number."""
    digits = text.strip().lower().removeprefix("!").removeprefix("0x")
    if not 1 <= len(digits) <= 8:
        raise ValueError(f"not a node id: {text!r}")
    try:
        return int(digits, 16)
    except ValueError:
        raise ValueError(f"not a node id: {text!r}") from None
