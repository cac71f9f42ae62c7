"""Hands queued texts to the radio, paced, and turns routing results into status reports.

The at-most-once rule (never twice on air)
------------------------------------------
- A message is handed to the radio only from ``queued``. Its packet id is drawn from the
  library's generator first; its row is set to ``sending`` with that packet id and committed
  (fsync) *before* the hand-over, which sends the text as exactly that packet (see
  bridge/radio.py); the row becomes ``handed`` once the library returned. Nothing ever moves a
  row from ``sending``, ``handed`` or ``transmitted`` back to ``queued``, except a refusal by
  our own radio that means the text did not go on air (RATE_LIMIT_EXCEEDED, DUTY_CYCLE_LIMIT;
  see bridge/tracking.py).
- A failed hand-over (the write raised) is not retried: the radio may have the bytes. The
  message is reported ``failed`` with reason ``send_error``.
- After a restart (including kill -9) a row found ``sending`` (the hand-over may or may not
  have reached the radio) or ``handed`` keeps waiting for the routing result of its packet id
  for ``result_timeout``, as the radio keeps results for its client across reconnects; it is
  reported by what arrives (``transmitted``, ``delivered``, ``failed``), or ``failed`` with
  reason ``unknown_after_restart`` if nothing does. One found ``transmitted`` waits as long for
  the destination's ACK. A row ``sending`` without a packet id (written by an older bridge) is
  reported ``failed``/``unknown_after_restart`` at once. None is handed over again (but for
  the refusals above): we prefer a possibly wrong ``failed`` (the gateway refunds the sender)
  to sending twice.
- Every message handed to the radio ends with one final report within ``result_timeout``
  (radio seconds) of its hand-over, or of the start for one an earlier run handed: one still
  ``transmitted`` then (the destination's ACK never came) is reported ``failed`` with reason
  ``no_delivery_ack``; the gateway does not refund it, as it went on air.
- A message whose ``expires_at`` has passed is reported ``failed``/``expired`` instead of sent:
  when it arrives, while it waits (swept every few seconds) and right before the hand-over.

Tasks: ``run_sender`` (queue -> radio), ``run_results`` (radio events -> SQLite and outbox),
``run_deadlines`` (flights without a result, expiry sweep, pruning). They share the tracker
and the pacer, which only the Trio thread touches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import trio

from bridge.pacing import Pacer, PacingRules
from bridge.radio import Link, Radio, RadioEvent, RadioUnavailable, RoutingResult
from bridge.radio_info import RadioInfo
from bridge.rows import RowState
from bridge.state import Held, pace
from bridge.store import Change, OutboxItem, Reporter, Row, Store
from bridge.timing import RadioClock, Wakeup
from bridge.tracking import UNKNOWN_AFTER_RESTART, Flight, Next, Outcome, Phase, Tracker
from kosmo import airtime
from kosmo.clock import utcnow
from kosmo.wire import inbound_payload, inbound_text_ok, inbound_topic

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SWEEP_INTERVAL = 5.0  # real seconds between expiry sweeps of the queue
PRUNE_INTERVAL = 3600.0
ESTIMATE_LIMIT = 2000  # queued messages costed one by one for the wait estimate
MIN_GAP = 2.0  # radio seconds between hand-overs (firmware rate limit)
GAP_MARGIN = 0.05  # radio seconds added to it, for the radio's own timing jitter ...
GAP_MARGIN_REAL = 0.005  # ... and real seconds, for a scheduling delay at the radio's end
RADIO_QUEUE = 16
QUEUE_FULL_RECHECK = 0.5  # radio seconds between looks at a full radio queue
DUTY_HOLD = 60.0  # radio seconds without sending after the radio refused for its duty cycle


class AsyncStore:
    """The store, called from worker threads one call at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)


class Sender:
    def __init__(self, db: AsyncStore, radio: Radio, report: Reporter, *, topic_root: str,
                 bridge_id: str, clock: RadioClock, result_timeout: float,
                 region: str | None = None, credit: int = 2,
                 changed: Callable[[], None] = lambda: None) -> None:
        self._db, self._store, self._radio, self._report = db, db.store, radio, report
        self._inbound_topic = inbound_topic(topic_root)
        self._bridge_id = bridge_id
        self.clock = clock
        self._result_timeout = result_timeout
        self._region = region
        self._credit = credit  # only said in the state: the gateway keeps to it
        self._changed = changed  # the outbox or the state may have something new
        self.tracker = Tracker()
        self.pacer = Pacer(PacingRules(min_gap=self._min_gap()))
        self._work = Wakeup()  # new message, free slot, link change, stop
        self._deadlines = Wakeup()
        self._stopping = False
        self._idle = trio.Event()
        self.on_air = 0  # texts handed to the radio (bridge/metrics.py reads these counts)
        self.naks: dict[str, int] = {}  # routing errors the radio reported, by name

        self._rules_for: tuple[str, int | None] | None = None

    # --- control ----------------------------------------------------------------------------

    def wake(self) -> None:
        self._work.set()

    def stop_sending(self) -> None:
        self._stopping = True
        self._work.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def rules(self, info: RadioInfo) -> PacingRules:
        region = self._region or info.region
        return PacingRules(min_gap=self._min_gap(),
                           max_in_flight=min(RADIO_QUEUE, info.queue_max or RADIO_QUEUE),
                           duty_cycle=airtime.duty_cycle(region))

    def _min_gap(self) -> float:
        return MIN_GAP + GAP_MARGIN + GAP_MARGIN_REAL * self.clock.time_scale

    def _use_link(self, link: Link) -> None:
        key = (self._region or link.info.region, link.info.queue_max)
        if key != self._rules_for:
            self._rules_for = key
            self.pacer.rules = self.rules(link.info)
            duty = self.pacer.rules.duty_cycle
            log.info("pacing: one text per %.2fs at most, %d in flight, airtime %s",
                     self.pacer.rules.min_gap, self.pacer.rules.max_in_flight,
                     "unlimited" if duty is None else f"{duty:.1%} of each hour ({key[0]})")
        self.tracker.own_node = link.info.node_num

    # --- start ------------------------------------------------------------------------------

    async def restore(self) -> None:
        """Take over what an earlier run left: flights, and the airtime of the last hour."""
        rows = await self._db.call(self._store.open_flights)
        radio_now = self.clock.now()
        changes: list[Change] = []
        for row in rows:
            found = restored(row, radio_now, self._result_timeout)
            if isinstance(found, Outcome):
                log.warning("message %s was being handed to the radio (by an older bridge, "
                            "no packet id kept) when the bridge stopped: reported failed (%s),"
                            " never sent again", row.message_id, UNKNOWN_AFTER_RESTART)
                changes.append(self._change(found))
                continue
            if row.state is RowState.SENDING:
                log.warning("message %s was being handed to the radio as packet %d when the "
                            "bridge stopped: waiting for the radio's result for it, never sent"
                            " again", row.message_id, found.packet_id)
            self.tracker.add(found, radio_now)
        if changes:
            await self._db.call(self._store.apply, changes)
            self._changed()
        wall = time.time()
        window_wall = self.clock.real(self.pacer.rules.window)
        sends = await self._db.call(self._store.recent_sends, wall - window_wall)
        self.pacer.restore([(radio_now - (wall - at) * self.clock.time_scale, air)
                            for at, air in sends])
        if rows or sends:
            log.info("restored %d open flights and %d sends of the last hour",
                     len(self.tracker), len(sends))

    # --- queue -> radio ---------------------------------------------------------------------

    async def run_sender(self) -> None:
        while True:
            link = await self._radio.wait_link()
            self._use_link(link)
            if self._stopping:
                await trio.sleep_forever()
            row = await self._db.call(self._store.next_queued)
            if row is None:
                await self._work.wait()
                continue
            if row.expires_at <= time.time():
                await self._apply([Outcome(row.message_id, 0, Next.DONE, "failed", "expired")])
                continue
            air = airtime.text_airtime(link.info.lora, len(row.text.encode()))
            radio_now = self.clock.now()
            ready = self.pacer.ready_at(radio_now, air, self.tracker.in_flight(link.epoch))
            if ready is None or ready > radio_now:
                if ready is None:
                    await self._work.wait()
                else:
                    await self._work.wait_at_most(self.clock.real(ready - radio_now))
                continue
            if link.lost.is_set() or self._stopping:
                continue
            if link.queue_free() == 0:  # busy relaying others: it says when space comes free
                await self._work.wait_at_most(self.clock.real(QUEUE_FULL_RECHECK))
                continue
            await self._hand_over(link, row, air)

    async def _hand_over(self, link: Link, row: Row, air: float) -> None:
        self._idle = trio.Event()
        try:
            try:
                chosen = await self._radio.new_packet_id(link)
            except RadioUnavailable as exc:  # nothing was marked: the text stays queued
                log.warning("no packet id from the radio link (%s): message %s stays queued",
                            exc, row.message_id)
                self._radio.mark_broken(link, f"no packet id: {exc}")
                return
            await self._db.call(self._store.begin_send, row.message_id, chosen, time.time(),
                                air)
            self.pacer.started(self.clock.now(), air)
            try:
                packet_id = await self._radio.send_text(link, row.target, row.text, chosen)
            except RadioUnavailable as exc:
                self.pacer.finished(self.clock.now())
                log.warning("handing message %s to the radio failed (%s): reported failed, "
                            "not retried", row.message_id, exc)
                self._radio.mark_broken(link, f"write failed: {exc}")
                await self._apply([Outcome(row.message_id, 0, Next.DONE, "failed",
                                           "send_error")])
                return
            self.pacer.finished(self.clock.now())
            await self._db.call(self._store.handed, row.message_id, packet_id)
            self.on_air += 1
            log.info("message %s handed to the radio as packet %d (to %s, attempt %d, "
                     "%.2fs on air)", row.message_id, packet_id, row.target, row.attempts + 1,
                     air)
            radio_now = self.clock.now()
            outcomes = self.tracker.add(Flight(
                row.message_id, packet_id, _node_num(row.target),
                radio_now + self._result_timeout, row.attempts + 1, link.epoch), radio_now)
            self._deadlines.set()
            await self._apply(outcomes)
            self._changed()
        finally:
            self._idle.set()

    # --- radio -> reports -------------------------------------------------------------------

    async def run_results(self, events: trio.MemoryReceiveChannel[RadioEvent]) -> None:
        async with events:
            async for event in events:
                if isinstance(event, RoutingResult):
                    if event.error != "NONE":
                        self.naks[event.error] = self.naks.get(event.error, 0) + 1
                    outcomes = self.tracker.result(event.packet_id, event.from_node,
                                                   event.error, self.clock.now())
                    await self._apply(outcomes)
                    continue
                link = self._radio.link
                if link is None or event.to_node != link.info.node_num:
                    continue  # broadcasts and texts for other nodes are not ours
                if not inbound_text_ok(event.text):
                    log.warning("text packet %d from !%08x dropped: empty, too long or not "
                                "clean text", event.packet_id, event.from_node)
                    continue
                payload = inbound_payload(
                    f"!{event.from_node:08x}", event.text, packet_id=event.packet_id,
                    bridge_id=self._bridge_id, rx_time=utcnow(), reply_to=event.reply_id)
                await self._db.call(self._store.add_outbox, [(self._inbound_topic, payload)])
                log.info("text packet %d from !%08x received%s", event.packet_id,
                         event.from_node,
                         f" (reply to {event.reply_id})" if event.reply_id else "")
                self._changed()

    async def run_deadlines(self) -> None:
        next_sweep = next_prune = trio.current_time()
        while True:
            await self._apply(self.tracker.expire(self.clock.now()))
            if trio.current_time() >= next_sweep:
                next_sweep = trio.current_time() + SWEEP_INTERVAL
                if await self._db.call(self._store.expire_queued, time.time(), self._report):
                    self._changed()
            if trio.current_time() >= next_prune:
                next_prune = trio.current_time() + PRUNE_INTERVAL
                await self._db.call(self._store.prune, time.time())
            timeout = next_sweep - trio.current_time()
            deadline = self.tracker.next_deadline()
            if deadline is not None:
                timeout = min(timeout, self.clock.real(deadline - self.clock.now()))
            await self._deadlines.wait_at_most(timeout)

    # --- reports ----------------------------------------------------------------------------

    def _change(self, outcome: Outcome) -> Change:
        reports: tuple[OutboxItem, ...] = ()
        if outcome.status is not None:
            packet_id = outcome.packet_id or None
            reports = (self._report(outcome.message_id, outcome.status, outcome.reason,
                                    packet_id),)
        ended = None
        if outcome.next is Next.DONE:
            ended = f"{outcome.status}: {outcome.reason}" if outcome.reason else outcome.status
        return Change(outcome.message_id, outcome.next.row, ended, reports)

    async def _apply(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        for o in outcomes:
            if o.next is Next.REQUEUE:
                log.warning("the radio refused packet %d of message %s (%s): queued again",
                            o.packet_id, o.message_id, o.reason)
                if o.reason == "DUTY_CYCLE_LIMIT":
                    self.pacer.hold(self.clock.now() + DUTY_HOLD)
            elif o.status is not None:
                log.info("message %s (packet %d): %s%s", o.message_id, o.packet_id, o.status,
                         f" ({o.reason})" if o.reason else "")
        await self._db.call(self._store.apply, [self._change(o) for o in outcomes])
        self._work.set()
        self._changed()

    # --- state ------------------------------------------------------------------------------

    async def queue_state(self) -> dict[str, Any]:
        """The state's members about the queue and the pace (bridge/state.py)."""
        depth, sizes = await self._db.call(self._store.queued_sizes, ESTIMATE_LIMIT)
        link = self._radio.link
        radio_now = self.clock.now()
        state: dict[str, Any] = {"queue_depth": depth}
        if link is not None:
            self._use_link(link)
        state.update(pace(self.pacer.rules, self.clock, self._credit))
        if link is not None:
            airtimes = [airtime.text_airtime(link.info.lora, size) for size in sizes]
            wait = self.pacer.estimate(radio_now, airtimes)
            if depth > len(sizes) and sizes:
                wait *= depth / len(sizes)
            duty = self.pacer.rules.duty_cycle
            state.update(in_flight=self.tracker.in_flight(link.epoch),
                         estimated_wait_s=round(self.clock.real(wait), 3),
                         airtime_used_s=round(self.clock.real(self.pacer.used(radio_now)), 3),
                         duty_cycle_percent=None if duty is None else round(duty * 100, 2))
        return state

    async def held(self) -> Held:
        """What the bridge holds unsent, as its state says it (``queue_depth``, ``in_flight``)."""
        depth = await self._db.call(self._store.queued_count)
        link = self._radio.link
        return depth, None if link is None else self.tracker.in_flight(link.epoch)


def restored(row: Row, now: float, result_timeout: float) -> Flight | Outcome:
    """What becomes of a row an earlier run left open (``sending``, ``handed`` or
    ``transmitted``) at a start at radio time ``now``: a flight waiting for the routing results
    of its packet id until ``now + result_timeout``, or, for a row ``sending`` without a packet
    id (an older bridge's), its final report. Never a second hand-over."""
    if row.packet_id is None:
        return Outcome(row.message_id, 0, Next.DONE, "failed", UNKNOWN_AFTER_RESTART)
    phase = Phase.TRANSMITTED if row.state is RowState.TRANSMITTED else Phase.HANDED
    return Flight(row.message_id, row.packet_id, _node_num(row.target), now + result_timeout,
                  row.attempts, link=0, phase=phase)


def _node_num(node_id: str) -> int:
    return int(node_id[1:], 16)
