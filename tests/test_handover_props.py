"""The hand-over protocol, as properties, on a real PostgreSQL: two gateway processes (each its
ledger and dispatcher), three bridges coming and going, bridges reporting texts on air, and
processes restarting with their memory lost, in any order hypothesis finds.

Each process reads the queue rarely on its own, and a report reaches one process only (as with
a shared subscription), so the processes' memories disagree: the database must keep the rules.
Whatever happens: a message is claimed for one bridge at most once and never moves; no bridge
ever holds more than its credit; nothing is handed to a bridge both processes know to be
offline; one user's messages to one node are handed in the order they were accepted; and once
the bridges are back, every message is handed and goes on air. A process hands a message once;
another process hands it again (to the same bridge) only after the first one stopped with it
unacknowledged and the other adopted its node.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.dispatcher import Dispatcher
from actors.ledger import Ledger
from actors.membership import Membership
from kosmo import wire
from kosmo.clock import utcnow
from kosmo.db import Database
from kosmo.delivery import Report, Status
from kosmo.ledger_store import Accepted
from kosmo.messages import NewMessage, StatusReport
from tests.conftest import SANCTUARY, WANDERER, fresh_database

BRIDGES = ["b1", "b2", "b3"]
NODES = ["!a1b2c3d4", "!cafe0001"]
USERS = [WANDERER, SANCTUARY]
CREDIT = 2
EXAMPLES = int(os.environ.get("KOSMO_HANDOVER_EXAMPLES", "12"))

Op = tuple[Any, ...]
send = st.tuples(st.just("send"), st.integers(0, 1), st.sampled_from(USERS),
                st.sampled_from(NODES))
ops = st.lists(st.one_of(
    send, send, send,
    st.tuples(st.just("up"), st.sampled_from(BRIDGES)),
    st.tuples(st.just("down"), st.sampled_from(BRIDGES)),
    st.tuples(st.just("transmit"), st.sampled_from(BRIDGES), st.integers(0, 1)),
    st.tuples(st.just("restart"), st.integers(0, 1)),
), min_size=1, max_size=40)


@dataclass
class Process:
    """One gateway process's ledger and dispatcher, restartable."""

    db: Database
    hand: Callable[[Membership], Callable[[list[NewMessage]], Awaitable[None]]]
    client_id: str  # its own, as each gateway process has; a restart keeps it
    ledger: Ledger | None = None
    dispatcher: Dispatcher | None = None
    membership: Membership | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: trio.Event = field(default_factory=trio.Event)

    async def start(self, nursery: trio.Nursery, states: dict[str, bool]) -> None:
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self.membership = Membership(self.db, client_id=self.client_id)
        # Rarely a read of its own: what one process learns, the other often does not know
        # yet, as when a shared subscription gives each report to one process only.
        self.dispatcher = Dispatcher(self.db, hand=self.hand(self.membership), message_ttl=3600,
                                     refresh=30, process_id=self.membership.process_id)
        self.ledger = Ledger(self.db, dispatch=self.dispatcher.accepted, message_ttl=3600)

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with self.scope:
                    async with trio.open_nursery() as inner:
                        assert self.dispatcher is not None
                        assert self.ledger is not None
                        assert self.membership is not None
                        await inner.start(self.membership.run)
                        await inner.start(self.dispatcher.run)
                        await inner.start(self.ledger.run)
                        task_status.started()
            finally:
                self.stopped.set()

        await nursery.start(run)
        for bridge_id, online in states.items():  # the retained states, as at a subscribe
            await self.tell(bridge_id, online)

    async def tell(self, bridge_id: str, online: bool) -> None:
        assert self.dispatcher is not None
        state = wire.BridgeState(bridge_id, "online" if online else "offline",
                                 {"credit": CREDIT})
        await self.dispatcher.bridge_state(bridge_id, state)

    async def barrier(self) -> None:
        """Returns once the dispatcher has handled everything sent to it before."""
        assert self.dispatcher is not None
        await self.dispatcher.synced()

    async def stop(self) -> None:
        """Stop it, then leave (as the gateway does): the other process adopts its nodes."""
        self.scope.cancel()
        await self.stopped.wait()
        assert self.membership is not None
        await self.membership.leave()


def held_by(sql: psycopg.Connection[Any], bridge_id: str) -> list[UUID]:
    return [r[0] for r in sql.execute(
        "SELECT id FROM messages WHERE bridge_id = %s AND handed_at IS NOT NULL"
        " AND status IN ('pending', 'queued') ORDER BY handed_at, created_at",
        (bridge_id,)).fetchall()]


async def scenario(url: str, script: list[Op]) -> None:
    db = Database(url, size=6)
    await db.open()
    handed: list[tuple[str, UUID]] = []
    by: list[UUID] = []  # the process that handed each of ``handed``
    left_at: dict[UUID, int] = {}  # a stopped process -> how many hands happened before
    offline_everywhere = set(BRIDGES)
    violations: list[str] = []

    def hand(member: Membership) -> Callable[[list[NewMessage]], Awaitable[None]]:
        async def handed_by(messages: list[NewMessage]) -> None:
            for m in messages:
                assert m.bridge_id is not None
                claimed = all(i != m.message_id for _, i in handed)  # else: adopted
                if claimed and m.bridge_id in offline_everywhere:
                    violations.append(f"{m.message_id} handed to offline {m.bridge_id}")
                handed.append((m.bridge_id, m.message_id))
                by.append(member.process_id)
        return handed_by

    async def stop(p: Process) -> None:
        await p.stop()
        assert p.membership is not None
        left_at[p.membership.process_id] = len(handed)

    states = {"b1": True, "b2": False, "b3": False}
    offline_everywhere.discard("b1")
    accepted: dict[UUID, NewMessage] = {}
    first_seen: dict[UUID, tuple[str, datetime]] = {}
    with psycopg.connect(url, autocommit=True) as sql:
        sql.execute("INSERT INTO coverage (bridge_id, node_id, last_heard, hops_away,"
                    " updated_at) VALUES ('b1', %s, now(), 0, now()), ('b2', %s, now(), 1,"
                    " now()), ('b2', %s, now(), 0, now())", (NODES[0], NODES[0], NODES[1]))
        async with trio.open_nursery() as nursery:
            procs = [Process(db, hand, "p0"), Process(db, hand, "p1")]
            for p in procs:
                await p.start(nursery, states)

            async def settle() -> None:
                for p in procs:
                    await p.barrier()

            def check() -> None:
                for bridge_id in BRIDGES:
                    assert len(held_by(sql, bridge_id)) <= CREDIT, bridge_id
                for message_id, bridge_id, at in sql.execute(
                        "SELECT id, bridge_id, handed_at FROM messages"
                        " WHERE handed_at IS NOT NULL").fetchall():
                    assert first_seen.setdefault(message_id, (bridge_id, at)) == (bridge_id, at)

            for op in script:
                kind = op[0]
                if kind == "send":
                    ledger = procs[op[1]].ledger
                    assert ledger is not None
                    result = await ledger.send(op[2], op[3], f"t{len(accepted)}")
                    assert isinstance(result, Accepted)
                    accepted[result.message.message_id] = result.message
                elif kind in ("up", "down"):
                    states[op[1]] = kind == "up"
                    if kind == "up":
                        offline_everywhere.discard(op[1])
                    for p in procs:
                        await p.tell(op[1], kind == "up")
                    await settle()
                    if kind == "down":
                        offline_everywhere.add(op[1])
                elif kind == "transmit":
                    held = held_by(sql, op[1])
                    if held:
                        ledger = procs[0].ledger
                        assert ledger is not None
                        await ledger.report(StatusReport(held[0], Report(Status.TRANSMITTED),
                                                         utcnow(), bridge_id=op[1]), wait=True)
                        told = procs[op[2]].dispatcher  # the one process that got the report
                        assert told is not None
                        await told.settled()
                else:
                    await stop(procs[op[1]])
                    procs[op[1]] = Process(db, hand, f"p{op[1]}")
                    await procs[op[1]].start(nursery, states)
                await settle()
                check()

            # Every bridge back: everything is handed, once, and goes on air.
            for bridge_id in BRIDGES:
                states[bridge_id] = True
                offline_everywhere.discard(bridge_id)
                for p in procs:
                    await p.tell(bridge_id, True)
            with trio.fail_after(30):
                while True:
                    for bridge_id in BRIDGES:
                        for message_id in held_by(sql, bridge_id):
                            ledger = procs[0].ledger
                            assert ledger is not None
                            await ledger.report(StatusReport(
                                message_id, Report(Status.TRANSMITTED), utcnow(),
                                bridge_id=bridge_id), wait=True)
                    for p in procs:
                        assert p.dispatcher is not None
                        await p.dispatcher.settled()
                    waiting = sql.execute("SELECT count(*) FROM messages WHERE status = 'pending'"
                                          ).fetchone()
                    if waiting is not None and waiting[0] == 0 and \
                            len({m for _, m in handed}) == len(accepted):
                        break
                    await trio.sleep(0.02)
                check()
            for p in procs:
                await stop(p)
    await db.close()

    assert violations == []
    hands: dict[UUID, list[tuple[int, UUID]]] = {}
    for index, ((_, message_id), process_id) in enumerate(zip(handed, by, strict=True)):
        hands.setdefault(message_id, []).append((index, process_id))
    for message_id, seq in hands.items():  # again only by another, after the first stopped
        assert len({p for _, p in seq}) == len(seq), f"{message_id} handed twice by a process"
        for (_, before), (index, _) in itertools.pairwise(seq):
            assert left_at.get(before, len(handed)) <= index, f"{message_id} handed twice"
    ids = list(dict.fromkeys(m for _, m in handed))  # first hands, in order
    assert set(ids) == set(accepted)
    assert all(first_seen[m][0] == b for b, m in handed)  # again: to the same bridge
    for user in USERS:  # per (user, node): handed in the order accepted
        for node in NODES:
            mine = [m for m in ids if accepted[m].user_id == user and accepted[m].node_id == node]
            assert mine == sorted(mine, key=lambda m: (accepted[m].created_at, m))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(script=ops)
def test_the_hand_over_never_puts_a_message_on_two_radios(
        pg_admin_url: str, template_db: str, script: list[Op]) -> None:
    with fresh_database(pg_admin_url, template_db) as url:
        trio.run(scenario, url, script)
