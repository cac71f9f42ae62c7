"""The webhook actor: turns message events into signed HTTP deliveries, durably.

Theory of operation: two loops share one nursery. The *tailer* moves the shared history
cursor (``kosmo.webhook_store.enqueue_events``): each page of new events becomes ``owed``
delivery rows in the transaction that advances the cursor, so an event is owed exactly once
whichever process reads it, and a process killed at any point loses nothing. The *deliverer*
claims due rows in pages under a lease and starts one task per claimed row; each task makes one
attempt and records it (``kosmo.webhooks`` decides the outcome and the next delay).

Rules (the five things every actor states):
- Threading: Trio only; SQL runs in the database pool's worker threads (``Database.run``).
  HTTP goes through one httpcore connection pool whose network backend checks every address
  it connects to (``kosmo.ssrf``). httpcore rather than httpx's client: httpx has no public
  hook for the network backend, and its client would honour proxy variables from the
  environment, which would bypass the address check. TLS is always verified
  (``kosmo.ssrf.tls_context``; ``ca_file`` adds CAs to trust).
- Ownership: the actor owns its connection pool, its in-flight counts and its tasks; the rows
  belong to ``kosmo.webhook_store``.
- Bounds: at most ``concurrency`` attempts at once in this process, at most ``per_webhook`` of
  them for one webhook (a claim leaves out the webhooks already at that bound), so a dead
  endpoint holds only its own few slots while the others' deliveries go on; memory is one claim
  page plus the attempts in flight, however many deliveries are owed. An attempt lasts at most
  ``timeout`` seconds and reads at most ``MAX_READ`` bytes of the answer; redirects are never
  followed (httpcore does not).
- Shutdown: cancelled with the other actors. Attempts in flight are abandoned; their leases run
  out and another attempt is made later (delivery is at least once; the webhook-id lets the
  receiver drop the repeat).
- Failure policy: a database outage is logged and waited out (the rows stay owed); a failed
  attempt is a recorded attempt, never an error of the actor. Anything else is a bug and brings
  the gateway down like every infrastructure actor.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from uuid import UUID

import httpcore
import trio

from kosmo import webhook_store as store
from kosmo.clock import utcnow
from kosmo.db import Database, DatabaseUnavailable
from kosmo.ssrf import BlockedAddress, CheckedBackend, tls_context
from kosmo.webhooks import Outcome, judge, retry_delay, signed_headers

log = logging.getLogger(__name__)

MAX_READ = 1024
OUTAGE_PAUSE = 1.0  # seconds between tries while the database is down
# After this process wrote history, the tailer waits this long before reading it, so the events
# of several commits (a send, its hand-over, its ``queued``) make one page and one transaction
# instead of one each (measured at one send at a time: 4.5 transactions per send, not 6.0).
HISTORY_LINGER = 0.05
USER_AGENT = "KosmoConnect-Webhooks/1"


def describe(exc: BaseException) -> str:
    """An attempt's error: the exception's type, and the first message in its chain of causes
    (httpcore and Trio wrap a TLS failure, a refused certificate, in exceptions with none)."""
    found: BaseException | None = exc
    while found is not None and not str(found):
        found = found.__cause__ or found.__context__
    return f"{type(exc).__name__}: {found if found is not None else ''}"[:300]


class WebhookActor:
    def __init__(self, db: Database, *, schedule: tuple[float, ...], allow_private: bool,
                 timeout: float = 10.0, concurrency: int = 64, per_webhook: int = 4,
                 poll_interval: float = 0.1, page: int = 500,
                 ca_file: str | None = None) -> None:
        self._db = db
        self._schedule = schedule
        self._allow_private = allow_private
        self._timeout = timeout
        self._concurrency = concurrency
        self._per_webhook = per_webhook
        self._poll = poll_interval
        self._page = page
        self._ssl = tls_context(ca_file)
        self._lease = timedelta(seconds=3 * timeout + 30)
        self._in_flight: dict[UUID, int] = {}
        self._running = 0
        self._wake = trio.Event()
        self._history = trio.Event()  # new history was written in this process
        self.attempts = 0  # attempts made by this process, for tests and benchmarks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        pool = httpcore.AsyncConnectionPool(
            network_backend=CheckedBackend(allow_private=self._allow_private),
            ssl_context=self._ssl,
            max_connections=self._concurrency, keepalive_expiry=30.0)
        async with pool, trio.open_nursery() as nursery:
            nursery.start_soon(self._tail)
            nursery.start_soon(self._deliver, pool, nursery)
            task_status.started()

    def history_written(self) -> None:
        """Events were committed in this process: read them now rather than at the next poll
        (other processes' events are found by polling, every ``poll_interval``)."""
        self._history.set()

    async def _tail(self) -> None:
        while True:
            self._history = trio.Event()
            try:
                done = await self._db.run(store.enqueue_events, utcnow(), self._page)
            except DatabaseUnavailable as exc:
                log.warning("webhook events not read: %s", exc)
                await trio.sleep(OUTAGE_PAUSE)
                done = store.Enqueued()
            if done.owed:
                self._wake.set()  # the deliverer claims them now, not at its next poll
            if done.more:
                await trio.lowlevel.checkpoint()
            else:
                with trio.move_on_after(self._poll):
                    await self._history.wait()
                if self._history.is_set():
                    await trio.sleep(HISTORY_LINGER)

    async def _deliver(self, pool: httpcore.AsyncConnectionPool, nursery: trio.Nursery) -> None:
        while True:
            self._wake = trio.Event()
            free = self._concurrency - self._running
            claimed: list[store.Due] = []
            if free > 0:
                now = utcnow()
                try:
                    claimed = await self._db.run(store.claim_due, now, now + self._lease, free,
                                                 self._per_webhook, dict(self._in_flight))
                except DatabaseUnavailable as exc:
                    log.warning("webhook deliveries not claimed: %s", exc)
                    await trio.sleep(OUTAGE_PAUSE)
            for due in claimed:
                self._running += 1
                self._in_flight[due.webhook_id] = self._in_flight.get(due.webhook_id, 0) + 1
                nursery.start_soon(self._attempt, pool, due)
            if claimed and len(claimed) == free:
                await self._wake.wait()  # full: wait for a slot
            elif not claimed:
                with trio.move_on_after(self._poll):
                    await self._wake.wait()

    async def _attempt(self, pool: httpcore.AsyncConnectionPool, due: store.Due) -> None:
        try:
            at = utcnow()
            status, error = await self._post(pool, due, int(at.timestamp()))
            self.attempts += 1
            outcome = judge(status)
            next_at = None
            if outcome is Outcome.RETRYING:
                delay = retry_delay(self._schedule, due.attempt, random.random())
                if delay is None:
                    outcome = Outcome.GIVEN_UP
                else:
                    next_at = at + timedelta(seconds=delay)
            if outcome is Outcome.DISABLED:
                log.info("webhook %s answered 410 Gone: disabled", due.webhook_id)
            elif outcome is Outcome.GIVEN_UP:
                log.info("webhook %s: event %s given up after %d attempts", due.webhook_id,
                         due.event_id, due.attempt)
            attempt = store.Attempt(due.delivery_id, due.webhook_id, due.attempt, at, status,
                                    error, outcome, next_at)
            try:
                await self._db.run(store.record_attempt, attempt)
            except DatabaseUnavailable as exc:
                log.warning("webhook attempt not recorded (it will be repeated): %s", exc)
        finally:
            self._running -= 1
            left = self._in_flight[due.webhook_id] - 1
            if left:
                self._in_flight[due.webhook_id] = left
            else:
                del self._in_flight[due.webhook_id]
            self._wake.set()

    async def _post(self, pool: httpcore.AsyncConnectionPool, due: store.Due,
                    timestamp: int) -> tuple[int | None, str | None]:
        """The answer's status, or None and why there was none."""
        headers = {**signed_headers(due.secret, due.event_id, timestamp, due.body),
                   "user-agent": USER_AGENT}
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self._timeout)
        with trio.move_on_after(self._timeout):
            try:
                async with pool.stream("POST", due.url, headers=list(headers.items()),
                                       content=due.body.encode(),
                                       extensions={"timeout": timeouts}) as response:
                    read = 0
                    async for chunk in response.aiter_stream():
                        read += len(chunk)
                        if read >= MAX_READ:
                            break  # the rest is not read; the connection is not reused
                    return response.status, None
            except BlockedAddress as exc:
                return None, f"refused: {exc}"
            except httpcore.TimeoutException:
                return None, f"timeout after {self._timeout:g} s"
            except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
                    OSError, ValueError) as exc:  # whatever an endpoint does, it is its failure
                return None, describe(exc)
        return None, f"timeout after {self._timeout:g} s"
