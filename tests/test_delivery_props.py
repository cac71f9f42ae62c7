"""Property tests: ``kosmo.delivery`` and the quota refund rule against an independent model.

The model knows only a rank table and one step rule: nothing leaves a final status, ``expired``
does not touch a transmitted message, and otherwise a report wins when it ranks higher; a
cancel wins only over a message that is still pending and was never handed to a bridge. A user
is a limit and a ``used`` counter that a send debits and a refund credits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from kosmo.delivery import Entry, Report, Status, Transition, apply, cancel

S = Status
TOP = 3
RANK = {S.PENDING: 0, S.QUEUED: 1, S.TRANSMITTED: 2, S.DELIVERED: TOP, S.FAILED: TOP,
        S.EXPIRED: TOP, S.CANCELED: TOP}
AIR = {S.TRANSMITTED, S.DELIVERED}
LOST = {S.FAILED, S.EXPIRED, S.CANCELED}
NOTED = {S.EXPIRED, S.CANCELED}


def model_step(status: Status, report: Status) -> Status:
    if RANK[status] == TOP or (report is S.EXPIRED and status is S.TRANSMITTED):
        return status
    return report if RANK[report] > RANK[status] else status


reports = st.builds(
    Report,
    st.sampled_from([S.QUEUED, S.TRANSMITTED, S.DELIVERED, S.FAILED, S.EXPIRED]),
    st.none() | st.sampled_from(["", "ttl", "no ack", "radio off"]),
)


@dataclass
class User:
    limit: int
    used: int = 0
    sent: int = 0


@dataclass
class Message:
    user: User
    status: Status = S.PENDING
    history: list[Entry] = field(default_factory=lambda: [Entry(S.PENDING)])
    model: Status = S.PENDING
    model_on_air: bool = False
    handed: bool = False  # a bridge was given it (the dispatcher's claim)
    refunds: int = 0
    last_seen: Status = S.PENDING  # the status at the previous invariant check

    def steps(self) -> list[Status]:
        return [entry.status for entry in self.history if not entry.note]


class DeliveryMachine(RuleBasedStateMachine):
    messages = Bundle("messages")
    applied = Bundle("applied")

    def __init__(self) -> None:
        super().__init__()
        self.users: list[User] = []
        self.sent: list[Message] = []

    # The first user can always send once, so every run has a message to report on from the
    # start and no invariant below checks an empty set.
    @initialize(target=messages, first=st.integers(1, 4),
                others=st.lists(st.integers(0, 4), max_size=2))
    def first_message(self, first: int, others: list[int]) -> object:
        self.users = [User(limit) for limit in (first, *others)]
        return self.send_as(self.users[0])

    @rule(target=messages, data=st.data())
    def send(self, data: st.DataObject) -> object:
        return self.send_as(data.draw(st.sampled_from(self.users), label="user"))

    def send_as(self, user: User) -> object:
        if user.used >= user.limit:
            return multiple()  # refused: quota exceeded
        user.used += 1
        user.sent += 1
        message = Message(user)
        self.sent.append(message)
        return message

    def deliver(self, message: Message, report: Report) -> Transition:
        transition = apply(message.status, report)
        assert transition.before is message.status
        assert RANK[transition.after] >= RANK[transition.before]
        assert transition.changed == (transition.after is not transition.before)
        if transition.changed and transition.after in LOST:
            (entry,) = transition.history
            assert entry.reason
            if report.reason:
                assert entry.reason == report.reason
            elif report.status is S.FAILED:
                assert entry.reason == "unknown"
        if transition.before in NOTED:  # kept for the record, and nothing else
            assert [(e.status, e.note) for e in transition.history] == [(report.status, True)]
        message.status = transition.after
        message.history.extend(transition.history)
        message.model = model_step(message.model, report.status)
        message.model_on_air |= message.model in AIR
        if transition.refund:
            event("refund")
            message.refunds += 1
            message.user.used -= 1
        if any(entry.note for entry in transition.history):
            event("note")
        return transition

    @rule(target=applied, message=messages, report=reports)
    def report(self, message: Message, report: Report) -> tuple[Message, Report]:
        self.deliver(message, report)
        return message, report

    @rule(message=messages)
    def hand(self, message: Message) -> None:
        message.handed = True

    @rule(message=messages)
    def cancel(self, message: Message) -> None:
        waiting = message.status is S.PENDING and not message.handed
        transition = cancel(message.status, message.handed)
        assert transition.before is message.status
        assert transition.changed == transition.refund == waiting
        if waiting:
            event("canceled")
            assert transition.history == (Entry(S.CANCELED, "canceled"),)
            message.model = S.CANCELED
            message.refunds += 1
            message.user.used -= 1
        else:
            assert transition.history == ()
        message.status = transition.after
        message.history.extend(transition.history)

    @rule(pair=applied)
    def duplicate(self, pair: tuple[Message, Report]) -> None:
        message, report = pair
        transition = self.deliver(message, report)
        assert not transition.changed
        assert not transition.refund
        assert all(entry.note for entry in transition.history)

    @rule(target=applied, message=messages,
          batch=st.lists(reports, min_size=2, max_size=5).flatmap(st.permutations))
    def reordered(self, message: Message, batch: list[Report]) -> object:
        for report in batch:
            self.deliver(message, report)
        return multiple(*((message, report) for report in batch))

    @invariant()
    def status_follows_the_model_and_never_moves_back(self) -> None:
        assert len(self.sent) == sum(user.sent for user in self.users)
        for message in self.sent:
            assert message.status is message.model
            assert RANK[message.status] >= RANK[message.last_seen]
            assert RANK[message.last_seen] < TOP or message.status is message.last_seen
            message.last_seen = message.status

    @invariant()
    def history_is_monotone_and_ends_in_the_status(self) -> None:
        assert all(message.history[0] == Entry(S.PENDING) for message in self.sent)
        for message in self.sent:
            steps = message.steps()
            ranks = [RANK[step] for step in steps]
            assert all(a < b for a, b in itertools.pairwise(ranks))
            assert steps[-1] is message.status
            if S.DELIVERED in steps:
                assert S.TRANSMITTED in steps[: steps.index(S.DELIVERED)]

    @invariant()
    def refunds_go_to_messages_that_never_reached_the_air(self) -> None:
        assert all(message.refunds <= 1 for message in self.sent)
        for message in self.sent:
            never_on_air = S.TRANSMITTED not in message.steps()
            assert never_on_air == (not message.model_on_air)
            assert message.refunds == (message.status in LOST and never_on_air)

    @invariant()
    def quota_counts_messages_on_air_or_in_flight(self) -> None:
        for user in self.users:
            mine = [message for message in self.sent if message.user is user]
            refunds = sum(message.refunds for message in mine)
            in_flight = sum(message.status not in LOST or S.TRANSMITTED in message.steps()
                            for message in mine)
            assert 0 <= user.used <= user.limit
            assert user.used == user.sent - refunds == in_flight

    @invariant()
    def notes_only_on_expired_or_canceled_messages(self) -> None:
        noted = [message for message in self.sent if any(e.note for e in message.history)]
        assert all(message.status in NOTED for message in noted)
        for message in noted:
            first_note = next(i for i, e in enumerate(message.history) if e.note)
            assert message.history[first_note - 1].status is message.status

    @invariant()
    def a_canceled_message_was_never_handed_nor_reported(self) -> None:
        for message in self.sent:
            if message.status is S.CANCELED:
                assert message.steps() == [S.PENDING, S.CANCELED]


DeliveryMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestDeliveryMachine = DeliveryMachine.TestCase


@given(st.lists(reports, max_size=10))
def test_any_report_sequence_ends_where_the_model_predicts(sequence: list[Report]) -> None:
    status, model, on_air, refunds = S.PENDING, S.PENDING, False, 0
    for report in sequence:
        transition = apply(status, report)
        status, refunds = transition.after, refunds + transition.refund
        model = model_step(model, report.status)
        on_air |= model in AIR
    assert status is model
    assert refunds == (model in LOST and not on_air)
