"""The fair queue (``kosmo.fair_queue``): hand-computed rounds, then properties against a model.

The model is the round robin written the plain way: a list per user kept sorted, a list of
active users rotated one turn at a time, costs in whole milliseconds. It knows neither prefix
sums nor skipped rounds. The machine checks every ``pop()`` against it, that ``order()`` is
what the pops give, and that ``place()`` is the index at which the entry it prices leaves.
Separate properties check the bound on a light user's wait and the weighted shares.
"""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kosmo.fair_queue import Entry, FairQueue

T0 = datetime(2025, 1, 1, tzinfo=UTC)
USERS = [uuid.UUID(int=i) for i in range(1, 5)]
NODES = ["!00000001", "!00000002", "!00000003"]
QUANTUM_MS = 1000
_ids = itertools.count(1)


def entry(user: UUID, cost: float, weight: int = 1, *, at: float | None = None,
          node: str = NODES[0], message_id: UUID | None = None) -> Entry:
    n = next(_ids)
    return Entry(message_id or uuid.UUID(int=(1 << 64) + n), user, node,
                 T0 + timedelta(seconds=n if at is None else at), cost, weight)


def drain(queue: FairQueue) -> list[Entry]:
    out = []
    while (e := queue.pop()) is not None:
        out.append(e)
    return out


# -- hand-computed rounds ---------------------------------------------------------------------

A, B, C = USERS[:3]


def two_users() -> tuple[FairQueue, dict[str, Entry]]:
    """Quantum 1 s. A (weight 1) has four texts of 0.6 s, B (weight 2) five of 0.8 s.

    Round 1: A has 1.0: A1 (0.4 left; 0.6 does not fit). B has 2.0: B1, B2 (0.4 left).
    Round 2: A 1.4: A2, A3 (0.2 left). B 2.4: B3, B4, B5, empty: B leaves.
    Round 3: A 1.2: A4, empty.
    """
    queue = FairQueue(1.0)
    named = {}
    for i in range(1, 5):
        named[f"A{i}"] = entry(A, 0.6, 1)
        queue.push(named[f"A{i}"])
    for i in range(1, 6):
        named[f"B{i}"] = entry(B, 0.8, 2)
        queue.push(named[f"B{i}"])
    return queue, named


def names(entries: list[Entry], named: dict[str, Entry]) -> list[str]:
    back = {e.message_id: name for name, e in named.items()}
    return [back[e.message_id] for e in entries]


EXPECTED = ["A1", "B1", "B2", "A2", "A3", "B3", "B4", "B5", "A4"]


def test_two_users_weights_one_and_two() -> None:
    queue, named = two_users()
    assert names(queue.order(), named) == EXPECTED
    assert names(queue.order(limit=3), named) == EXPECTED[:3]
    assert queue.backlogged() == {A: 4, B: 5}
    assert names(drain(queue), named) == EXPECTED
    assert len(queue) == 0
    assert queue.backlogged() == {}


def test_place_of_new_entries() -> None:
    queue, named = two_users()
    # C is new: joins at the tail and sends in round 1, after A1, B1, B2.
    assert queue.place(C, 1, 0.5) == 3
    # A's fifth text needs 3.0 s of allowance: A's third turn. B has had two turns (4.0 s):
    # all five. Ahead: A's four and B's five.
    assert queue.place(A, 1, 0.6) == 9
    # At weight 2, A covers 3.0 in its second turn. Turn 1: A 2.0 -> A1, A2, A3 (0.2 left);
    # B's first turn: B1, B2; A's second turn: A4, then the new one.
    assert queue.place(A, 2, 0.6) == 6
    popped = queue.pop()
    assert popped == named["A1"]
    # A's turn goes on with 0.4 left. A new text of 0.4 s comes after A2, A3, A4 (1.8 s): it
    # needs 2.2 s, which A's third turn counting this one covers (0.4, 1.4, 2.4).
    assert queue.place(A, 1, 0.4) == len(queue.order())
    new = entry(A, 0.4, 1)
    queue.push(new)
    assert queue.order()[-1] == new


def test_entries_pushed_out_of_order_go_in_their_place() -> None:
    queue = FairQueue(1.0)
    late, early, middle = entry(A, 0.5, at=30), entry(A, 0.5, at=10), entry(A, 0.5, at=20)
    for e in (late, early, middle):
        assert queue.push(e)
    assert not queue.push(early)  # already in
    same_time = [entry(A, 0.5, at=20, message_id=uuid.UUID(int=k)) for k in (9, 3)]
    for e in same_time:
        queue.push(e)
    assert drain(queue) == [early, same_time[1], same_time[0], middle, late]


def test_remove_leaves_a_gap_and_nothing_else_moves() -> None:
    queue, named = two_users()
    assert queue.remove(named["B2"].message_id) == named["B2"]
    assert queue.remove(named["B2"].message_id) is None
    assert named["B2"].message_id not in queue
    assert named["B3"].message_id in queue
    # Round 1: A1; B (2.0): B1, B3 (0.4 left). Round 2: A2, A3; B 2.4: B4, B5.
    assert names(drain(queue), named) == ["A1", "B1", "B3", "A2", "A3", "B4", "B5", "A4"]


def test_removing_the_last_entry_makes_a_user_inactive() -> None:
    queue = FairQueue(1.0)
    a1, b1, b2 = entry(A, 0.6), entry(B, 0.6), entry(B, 0.6)
    for e in (a1, b1, b2):
        queue.push(e)
    assert queue.pop() == a1  # A leaves: its deficit returns to 0
    a2 = entry(A, 0.6)
    queue.push(a2)  # A is active again, at the tail, behind B
    queue.remove(a2.message_id)
    assert queue.backlogged() == {B: 2}
    a3 = entry(A, 0.6)
    queue.push(a3)
    assert queue.order() == [b1, a3, b2]


def test_the_latest_weight_applies() -> None:
    queue = FairQueue(1.0)
    b = [entry(B, 1.0, 1) for _ in range(4)]
    a = [entry(A, 1.0, 1), entry(A, 1.0, 1), entry(A, 1.0, 4)]
    for e in (a[0], *b, a[1], a[2]):
        queue.push(e)
    # A now has weight 4: its first turn sends all three.
    assert [e.user_id for e in drain(queue)] == [A, A, A, B, B, B, B]


def test_costs_above_the_quantum_take_several_rounds() -> None:
    queue = FairQueue(1.0)
    big, small = entry(A, 3.5, 1), entry(B, 0.5, 1)
    queue.push(big)
    queue.push(small)
    # A needs four turns; B sends in its first and leaves.
    assert queue.place(C, 1, 0.5) == 1  # C's first turn is after B's, before A's second
    assert queue.order() == [small, big]
    assert drain(queue) == [small, big]


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="airtime"):
        entry(A, 0.0)
    with pytest.raises(ValueError, match="weight"):
        entry(A, 1.0, 0)
    with pytest.raises(ValueError, match="airtime"):
        FairQueue(float("nan"))
    assert FairQueue(1.0).pop() is None
    assert FairQueue(1.0).place(A, 1, 1.0) == 0


# -- the model --------------------------------------------------------------------------------


class Model:
    """The round robin the plain way, in whole milliseconds."""

    def __init__(self, quantum_ms: int) -> None:
        self.quantum = quantum_ms
        self.queues: dict[UUID, list[Entry]] = {}
        self.weight: dict[UUID, int] = {}
        self.active: list[UUID] = []
        self.deficit: dict[UUID, int] = {}
        self.started = False

    def copy(self) -> Model:
        other = Model(self.quantum)
        other.queues = {u: list(q) for u, q in self.queues.items()}
        other.weight, other.deficit = dict(self.weight), dict(self.deficit)
        other.active, other.started = list(self.active), self.started
        return other

    def push(self, e: Entry) -> None:
        if e.user_id not in self.queues:
            self.queues[e.user_id] = []
            self.active.append(e.user_id)
            self.deficit[e.user_id] = 0
        self.weight[e.user_id] = e.weight
        self.queues[e.user_id].append(e)
        self.queues[e.user_id].sort(key=lambda x: (x.created_at, x.message_id))

    def remove(self, e: Entry) -> None:
        self.queues[e.user_id].remove(e)
        if not self.queues[e.user_id]:
            self._leave(e.user_id)

    def _leave(self, user: UUID) -> None:
        if self.active[0] == user:
            self.started = False
        self.active.remove(user)
        del self.queues[user], self.deficit[user]

    def pop(self) -> Entry | None:
        while self.active:
            user = self.active[0]
            if not self.started:
                self.deficit[user] += self.quantum * self.weight[user]
                self.started = True
            head = self.queues[user][0]
            cost = round(head.cost * 1000)
            if cost <= self.deficit[user]:
                self.deficit[user] -= cost
                self.queues[user].pop(0)
                if not self.queues[user]:
                    self._leave(user)
                return head
            self.active.append(self.active.pop(0))
            self.started = False
        return None

    def order(self) -> list[Entry]:
        other = self.copy()
        out = []
        while (e := other.pop()) is not None:
            out.append(e)
        return out

    def waiting(self) -> list[Entry]:
        return [e for q in self.queues.values() for e in q]


costs_ms = st.integers(1, 3 * QUANTUM_MS)  # above the quantum too: several turns for one
weights = st.sampled_from([1, 2, 4])


class FairQueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.queue = FairQueue(QUANTUM_MS / 1000)
        self.model = Model(QUANTUM_MS)
        self.ids = itertools.count(1)

    def new(self, user: UUID, weight: int, cost_ms: int, at: int, node: str) -> Entry:
        return Entry(uuid.UUID(int=next(self.ids)), user, node, T0 + timedelta(seconds=at),
                     cost_ms / 1000, weight)

    @rule(user=st.sampled_from(USERS), weight=weights, cost=costs_ms, at=st.integers(0, 40),
          node=st.sampled_from(NODES))
    def push(self, user: UUID, weight: int, cost: int, at: int, node: str) -> None:
        e = self.new(user, weight, cost, at, node)
        assert self.queue.push(e)
        self.model.push(e)

    @precondition(lambda self: len(self.queue) > 0)
    @rule(data=st.data())
    def push_again(self, data: st.DataObject) -> None:
        e = data.draw(st.sampled_from(self.model.waiting()))
        assert not self.queue.push(e)

    @precondition(lambda self: len(self.queue) > 0)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        e = data.draw(st.sampled_from(self.model.waiting()))
        assert self.queue.remove(e.message_id) == e
        assert self.queue.remove(e.message_id) is None
        self.model.remove(e)
        event("remove")

    @rule(n=st.integers(1, 4))
    def pop(self, n: int) -> None:
        for _ in range(n):
            waiting = self.model.waiting()
            got = self.queue.pop()
            assert got == self.model.pop()
            if got is None:
                return
            # FIFO within the user, and so within (user, node): nothing of theirs was earlier.
            mine = [e for e in waiting if e.user_id == got.user_id]
            assert got.key == min(e.key for e in mine)
            assert got.key == min(e.key for e in mine if e.node_id == got.node_id)

    @rule(user=st.sampled_from(USERS), weight=weights, cost=costs_ms,
          node=st.sampled_from(NODES))
    def place_then_push(self, user: UUID, weight: int, cost: int, node: str) -> None:
        """place() is the index at which the entry, pushed now, actually leaves."""
        mine = [e.created_at for e in self.model.queues.get(user, [])]
        at = (max(mine) - T0).total_seconds() + 1 if mine else 41
        predicted = self.queue.place(user, weight, cost / 1000)
        e = self.new(user, weight, cost, int(at), node)
        assert self.queue.push(e)
        self.model.push(e)
        assert self.model.order().index(e) == predicted
        event("place: joins" if not mine else "place: active")

    @invariant()
    def order_is_the_pops(self) -> None:
        expected = self.model.order()
        assert self.queue.order() == expected
        assert self.queue.order(limit=2) == expected[:2]
        assert len(self.queue) == len(expected)
        assert self.queue.backlogged() == {u: len(q) for u, q in self.model.queues.items()}
        for e in expected:
            assert e.message_id in self.queue


def test_fair_queue_against_the_model() -> None:
    run_state_machine_as_test(
        FairQueueMachine, settings=settings(max_examples=150, stateful_step_count=40,
                                            deadline=None))


def test_order_and_place_agree_with_what_pop_does() -> None:
    """Drain the queue itself (not the model): each pop is the next of order(), and a placed
    entry leaves at its place, over a long random run with costs above the quantum too."""
    rng = random.Random(7)
    queue = FairQueue(1.0)
    for step in range(600):
        if rng.random() < 0.55:
            user, weight = rng.choice(USERS), rng.choice([1, 2, 4])
            place = queue.place(user, weight, cost := rng.uniform(0.05, 2.5))
            mine = [e for e in queue.order() if e.user_id == user]
            at = max((e.created_at for e in mine), default=T0) + timedelta(seconds=1)
            e = Entry(uuid.UUID(int=step + 1), user, NODES[0], at, cost, weight)
            queue.push(e)
            assert queue.order().index(e) == place
        else:
            expected = queue.order(limit=1)
            assert [queue.pop()] == (expected or [None])


# -- the bound and the shares -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(heavy=st.lists(st.tuples(weights, st.integers(5, 60)), min_size=1, max_size=5),
       seed=st.integers(0, 2**32), popped=st.integers(0, 100), light_weight=weights)
def test_a_light_user_waits_at_most_one_round(heavy: list[tuple[int, int]], seed: int,
                                              popped: int, light_weight: int) -> None:
    """Whatever the heavy users' backlogs and wherever the round stands, a user with nothing
    waiting who sends a text (at most the quantum, as the dispatcher sets it) has it out after
    at most one turn of each other active user: sum of (quantum * weight + largest cost)."""
    rng = random.Random(seed)
    quantum = 1.0  # the largest cost
    queue = FairQueue(quantum)
    for i, (weight, count) in enumerate(heavy):
        for _ in range(count):
            queue.push(entry(uuid.UUID(int=100 + i), rng.uniform(0.05, quantum), weight))
    for _ in range(popped):
        queue.pop()
    light = uuid.UUID(int=99)
    bound = sum(quantum * e_weight + quantum for user, e_weight in
                {e.user_id: e.weight for e in queue.order()}.items())
    new = entry(light, rng.uniform(0.05, quantum), light_weight)
    place = queue.place(light, light_weight, new.cost)
    queue.push(new)
    ahead = []
    while (e := queue.pop()) != new:
        assert e is not None
        ahead.append(e)
    assert len(ahead) == place
    assert sum(e.cost for e in ahead) <= bound + 1e-9
    # One round: no other user hands out more than one turn's worth.
    for user in {e.user_id for e in ahead}:
        mine = [e for e in ahead if e.user_id == user]
        assert sum(e.cost for e in mine) <= quantum * mine[0].weight + quantum + 1e-9


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


@settings(max_examples=20, deadline=None)
@given(user_weights=st.lists(weights, min_size=2, max_size=5), seed=st.integers(0, 2**32))
def test_weighted_shares_while_all_are_backlogged(user_weights: list[int], seed: int) -> None:
    rng = random.Random(seed)
    quantum, rounds = 1.0, 40
    queue = FairQueue(quantum)
    users = [uuid.UUID(int=200 + i) for i in range(len(user_weights))]
    weight = dict(zip(users, user_weights, strict=True))
    for user in users:
        # At least ``rounds`` rounds' worth for everyone (costs at most the quantum).
        for _ in range(int(rounds * weight[user] / 0.1) + 1):
            queue.push(entry(user, rng.uniform(0.1, quantum), weight[user]))
    served = dict.fromkeys(users, 0.0)
    total_weight = sum(user_weights)
    while all(queue.backlogged().get(user) for user in users):
        e = queue.pop()
        assert e is not None
        served[e.user_id] += e.cost
        total = sum(served.values())
        for user in users:
            fair = total * weight[user] / total_weight
            assert abs(served[user] - fair) <= quantum * weight[user] + quantum + 1e-9
    assert min(served.values()) >= quantum * (rounds - 1)
    assert jain([served[user] / weight[user] for user in users]) >= 0.99
