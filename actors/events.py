"""The event bus actor: fans committed events out to the live-stream subscribers.

Rules:
- With a feed attached (``actors.event_feed``, as the gateway runs it), every event reaches
  the bus through the feed alone: it reads the history after the last id it fanned out, woken
  by PostgreSQL notifications (events of any gateway process) and by ``publish`` (this
  process's commits, a wake-up only). One cursor over the history ids, which follow commit
  order, so events arrive in event order, each once, whatever process wrote them.
- Without a feed, writers publish events after their commit, in commit order: each writes and
  publishes inside ``in_commit_order()``, and ``publish`` fans them out itself. With a feed
  the order comes from the history ids the feed reads (PostgreSQL's event-order lock assigns
  them in commit order), so a writer that passes ``alone=False`` takes no lock: the ledger's
  sends, which lock no existing message row and their quota rows in user order. Writers that
  lock existing rows (reports, cancels, inbound) still take turns, which also keeps them from
  deadlocking each other in PostgreSQL (a cancel's row lock against a report's history
  insert, whose foreign-key check waits for it).
- Subscriptions and events travel on ONE channel, so a subscriber registered
  before an event was delivered receives it: nothing after the handshake is missed.
- Each subscriber has a bounded buffer. The bus never waits for a subscriber: one whose buffer
  is full is cut off (its channel closed, ``overflowed`` set) and must reconnect and resume
  from its last event id. Memory per subscriber is bounded by its buffer.
- Events go only to subscribers of the event's user.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from uuid import UUID

import trio

from kosmo.events import Event

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Subscription:
    user_id: UUID
    events: trio.MemoryReceiveChannel[Event]
    _send: trio.MemorySendChannel[Event] = field(repr=False)
    overflowed: bool = False


@dataclass(frozen=True)
class _Subscribe:
    subscription: Subscription
    done: trio.Event


@dataclass(frozen=True)
class _Unsubscribe:
    subscription: Subscription


@dataclass(frozen=True)
class BusStatistics:
    subscribers: int
    delivered: int
    cut_off: int


class EventBus:
    def __init__(self, *, client_buffer: int = 256, inbox: int = 1024) -> None:
        self._client_buffer = client_buffer
        self._send, self._receive = trio.open_memory_channel[
            Sequence[Event] | _Subscribe | _Unsubscribe](inbox)
        self._by_user: dict[UUID, set[Subscription]] = {}
        self._commit_order = trio.Lock()
        self._delivered = 0
        self._cut_off = 0
        self._written: list[Callable[[], None]] = []
        self._feed: Callable[[Sequence[Event]], None] | None = None

    def fed_by(self, wake: Callable[[Sequence[Event]], None]) -> None:
        """Events reach the bus through ``deliver`` only; ``publish`` calls ``wake(events)``
        (it must not block) instead of fanning them out."""
        self._feed = wake

    async def deliver(self, events: Sequence[Event]) -> None:
        """Fan out events read by the feed, in event order."""
        if events:
            await self._send.send(events)

    @property
    def listened(self) -> bool:
        """Some stream is subscribed: one whose ``subscribe`` has returned is counted."""
        return bool(self._by_user)

    def passed_over(self) -> None:
        """The feed moved past committed events without reading them (no stream was
        subscribed): tell the ``on_written`` listeners as ``deliver`` would."""
        for notify in self._written:
            notify()

    def on_written(self, notify: Callable[[], None]) -> None:
        """``notify()`` after each batch of committed events reaches the bus, from any process
        when a feed is attached (it must not block: the webhook actor only sets its wake-up)."""
        self._written.append(notify)

    async def publish(self, events: Sequence[Event]) -> None:
        """Events this process committed: fan them out, or with a feed, wake it."""
        if not events:
            return
        if self._feed is not None:
            self._feed(events)
        else:
            await self._send.send(events)

    @asynccontextmanager
    async def in_commit_order(self, *, alone: bool = True
                              ) -> AsyncIterator[Callable[[Sequence[Event]], Awaitable[None]]]:
        """Writers of status history commit and publish inside this.

        History ids are assigned in commit order (see ``kosmo.events``), but two writers that
        commit one after the other may reach the bus in the other order; without a feed,
        holding this lock from before the transaction until its events are published keeps
        the bus in id order. With a feed the bus receives events only in id order from the
        feed, and ``publish`` merely wakes it: then only writers that ask to be ``alone``
        (see the module's rules) take the lock, and the others do not wait for them.
        """
        if self._feed is not None and not alone:
            yield self.publish
            return
        async with self._commit_order:
            yield self.publish

    async def subscribe(self, user_id: UUID) -> Subscription:
        """Register a subscriber; every event published after this returns reaches it."""
        send, receive = trio.open_memory_channel[Event](self._client_buffer)
        subscription = Subscription(user_id, receive, send)
        done = trio.Event()
        await self._send.send(_Subscribe(subscription, done))
        await done.wait()
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        subscription.events.close()
        with trio.CancelScope(shield=True):
            await self._send.send(_Unsubscribe(subscription))

    def statistics(self) -> BusStatistics:
        return BusStatistics(sum(len(s) for s in self._by_user.values()), self._delivered,
                             self._cut_off)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._receive:
            async for item in self._receive:
                if isinstance(item, _Subscribe):
                    self._by_user.setdefault(item.subscription.user_id, set()).add(
                        item.subscription)
                    item.done.set()
                elif isinstance(item, _Unsubscribe):
                    self._drop(item.subscription)
                else:
                    self._fan_out(item)
        for subscribers in self._by_user.values():
            for subscription in subscribers:
                subscription._send.close()

    def _fan_out(self, events: Sequence[Event]) -> None:
        for notify in self._written:
            notify()
        for event in events:
            for subscription in list(self._by_user.get(event.user_id, ())):
                try:
                    subscription._send.send_nowait(event)
                    self._delivered += 1
                except trio.WouldBlock:
                    log.warning("stream subscriber of user %s cut off: %d events unread",
                                subscription.user_id, self._client_buffer)
                    subscription.overflowed = True
                    self._cut_off += 1
                    self._drop(subscription)
                except trio.BrokenResourceError:
                    self._drop(subscription)

    def _drop(self, subscription: Subscription) -> None:
        subscribers = self._by_user.get(subscription.user_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._by_user[subscription.user_id]
        subscription._send.close()
