"""Routing: which one online bridge a message for a node goes to. Pure: no I/O, no clock.

Rules:
- Only online bridges are candidates. Among those whose radio heard the node (coverage), the
  ones that heard it within ``RECENT`` of the most recent hearing compete; of those the fewest
  hops away wins, then the best SNR, then the most recent hearing, then the bridge id (so the
  choice is stable). A hop count or SNR not known ranks after every known one.
- A node no online bridge has heard goes to the online bridge whose radio would send a new text
  soonest (``waits``: seconds until then), ties by bridge id.
- No online bridge: no route (the message waits for one).
- Stickiness is the caller's: once a node has messages waiting or held on a bridge, the
  dispatcher keeps the node there while that bridge is online (kosmo/../actors/dispatcher.py),
  so one user's messages to one node go on air in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

RECENT = timedelta(hours=1)


@dataclass(frozen=True)
class Hearing:
    """One bridge's newest observation of one node (a row of ``coverage``)."""

    bridge_id: str
    node_id: str
    last_heard: datetime
    snr: float | None = None
    hops_away: int | None = None


def _rank(h: Hearing) -> tuple[int, float, float, str]:
    hops = h.hops_away if h.hops_away is not None else 99
    snr = -h.snr if h.snr is not None else float("inf")
    return (hops, snr, -h.last_heard.timestamp(), h.bridge_id)


def choose_bridge(hearings: Iterable[Hearing], waits: Mapping[str, float]) -> str | None:
    """The bridge for a node: ``hearings`` are the node's coverage rows (any bridge), ``waits``
    the online bridges and the seconds until each would send a new text."""
    heard = [h for h in hearings if h.bridge_id in waits]
    if heard:
        newest = max(h.last_heard for h in heard)
        recent = [h for h in heard if newest - h.last_heard <= RECENT]
        return min(recent, key=_rank).bridge_id
    if not waits:
        return None
    return min(waits, key=lambda b: (waits[b], b))
