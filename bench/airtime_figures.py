"""The airtime bench's figures, from what one round recorded. Pure: no I/O, no clock.

Rules (bench/README.md says how to read them):
- Times on air are the radios' own: each text's start by its radio's clock (radio seconds, for
  the legal pace) and the wall time at which the radio put it on air (for waits and estimates).
- On air twice: a message that went on air under more than one (radio, packet id). A firmware
  retransmission keeps its packet id and is not counted.
- Legal rate: the most texts a greedy sender could put on air over a radio's backlogged
  intervals (from a text's start while the next was already accepted, to the last start of
  such a run), the same texts in the same order, under the
  firmware's one text per 2 s and the region's duty cycle as a rolling hour (as the radio
  enforces it), starting with an unused hour. ``pace`` does the same with the bridge's own gap.
- Fairness: per radio, over the users with texts on it, from the moment all of them had sent
  to the moment the first of them had its last text on air (all backlogged throughout), each
  user's airtime on air / its plan weight; Jain's index of those.
- A light user's wait: its first text, from the 201 to on air; the texts that went on air on
  its radio meanwhile, against what one deficit round robin round allows ahead of it: the
  bridge's credit plus, for each other user waiting on that radio when it arrived, one turn
  (``quantum * weight + c_max``, counted in that user's shortest texts, at most what that user
  had sent before this text went on air and was still to send when it arrived).
- Estimate error: |actual - estimated| / (actual - accepted), the estimate from the 201 answer,
  the actual either the ``transmitted`` line of the message's history or the radio's on-air
  time. The 201's estimate cannot know of the texts that arrive later and go ahead of it in
  the fair order, so the row's estimate is also read while the message waits: the reading
  nearest the middle of its wait, |actual - estimated| / (actual - read at).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

FIRMWARE_GAP = 2.0  # radio seconds between two texts' starts (firmware 2.7)


@dataclass(frozen=True)
class OnAir:
    radio: str
    packet_id: int
    text: str
    radio_at: float  # radio seconds, the radio's clock
    wall_at: float  # UNIX seconds when the radio put it on air


@dataclass(frozen=True)
class Sent:
    message_id: str
    user: str
    weight: int
    text: str
    cost: float  # airtime, radio seconds
    accepted: float  # UNIX seconds of the 201
    estimate: float | None  # estimated_transmit_at of the 201, UNIX seconds
    light: bool
    first_of_user: bool
    target: str = ""  # the node it is for
    position: int | None = None  # the 201's queue_position


@dataclass
class RoundData:
    sent: list[Sent]
    on_air: list[OnAir]
    transmitted: dict[str, float]  # message id -> ``transmitted`` in its history, UNIX seconds
    canceled: set[str]
    credit: int
    quantum: float  # the dispatcher's quantum: airtime of the longest text, radio seconds
    duty: float | None
    bridge_gap: float  # the bridge's pacing gap, radio seconds
    naks: Counter[str] = field(default_factory=Counter)
    # message id -> (UNIX seconds read, estimated_transmit_at) of its row while it waited
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def jain(values: Sequence[float]) -> float:
    if not values or not any(values):
        return math.nan
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def greedy_count(costs: Sequence[float], start: float, end: float, *, gap: float,
                 duty: float | None, window: float = 3600.0) -> int:
    """How many of ``costs`` (in order) a sender that starts each as soon as allowed puts on
    air from ``start`` to ``end`` (inclusive, with a small tolerance for clock jitter)."""
    budget = None if duty is None else duty * window
    starts: list[tuple[float, float]] = []
    at = start
    for cost in costs:
        if budget is not None:
            while True:
                used = sum(c for s, c in starts if s > at - window)
                if used + cost <= budget + 1e-9:
                    break
                at = min(s for s, _ in starts if s > at - window) + window + 1e-6
        if at > end + 1e-3:
            break
        starts.append((at, cost))
        at += max(gap, cost)
    return len(starts)


def twice(data: RoundData) -> int:
    packets: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for rec in data.on_air:
        packets[rec.text].add((rec.radio, rec.packet_id))
    return sum(1 for p in packets.values() if len(p) > 1)


def _first_on_air(data: RoundData) -> dict[str, OnAir]:
    first: dict[str, OnAir] = {}
    for rec in sorted(data.on_air, key=lambda r: r.wall_at):
        first.setdefault(rec.text, rec)
    return first


def radio_use(data: RoundData) -> dict[str, tuple[int, float, float]]:
    """Per radio: (texts on air while it had a backlog, ÷ what the legal rate allows, ÷ what
    the bridge's gap allows). A backlog runs from a text's start while the next one was
    already accepted, to the last start of such a run; runs of fewer than 3 texts are left
    out, the others are summed."""
    by_text = {s.text: s for s in data.sent}
    out: dict[str, tuple[int, float, float]] = {}
    for radio in sorted({r.radio for r in data.on_air}):
        recs = sorted((r for r in _first_on_air(data).values()
                       if r.radio == radio and r.text in by_text), key=lambda r: r.radio_at)
        runs: list[list[OnAir]] = []
        for rec in recs:
            if runs and by_text[rec.text].accepted < runs[-1][-1].wall_at:
                runs[-1].append(rec)
            else:
                runs.append([rec])
        sent = legal = paced = 0
        for run in (r for r in runs if len(r) >= 3):
            costs = [by_text[r.text].cost for r in run]
            costs += costs  # a faster sender could have sent more of the same
            t0, t1 = run[0].radio_at, run[-1].radio_at
            sent += len(run)
            legal += greedy_count(costs, t0, t1, gap=FIRMWARE_GAP, duty=data.duty)
            paced += greedy_count(costs, t0, t1, gap=data.bridge_gap, duty=data.duty)
        if sent:
            out[radio] = (sent, sent / legal, sent / paced)
    return out


def fairness(data: RoundData) -> dict[str, tuple[float, int, int]]:
    """Per radio with two users or more: (Jain's index, users, texts in the window)."""
    first = _first_on_air(data)
    by_radio: dict[str, list[tuple[Sent, OnAir]]] = defaultdict(list)
    for s in data.sent:
        if s.text in first and s.message_id not in data.canceled:
            by_radio[first[s.text].radio].append((s, first[s.text]))
    out: dict[str, tuple[float, int, int]] = {}
    for radio, pairs in sorted(by_radio.items()):
        users = {s.user for s, _ in pairs}
        if len(users) < 2:
            continue
        begin = max(s.accepted for s, _ in pairs)  # everybody has sent everything
        end = min(max(r.wall_at for s, r in pairs if s.user == u) for u in users)
        share = {u: 0.0 for u in users}
        weight = {s.user: s.weight for s, _ in pairs}
        texts = 0
        for s, r in pairs:
            if begin <= r.wall_at <= end:
                share[s.user] += s.cost
                texts += 1
        out[radio] = (jain([share[u] / weight[u] for u in sorted(users)]), len(users), texts)
    return out


def light_waits(data: RoundData) -> list[tuple[float, float, float]]:
    """Each light user's first text: (wait s, texts ahead ÷ one round's texts, round texts)."""
    first = _first_on_air(data)
    live = [s for s in data.sent if s.text in first and s.message_id not in data.canceled]
    c_max = max((s.cost for s in live), default=0.0)
    out = []
    for m in live:
        if not (m.light and m.first_of_user):
            continue
        here = first[m.text]
        on_radio = [(s, first[s.text]) for s in live if first[s.text].radio == here.radio]
        ahead = sum(1 for _, r in on_radio if m.accepted < r.wall_at < here.wall_at)
        # Others waiting when it arrived; each may send in its one turn what it has by then.
        active = {s.user for s, r in on_radio
                  if s.user != m.user and s.accepted <= m.accepted < r.wall_at}
        waiting: dict[str, list[Sent]] = defaultdict(list)
        for s, r in on_radio:
            if s.user in active and s.accepted < here.wall_at and r.wall_at > m.accepted:
                waiting[s.user].append(s)
        bound = data.credit + sum(
            min(len(texts), int((data.quantum * texts[0].weight + c_max)
                                // min(t.cost for t in texts)))
            for texts in waiting.values())
        out.append((here.wall_at - m.accepted, ahead / max(bound, 1), float(bound)))
    return out


def estimate_errors(data: RoundData) -> tuple[list[float], ...]:
    """Errors of the 201's estimate against the history's ``transmitted``, against the
    radio's on-air time; of the row's estimate at mid-wait against the same two."""
    first = _first_on_air(data)
    by_history, by_radio, mid, mid_radio = [], [], [], []
    for s in data.sent:
        if s.estimate is None or s.message_id in data.canceled:
            continue
        if (at := data.transmitted.get(s.message_id)) is not None and at > s.accepted:
            by_history.append(abs(at - s.estimate) / (at - s.accepted))
        if (rec := first.get(s.text)) is not None and rec.wall_at > s.accepted:
            by_radio.append(abs(rec.wall_at - s.estimate) / (rec.wall_at - s.accepted))
    for s in data.sent:
        at = data.transmitted.get(s.message_id)
        seen = data.samples.get(s.message_id)
        if at is None or not seen or s.message_id in data.canceled:
            continue
        half = (s.accepted + at) / 2
        read, estimate = min(seen, key=lambda r: abs(r[0] - half))
        if at > read:
            mid.append(abs(at - estimate) / (at - read))
        if (rec := first.get(s.text)) is not None and rec.wall_at > read:
            mid_radio.append(abs(rec.wall_at - estimate) / (rec.wall_at - read))
    return by_history, by_radio, mid, mid_radio
