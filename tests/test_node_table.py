"""The node table (``kosmo.node_table``) against a model, in a small world that applies its
decisions the way the conversations router does.

The world: a few nodes, each with numbered messages stored in the database in order; actors
that hand out the messages they were given, one at a time, or read their node's pending
messages from the database when they start with that; an outbox that hands every pending
message out again. The model predicts every decision from plain facts of that world: which
node has an actor, since which step an actor has been quiescent, which nodes wait (a list).

Invariants: never two actors for a node, never more than the bound, the table's view equals
the world's, nothing stranded (a pending message is in its node's actor's channel, or that
actor reads the database next, or the node waits in the database), and each node's messages
go out in order. ``drain`` runs the world until nothing is pending: every waiting node gets an
actor once room frees up or the outbox hands its messages out again.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from dataclasses import dataclass, field

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kosmo.node_table import (
    Actor,
    Deliver,
    Handover,
    NodeTable,
    Start,
    Stop,
    WaitInDatabase,
)

NODES = [f"!0000000{i}" for i in range(1, 6)]
PICK = st.integers(0, 7)  # which of the eligible actors (modulo their number)
KINDS = {"deliver", "start", "evict", "wait in database", "first to wait", "all served",
         "handover", "read database first", "quiescent", "repeated", "reap", "not reaped", "failed",
         "stale", "drained"}
SEEN: Counter[str] = Counter()


def seen(kind: str) -> None:
    assert kind in KINDS
    SEEN[kind] += 1
    if currently_in_test_context():  # not in the scripted run
        event(kind)


@dataclass
class Running:
    """An actor in the world."""

    actor: Actor
    reads_database: bool  # next it reads its node's pending messages from the database
    channel: deque[int] = field(default_factory=deque)  # messages given, not yet handed out
    quiet_since: int | None = None  # the step it became quiescent at, if it is

    @property
    def has_work(self) -> bool:
        return self.reads_database or bool(self.channel)


class TableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.numbers = itertools.count()
        self.steps = itertools.count()
        self.running: dict[str, Running] = {}
        self.pending: dict[str, list[int]] = {node: [] for node in NODES}  # oldest first
        self.handed: dict[str, list[int]] = {node: [] for node in NODES}
        self.waiting: list[str] = []  # the model's nodes waiting in the database
        self.overflowing = False
        self.stopped: list[Actor] = []

    @initialize(bound=st.integers(1, 3))
    def setup(self, bound: int) -> None:
        self.bound = bound
        self.table = NodeTable(bound)

    # Messages in: new ones, and the outbox handing the pending ones out again.

    @rule(node=st.sampled_from(NODES), count=st.integers(1, 3))
    def send(self, node: str, count: int) -> None:
        for _ in range(count):
            number = next(self.numbers)
            self.pending[node].append(number)
            self.dispatch(node, number)

    @precondition(lambda self: any(self.pending.values()))
    @rule()
    def outbox(self) -> None:
        for number, node in sorted((n, x) for x in NODES for n in self.pending[x]):
            self.dispatch(node, number)

    def dispatch(self, node: str, number: int) -> None:
        decision = self.table.dispatch(node)
        quiescent = [r for r in self.running.values() if r.quiet_since is not None]
        if node in self.running:
            assert decision == Deliver(self.running[node].actor)
            seen("deliver")
            self.give(self.running[node], number)
        elif len(self.running) < self.bound or quiescent:
            evict = min(quiescent, key=lambda r: r.quiet_since or 0) if (
                len(self.running) >= self.bound) else None
            assert isinstance(decision, Start)
            assert decision.evict == (evict.actor if evict else None)
            self.start(decision)
            if not decision.read_database_first:
                self.give(self.running[node], number)
        else:
            assert decision == WaitInDatabase(node, first=not self.overflowing)
            seen("first to wait" if decision.first else "wait in database")
            self.overflowing = True
            if node not in self.waiting:
                self.waiting.append(node)

    def give(self, running: Running, number: int) -> None:
        """What the router does with a message for a running actor: a fast-path hand-over,
        unless the actor holds it already or reads the database next (where it is)."""
        if number in running.channel or running.reads_database:
            return
        running.channel.append(number)
        running.quiet_since = None
        self.table.busy(running.actor)

    def start(self, start: Start) -> None:
        node = start.actor.node_id
        assert node not in self.running
        assert all(start.actor.generation > a.generation for a in self.stopped)
        if start.evict is not None:
            assert self.running[start.evict.node_id].quiet_since is not None
            self.stop(start.evict)
            seen("evict")
        # Per-node order: a node that waited in the database reads it first.
        assert start.read_database_first == (node in self.waiting)
        if node in self.waiting:
            self.waiting.remove(node)
            seen("read database first")
        assert start.all_served == (self.overflowing and not self.waiting)
        if start.all_served:
            self.overflowing = False
            seen("all served")
        self.running[node] = Running(start.actor, start.read_database_first)
        seen("start")

    def stop(self, actor: Actor) -> None:
        running = self.running.pop(actor.node_id)
        assert running.actor == actor
        self.stopped.append(actor)

    # Actors at work, idle, failing.

    def pick(self, pick: int, eligible: list[Running]) -> Running:
        assert eligible  # the rule's precondition
        return eligible[pick % len(eligible)]

    def busy_ones(self) -> list[Running]:
        return [r for r in self.running.values() if r.has_work]

    def quiescent_ones(self) -> list[Running]:
        return [r for r in self.running.values() if r.quiet_since is not None]

    @precondition(lambda self: self.busy_ones())
    @rule(pick=PICK)
    def work(self, pick: int) -> None:
        running = self.pick(pick, self.busy_ones())
        node = running.actor.node_id
        if running.reads_database:
            running.reads_database = False
            for number in list(self.pending[node]):
                self.hand_out(node, number)
        else:
            self.hand_out(node, running.channel.popleft())
        if not running.has_work:
            self.became_quiescent(running)

    def hand_out(self, node: str, number: int) -> None:
        if number not in self.pending[node]:
            return  # handed out already: the actor's recent ids skip it
        assert number == self.pending[node][0], "a newer message overtook an older one"
        self.pending[node].pop(0)
        self.handed[node].append(number)

    def became_quiescent(self, running: Running) -> None:
        decision = self.table.quiescent(running.actor)
        if self.waiting and len(self.running) >= self.bound:
            assert isinstance(decision, Handover)
            assert decision.stop == running.actor
            assert decision.start.actor.node_id == self.waiting[0]
            self.stop(running.actor)
            self.start(decision.start)
            seen("handover")
        else:
            assert decision is None
            if running.quiet_since is None:  # one quiescent already keeps its place
                running.quiet_since = next(self.steps)
            seen("quiescent")

    @precondition(lambda self: self.quiescent_ones())
    @rule(pick=PICK)
    def quiescent_again(self, pick: int) -> None:
        """A second notice from a quiescent actor (as after reading the database)."""
        self.became_quiescent(self.pick(pick, self.quiescent_ones()))
        seen("repeated")

    @precondition(lambda self: self.running)
    @rule(pick=PICK)
    def idle(self, pick: int) -> None:
        """An idle notice; one from an actor given work since it sent it is too late."""
        running = self.pick(pick, list(self.running.values()))
        decision = self.table.idle(running.actor)
        if running.quiet_since is None:
            assert decision is None
            seen("not reaped")
        else:
            assert decision == Stop(running.actor)
            self.stop(running.actor)
            seen("reap")

    @precondition(lambda self: self.running)
    @rule(pick=PICK)
    def fail(self, pick: int) -> None:
        running = self.pick(pick, list(self.running.values()))
        assert self.table.failed(running.actor) == Stop(running.actor)
        self.stop(running.actor)
        if running.actor.node_id not in self.waiting:
            self.waiting.append(running.actor.node_id)  # what it held is in the database
        seen("failed")

    @precondition(lambda self: self.stopped)
    @rule(pick=PICK)
    def stale(self, pick: int) -> None:
        """Late notices from an actor already stopped change nothing."""
        actor = self.stopped[pick % len(self.stopped)]
        before = self.snapshot()
        self.table.busy(actor)
        assert self.table.quiescent(actor) is None
        assert self.table.idle(actor) is None
        assert self.table.failed(actor) is None
        assert self.snapshot() == before
        seen("stale")

    def snapshot(self) -> tuple[object, ...]:
        return (self.table.actors(), self.table.quiescent_nodes(), self.table.waiting_nodes(),
                self.table.evicted, self.table.refused)

    @rule()
    def drain(self) -> None:
        """Run the world until nothing is pending: actors work, the outbox passes."""
        for _ in range(1000):
            if self.busy_ones():
                self.work(0)
            elif any(self.pending.values()):
                self.outbox()
            else:
                break
            self.check()
        assert not any(self.pending.values())
        assert all(not self.pending[node] for node in self.waiting)
        seen("drained")

    # Invariants.

    @invariant()
    def check(self) -> None:
        actors = self.table.actors()
        assert len(actors) <= self.bound
        assert len({a.node_id for a in actors}) == len(actors)
        assert sorted(actors, key=repr) == sorted((r.actor for r in self.running.values()),
                                                  key=repr)
        quiet = sorted(self.quiescent_ones(), key=lambda r: r.quiet_since or 0)
        assert self.table.quiescent_nodes() == [r.actor.node_id for r in quiet]
        assert self.table.waiting_nodes() == self.waiting
        assert not set(self.waiting) & set(self.running)
        for node, numbers in self.pending.items():  # nothing stranded
            running = self.running.get(node)
            for number in numbers:
                assert node in self.waiting or (running is not None and (
                    running.reads_database or number in running.channel))
        assert all(numbers == sorted(numbers) for numbers in self.handed.values())


def test_the_table_against_its_model() -> None:
    SEEN.clear()
    run_state_machine_as_test(TableMachine, settings=settings(
        max_examples=300, stateful_step_count=50, deadline=None, derandomize=True,
        database=None))
    assert set(SEEN) == KINDS, f"never hit: {KINDS - set(SEEN)}"


def test_a_scripted_run_hits_every_decision() -> None:
    """The same machine by hand, so every kind of decision is known to be checked."""
    SEEN.clear()
    m = TableMachine()
    m.setup(bound=2)
    m.send(NODES[0], 1)  # start
    m.send(NODES[0], 1)  # deliver
    m.send(NODES[1], 1)  # start: at the bound now
    m.send(NODES[2], 2)  # none quiescent: waits in the database (first, then again)
    m.work(0)
    m.work(0)  # node 0 quiescent with a node waiting at the bound: hands over to node 2
    m.check()
    assert list(m.running) == [NODES[1], NODES[2]]
    m.work(1)  # node 2 reads the database, then is quiescent
    m.send(NODES[3], 1)  # evicts node 2
    m.idle(0)  # node 1 has work: not reaped
    m.work(0)
    m.quiescent_again(0)
    m.idle(0)  # node 1 is quiescent: reaped
    m.fail(0)  # node 3 fails: it waits in the database
    m.stale(0)
    m.outbox()
    m.drain()
    m.check()
    assert set(SEEN) == KINDS, f"never hit: {KINDS - set(SEEN)}"
