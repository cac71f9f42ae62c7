"""What the simulated radio counts and what it puts on air: its counters, and the air log.

Rules:
- ``SimStats`` are plain counters the radio bumps; tests and chaos runs read them.
- An ``AirRecord`` is one text going on air: each transmission, a retransmission included,
  which keeps the packet id of the first. Only texts (TEXT_MESSAGE_APP) are recorded.
- The air log (``AirLog``) is the radio's only file: one JSON object per line,
  ``{"at", "packet_id", "to", "bytes", "text"}``, appended and flushed as the text goes on air,
  so a reader (a test, a benchmark) sees it at once and two radios can share nothing but the
  format. ``at`` is when the transmission started, by the radio's clock (its start time plus
  simulated seconds: wall time at time scale 1), ISO 8601 UTC; ``to`` the destination's node id
  (``!ffffffff`` for a broadcast); ``bytes`` the text's length in UTF-8.
- The log is written from the thread that drives the radio (the server's Trio thread): a line
  is small and flushed, not fsynced; a simulation does not need it to survive a crash.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from bridge.sim.protocol import node_id
from kosmo.clock import iso


@dataclass
class SimStats:
    """Counters for tests and chaos runs. ``transmissions`` counts times on air per packet id."""

    received: int = 0  # packets from the client
    heartbeats: int = 0
    transmissions: Counter[int] = field(default_factory=Counter)
    transmissions_by_text: Counter[str] = field(default_factory=Counter)
    # Texts taken onto the transmit queue, one per packet the client handed over: a text
    # handed over twice (the same message sent twice) counts 2 here, a retransmission does not.
    accepted_by_text: Counter[str] = field(default_factory=Counter)
    delivered_by_text: Counter[str] = field(default_factory=Counter)  # delivery ACKs sent
    heard_by_text: Counter[str] = field(default_factory=Counter)  # transmissions someone heard
    naks: Counter[str] = field(default_factory=Counter)  # by Routing.Error name
    acks: Counter[str] = field(default_factory=Counter)  # "implicit", "delivered"
    replies: int = 0
    lost: int = 0  # transmissions nobody heard because of ``loss``
    queue_rejects: int = 0
    duplicates: int = 0
    ignored: int = 0
    malformed: int = 0
    to_phone_dropped: int = 0
    airtime: float = 0.0


@dataclass(frozen=True)
class AirRecord:
    at: float  # UNIX seconds by the radio's clock
    packet_id: int
    to: int
    text: str

    def json_line(self) -> str:
        return json.dumps({
            "at": iso(datetime.fromtimestamp(self.at, UTC)), "packet_id": self.packet_id,
            "to": node_id(self.to), "bytes": len(self.text.encode()), "text": self.text,
        }, ensure_ascii=False) + "\n"


class AirLog:
    """Appends each ``AirRecord`` to a file as one line, flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: AirRecord) -> None:
        self._file.write(record.json_line())
        self._file.flush()

    def close(self) -> None:
        self._file.close()
