"""The dispatcher: the steward of airtime. It routes each waiting message to one online bridge,
orders each radio's share fairly, hands a bridge only what its credit allows, and estimates
when every waiting message goes on air.

Rules:
- The database is the queue (kosmo/dispatch_store.py). Every ``refresh`` seconds, and at once
  when a held message leaves its bridge (a report), a bridge comes or goes, or another process
  wakes it (``wake``: it left messages of this process's nodes, or a process died), the actor
  reads the waiting and held messages again; messages accepted by this process arrive at once
  (``accepted``), cancels too (``canceled``). So several gateway processes may run one each:
  they read the same queue, and their claims are serialized by the database.
- One publisher per node: it claims only messages of nodes this process (``process_id``,
  actors/membership.py) publishes, or of nodes nobody publishes (they become its own). Those
  of another process's nodes leave its queue until the next read; that process claims them.
- Adoption: every read, before any hand-over, it takes over the nodes of dead publishers
  (``adopt``) and hands the conversations actor their claimed but unacknowledged messages,
  oldest first, so they are published again before any newer message of their node. One
  INFO line per dead process adopted from.
- Routing (kosmo/routing.py) is per (user, node) and sticky: while a user has messages to a node
  held by a bridge, or waiting in an online bridge's queue, the next ones go there too, so they
  go on air in the order they were accepted. When a bridge goes offline, the messages it was
  never given move to another online bridge, except those of a (user, node) of which it holds
  an older message: they wait for it (or their expiry), never overtaking.
- Each online bridge has a fair queue (kosmo/fair_queue.py: deficit round robin by airtime,
  weighted by plan). While the bridge holds fewer than its credit, the head of its queue is
  claimed (one transaction per hand-over, under the database's hand-over lock) and given to the
  conversations actor, which publishes it on that bridge's topic. A claimed message never moves.
- Estimates: a bridge's queue in fair order is laid on its radio's pace (kosmo/schedule.py)
  after its held messages (counted by text size, as they are read); position and time are
  written to the waiting rows when the place changed or the time moved enough
  (kosmo/radios.py). A message no online bridge can take has neither.
- Admission (``admit``): where a new message would go, its place in the fair order and its
  estimated transmit time; ``retry_after`` when that is beyond its expiry. Before any debit.
- Two tasks, one state: the desk takes the inbox (accepted, canceled, bridge states, reads
  asked for) into memory and answers admissions at once; the hand-over task reads the queue,
  adopts, claims and writes estimates, one round at a time. So an admission never waits for a
  hand-over transaction, and a send accepted meanwhile is in the queue the next admission
  sees. The state is changed only between awaits, and whole at each of them; a read of the
  queue keeps what the desk took while it ran. ``synced`` waits for a round.
- A database outage skips a round (logged); the next one catches up. The actor failing brings
  the gateway down (its state is rebuilt from the database at the next start).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

import trio

from actors.reply import Reply
from kosmo import wire
from kosmo.channels import put, take_waiting
from kosmo.clock import utcnow
from kosmo.db import Database, DatabaseUnavailable
from kosmo.dispatch_store import (
    Waiting,
    adopt,
    claim,
    has_orphans,
    load_hearings,
    load_queue,
    weight_of,
    write_estimates,
)
from kosmo.fair_queue import Entry
from kosmo.messages import Admission, NewMessage
from kosmo.radios import Estimate, Radio, estimates, moved, radio_params
from kosmo.routing import Hearing, choose_bridge

log = logging.getLogger(__name__)

REFRESH = 1.0  # seconds between two reads of the queue
COVERAGE_EVERY = 10.0  # seconds between two reads of coverage
LAYOUT_EVERY = 0.2  # seconds between two layouts of a radio's schedule between reads
MAX_WAITING = 100_000  # waiting messages read at once
CLAIM_BATCH = 256  # messages offered in one claim
INBOX = 256
Pair = tuple[UUID, str]  # (user, node)


@dataclass(frozen=True)
class _Accepted:
    messages: list[NewMessage]


@dataclass(frozen=True)
class _BridgeState:
    bridge_id: str
    state: wire.BridgeState | None  # None: its retained state was cleared


@dataclass(frozen=True)
class _Reload:
    coverage: bool = False  # read coverage too, whenever it was read last


@dataclass(frozen=True)
class _Canceled:
    ids: list[UUID]


@dataclass(frozen=True)
class _Admit:
    user_id: UUID
    node_id: str
    size: int
    weight: int
    reply: Reply[Admission] = field(compare=False)


@dataclass(frozen=True)
class _Sync:
    reply: Reply[None] = field(compare=False)


Inbox = _Accepted | _BridgeState | _Reload | _Canceled | _Admit | _Sync


class Dispatcher:
    def __init__(self, db: Database, *, hand: Callable[[list[NewMessage]], Awaitable[None]],
                 message_ttl: float, process_id: UUID, refresh: float = REFRESH,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._process_id = process_id
        self._woken = trio.Event()
        self._hand = hand
        self._ttl = message_ttl
        self._refresh = refresh
        self._clock = clock
        self._send, self._receive = trio.open_memory_channel[Inbox](INBOX)
        self._radios: dict[str, Radio] = {}
        self._waiting: dict[UUID, Waiting] = {}
        self._where: dict[UUID, str | None] = {}  # waiting message -> its radio's queue
        self._routes: dict[Pair, str] = {}
        self._hearings: dict[str, list[Hearing]] = {}
        self._hearings_read = -math.inf
        self._weights: dict[UUID, int] = {}
        self._written: dict[UUID, Estimate] = {}
        self._unrouted: set[UUID] = set()  # waiting messages not yet put in a queue
        self._laid_out = -math.inf
        self._kick = trio.Event()  # the desk took something for the hand-over task
        self._want_reload = False
        self._want_coverage = False
        self._syncs: list[Reply[None]] = []
        self.handed = 0
        self.rounds = 0
        self.adopted = 0  # messages handed again after their publisher died

    # --- what other actors call -------------------------------------------------------------

    async def accepted(self, messages: list[NewMessage]) -> None:
        await put(self._send, _Accepted(messages))

    async def canceled(self, ids: list[UUID]) -> None:
        await self._send.send(_Canceled(ids))

    async def settled(self) -> None:
        """A held message left its bridge (on air, failed, expired): read the queue again."""
        await self._send.send(_Reload())

    async def heard(self) -> None:
        """Coverage changed: read it (and the queue) again."""
        await self._send.send(_Reload(coverage=True))

    def wake(self) -> None:
        """Read the queue now rather than at the next tick (never blocks)."""
        self._woken.set()

    async def bridge_state(self, bridge_id: str, state: wire.BridgeState | None) -> None:
        await self._send.send(_BridgeState(bridge_id, state))

    async def admit(self, user_id: UUID, node_id: str, text: str) -> Admission:
        weight = self._weights.get(user_id)
        if weight is None:  # a sender this process has not seen: its plan's weight
            try:
                weight = await self._db.run(weight_of, user_id)
            except DatabaseUnavailable:
                weight = 1  # the estimate errs late; the send itself will say 503
        reply: Reply[Admission] = Reply()
        await put(self._send, _Admit(user_id, node_id, len(text.encode("utf-8")), weight,
                                     reply))
        return await reply.wait()

    async def synced(self) -> None:
        """Returns once a hand-over round has run over everything sent to it before."""
        reply: Reply[None] = Reply()
        await self._send.send(_Sync(reply))
        await reply.wait()

    def online(self) -> list[str]:
        """The bridges it knows to be online."""
        return sorted(b for b, r in self._radios.items() if r.online)

    def waiting(self) -> dict[str, int]:
        """Waiting messages per bridge ('' for those no online bridge can take)."""
        counts: dict[str, int] = {}
        for where in self._where.values():
            counts[where or ""] = counts.get(where or "", 0) + 1
        return counts

    def held(self) -> dict[str, int]:
        """Messages each online bridge holds (handed, not yet on air): its credit in use."""
        return {b: r.holding() for b, r in sorted(self._radios.items()) if r.online}

    # --- the actor --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticks)
            nursery.start_soon(self._hand_over)
            task_status.started()
            async with self._receive:
                async for first in self._receive:
                    self._take(take_waiting(self._receive, [first], INBOX))
            nursery.cancel_scope.cancel()

    async def _ticks(self) -> None:
        while True:
            await self._send.send(_Reload())
            with trio.move_on_after(self._refresh):
                await self._woken.wait()
            self._woken = trio.Event()

    def _take(self, items: list[Inbox]) -> None:
        """The desk: apply what the inbox brought to the in-memory state and answer the
        admissions at once, never waiting for the database; the hand-over task does the rest."""
        for item in items:
            if isinstance(item, _Accepted):
                for message in item.messages:
                    size = len(message.text.encode("utf-8"))
                    self._weights[message.user_id] = message.weight
                    self._wait(Waiting(message, size, message.weight))
            elif isinstance(item, _Canceled):
                for message_id in item.ids:
                    self._unwait(message_id)
            elif isinstance(item, _BridgeState):
                self._want_reload = self._bridge(item) or self._want_reload
            elif isinstance(item, _Reload):
                self._want_reload = True
                self._want_coverage = self._want_coverage or item.coverage
            elif isinstance(item, _Sync):
                self._syncs.append(item.reply)
        self._route(list(self._unrouted))
        admits = [item for item in items if isinstance(item, _Admit)]
        if admits:
            self._lay_out(force=False)
            for admit in admits:
                admit.reply.set(self._admission(admit))
        if len(admits) < len(items):
            self._kick.set()

    async def _hand_over(self) -> None:
        """The hand-over task: reads of the queue, adoption, claims and estimates, one round at
        a time, whenever the desk took something that may change them. The desk keeps taking
        sends and answering admissions meanwhile: between two of this task's awaits the state
        is whole, and what the desk took during a read of the queue is kept (``_reload``)."""
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            syncs, self._syncs = self._syncs, []
            reload, coverage = self._want_reload, self._want_coverage
            self._want_reload = self._want_coverage = False
            if reload:
                await self._reload(coverage=coverage)
                await self._adopt()
            self._lay_out(force=reload)
            handed = await self._hand_out()
            if handed:
                self._lay_out(force=True)
            if reload or handed:  # every place behind a hand-over moved up
                await self._write_estimates()
            for reply in syncs:
                reply.set(None)

    # --- state --------------------------------------------------------------------------------

    def _bridge(self, item: _BridgeState) -> bool:
        """Apply a bridge's state; True when its coming or going asks for a new read."""
        radio = self._radios.get(item.bridge_id)
        online = item.state is not None and item.state.state == "online"
        pace = wire.Pace()
        if item.state is not None and online:
            try:
                pace = wire.parse_pace(item.state.info)
            except wire.BadPayload as exc:
                log.warning("bridge %s: pace unreadable (%s); assuming the defaults",
                            item.bridge_id, exc)
        if radio is None:
            if not online:
                return False
            radio = self._radios[item.bridge_id] = Radio.new(item.bridge_id, pace, online=True)
            log.info("bridge %s online: credit %d, %s", item.bridge_id, pace.credit,
                     radio.params.describe())
            return True
        changed = radio.online != online
        radio.online = online
        if online:
            radio.pace, radio.params = pace, radio_params(pace)
        if changed:
            log.info("bridge %s is %s", item.bridge_id, "online" if online else "offline")
        return changed

    def _wait(self, waiting: Waiting) -> None:
        message_id = waiting.message.message_id
        if message_id in self._waiting:
            return
        self._waiting[message_id] = waiting
        self._where[message_id] = None
        self._unrouted.add(message_id)

    def _unwait(self, message_id: UUID) -> None:
        self._waiting.pop(message_id, None)
        self._unrouted.discard(message_id)
        where = self._where.pop(message_id, None)
        if where is not None:
            radio = self._radios[where]
            radio.queue.remove(message_id)
            radio.dirty = True
        self._written.pop(message_id, None)

    async def _reload(self, *, coverage: bool = False) -> None:
        known = set(self._waiting)  # what the desk takes during the read is newer than it
        try:
            queue = await self._db.run(load_queue, MAX_WAITING)
            if coverage or trio.current_time() - self._hearings_read >= COVERAGE_EVERY:
                online = sorted(b for b, r in self._radios.items() if r.online)
                hearings = await self._db.run(load_hearings, online) if online else []
                self._hearings = {}
                for h in hearings:
                    self._hearings.setdefault(h.node_id, []).append(h)
                self._hearings_read = trio.current_time()
        except DatabaseUnavailable as exc:
            log.warning("dispatch round skipped, database unavailable: %s", exc)
            return
        self.rounds += 1
        fresh = {w.message.message_id: w for w in queue.waiting}
        for message_id in [m for m in known if m in self._waiting and m not in fresh]:
            self._unwait(message_id)  # handed, canceled, expired (here or elsewhere)
        for waiting in fresh.values():
            # A weight read here that differs (the plan changed) applies to the user's next
            # message: moving a waiting one would put it at the back of the round.
            self._weights[waiting.message.user_id] = waiting.weight
            self._wait(waiting)
        for radio in self._radios.values():
            radio.held = Counter()
        for held in queue.held:
            if held.bridge_id not in self._radios:  # not heard of since this process started
                self._radios[held.bridge_id] = Radio.new(held.bridge_id, wire.Pace(),
                                                         online=False)
            self._radios[held.bridge_id].held[held.size] += held.count
        self._routes = {(h.user_id, h.node_id): h.bridge_id for h in queue.held}
        self._route(list(self._waiting))  # before any await: the desk routes by these routes

    def _route(self, ids: list[UUID]) -> None:
        """Put each of these waiting messages in the queue of the bridge its (user, node) goes
        to, oldest first."""
        online = {b: r for b, r in self._radios.items() if r.online}
        waits = self._waits(online)
        for waiting in sorted((self._waiting[i] for i in ids),
                              key=lambda w: (w.message.created_at, w.message.message_id)):
            m = waiting.message
            pair = (m.user_id, m.node_id)
            current = self._where[m.message_id]
            target = self._routes.get(pair)
            if target is None and current in online and not self._better_heard(m.node_id,
                                                                                 current):
                target = current
            if target is None and online:
                target = choose_bridge(self._hearings.get(m.node_id, ()), waits)
            if target is not None:
                self._routes[pair] = target
            self._unrouted.discard(m.message_id)
            if target == current:
                continue
            if current is not None:
                self._radios[current].queue.remove(m.message_id)
                self._radios[current].dirty = True
            self._where[m.message_id] = target
            if target is not None:
                radio = self._radios[target]
                radio.queue.push(Entry(m.message_id, m.user_id, m.node_id, m.created_at,
                                       radio.cost(waiting.size), waiting.weight))
                radio.dirty = True

    def _better_heard(self, node_id: str, bridge_id: str) -> bool:
        """Whether an online bridge heard the node while ``bridge_id`` (routed to by its wait)
        did not: its waiting messages move there."""
        heard = {h.bridge_id for h in self._hearings.get(node_id, ())}
        return bridge_id not in heard and any(
            b in heard for b, r in self._radios.items() if r.online)

    def _waits(self, online: dict[str, Radio]) -> dict[str, float]:
        now = self._clock().timestamp()
        return {b: r.wait(now) for b, r in online.items()}

    def _lay_out(self, *, force: bool) -> None:
        """Each online radio's held messages, then its queue, on its pace; radios whose queue
        changed, at most every ``LAYOUT_EVERY`` seconds unless forced (admission extrapolates
        meanwhile)."""
        if not force and trio.current_time() - self._laid_out < LAYOUT_EVERY:
            return
        self._laid_out = trio.current_time()
        now = self._clock().timestamp()
        for radio in self._radios.values():
            if not radio.online:
                radio.starts = []
            elif radio.dirty or force:
                radio.lay_out(now)

    # --- admission --------------------------------------------------------------------------

    def _admission(self, item: _Admit) -> Admission:
        pair = (item.user_id, item.node_id)
        target = self._routes.get(pair)
        online = {b: r for b, r in self._radios.items() if r.online}
        if target is None:
            target = choose_bridge(self._hearings.get(item.node_id, ()), self._waits(online))
        radio = self._radios.get(target) if target is not None else None
        if radio is None or not radio.online or not radio.starts:
            return Admission()
        weight = self._weights.setdefault(item.user_id, item.weight)
        cost = radio.cost(item.size)
        place = radio.queue.place(item.user_id, weight, cost)
        at = radio.start(place, cost)
        eta = datetime.fromtimestamp(at, self._clock().tzinfo)
        # The heads the bridge has credit for are handed at the next claim, which may not have
        # run yet (the hand-over task may be busy): the place is counted after it.
        position = max(place - max(radio.pace.credit - radio.holding(), 0), 0) + 1
        deadline = self._clock() + timedelta(seconds=self._ttl)
        if eta > deadline:
            return Admission(target, position, eta,
                             retry_after=max(1.0, (eta - deadline).total_seconds()))
        return Admission(target, position, eta)

    # --- hand-over --------------------------------------------------------------------------

    async def _hand_out(self) -> bool:
        """Claim the head of each online radio's queue as far as its credit allows; True if
        any was handed."""
        handed = False
        tz = self._clock().tzinfo
        for radio in list(self._radios.values()):
            while radio.online and radio.holding() < radio.pace.credit and len(radio.queue):
                heads = radio.queue.order(min(radio.pace.credit - radio.holding(), CLAIM_BATCH))
                offered = [(e.message_id, datetime.fromtimestamp(
                    radio.start(i, e.cost), tz) if radio.starts
                    else None) for i, e in enumerate(heads)]
                try:
                    found = await self._db.run(claim, offered, radio.bridge_id,
                                               radio.pace.credit, self._clock(),
                                               self._process_id)
                except DatabaseUnavailable as exc:
                    log.warning("hand-over to bridge %s waits for the database: %s",
                                radio.bridge_id, exc)
                    return handed
                if not found.locked:
                    return handed  # another process is handing out; the next round retries
                for message_id in found.gone:
                    self._unwait(message_id)  # canceled, expired or handed elsewhere
                for message_id in found.others:
                    self._unwait(message_id)  # another process's node: the next read may
                    # bring it back if that process has not claimed it by then
                self._took(radio, found.handed)
                for message in found.handed:
                    log.info("message %s to node %s handed to bridge %s", message.message_id,
                             message.node_id, radio.bridge_id,
                             extra={"message_id": str(message.message_id),
                                    "node_id": message.node_id, "bridge_id": radio.bridge_id})
                if found.handed:
                    handed = True
                    await self._hand(found.handed)
                if found.held >= radio.pace.credit and radio.holding() < found.held:
                    break  # it holds more than this process knew of: the next read shows them
                if not found.handed and not found.gone and not found.others:
                    break
        return handed

    async def _adopt(self) -> None:
        """Take over the nodes of dead publishers; hand their unacknowledged messages first."""
        try:
            if not await self._db.run(has_orphans):
                return
            adopted = await self._db.run(adopt, self._process_id)
        except DatabaseUnavailable as exc:
            log.warning("adoption waits for the database: %s", exc)
            return
        for item in adopted or ():  # None: another process holds the lock; next read
            log.info("adopted %d nodes of dead gateway process %s: %d unacknowledged "
                     "messages published again", len(item.nodes), item.dead,
                     len(item.messages))
            if item.messages:
                self.adopted += len(item.messages)
                await self._hand(item.messages)

    def _took(self, radio: Radio, messages: list[NewMessage]) -> None:
        """Take the claimed messages out of the radio's queue, charging its round robin as
        ``pop`` does. Only a cancel or expiry racing the claim can make the pops differ from
        what was claimed: an entry popped but not claimed goes back in its place."""
        claimed = {m.message_id for m in messages}
        popped: list[Entry] = []
        for _ in messages:
            entry = radio.queue.pop()
            if entry is not None:
                popped.append(entry)
        for entry in popped:
            if entry.message_id not in claimed:
                radio.queue.push(entry)
        for message in messages:
            radio.queue.remove(message.message_id)  # a no-op for those popped
            self._waiting.pop(message.message_id, None)
            self._where.pop(message.message_id, None)
            self._written.pop(message.message_id, None)
            radio.held[len(message.text.encode("utf-8"))] += 1
            self._routes[(message.user_id, message.node_id)] = radio.bridge_id
            self.handed += 1
        radio.dirty = True

    # --- estimates ----------------------------------------------------------------------------

    async def _write_estimates(self) -> None:
        now = self._clock()
        found = estimates(self._radios.values(), self._waiting, now.tzinfo)
        rows = [(m, *value) for m, value in found.items()
                if moved(self._written.get(m), value, now)]
        if not rows:
            return
        try:
            if not await self._db.run(write_estimates, rows):
                return  # another process is handing over: written at a later round
        except DatabaseUnavailable as exc:
            log.warning("estimates not written, database unavailable: %s", exc)
            return
        for message_id, position, at in rows:
            if message_id in self._waiting:  # not canceled or claimed meanwhile
                self._written[message_id] = (position, at)
