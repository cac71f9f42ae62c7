"""Examples for ``kosmo.delivery``: one test (or table) per rule of the delivery state machine."""

from __future__ import annotations

import pytest

from kosmo.delivery import FINAL, Entry, InvalidReport, Report, Status, apply, cancel

S = Status


def run(status: Status, *reports: Report) -> tuple[Status, list[Entry], int]:
    """Apply ``reports`` in order; the final status, the history they added and the refunds."""
    history: list[Entry] = []
    refunds = 0
    for report in reports:
        transition = apply(status, report)
        assert transition.before is status
        status = transition.after
        history.extend(transition.history)
        refunds += transition.refund
    return status, history, refunds


@pytest.mark.parametrize(
    ("before", "report", "after"),
    [
        (S.PENDING, S.QUEUED, S.QUEUED),
        (S.PENDING, S.TRANSMITTED, S.TRANSMITTED),
        (S.QUEUED, S.TRANSMITTED, S.TRANSMITTED),
        (S.TRANSMITTED, S.DELIVERED, S.DELIVERED),
    ],
)
def test_reports_move_a_message_forward(before: Status, report: Status, after: Status) -> None:
    transition = apply(before, Report(report))
    assert transition.changed
    assert (transition.after, transition.history, transition.refund) == (after, (Entry(after),),
                                                                         False)


@pytest.mark.parametrize(
    ("before", "report"),
    [
        (S.QUEUED, S.QUEUED),
        (S.TRANSMITTED, S.QUEUED),
        (S.TRANSMITTED, S.TRANSMITTED),
        (S.DELIVERED, S.QUEUED),
        (S.DELIVERED, S.TRANSMITTED),
        (S.DELIVERED, S.DELIVERED),
        (S.DELIVERED, S.FAILED),
        (S.FAILED, S.QUEUED),
        (S.FAILED, S.DELIVERED),
        (S.FAILED, S.FAILED),
        (S.FAILED, S.EXPIRED),
    ],
)
def test_backward_and_repeated_reports_change_nothing(before: Status, report: Status) -> None:
    transition = apply(before, Report(report, "late"))
    assert not transition.changed
    assert (transition.after, transition.history, transition.refund) == (before, (), False)


@pytest.mark.parametrize("before", [S.PENDING, S.QUEUED])
def test_delivered_before_transmitted_infers_transmitted(before: Status) -> None:
    transition = apply(before, Report(S.DELIVERED))
    assert transition.after is S.DELIVERED
    assert transition.history == (Entry(S.TRANSMITTED, "inferred"), Entry(S.DELIVERED))
    assert not transition.refund


def test_delivered_after_transmitted_infers_nothing() -> None:
    assert apply(S.TRANSMITTED, Report(S.DELIVERED)).history == (Entry(S.DELIVERED),)


def test_duplicate_and_late_reports_are_idempotent() -> None:
    q, t, d = Report(S.QUEUED), Report(S.TRANSMITTED), Report(S.DELIVERED)
    status, history, refunds = run(S.PENDING, q, q, t, q, t, d, t, d, q)
    assert (status, history, refunds) == (S.DELIVERED, [Entry(q.status), Entry(t.status),
                                                        Entry(d.status)], 0)


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (Report(S.FAILED), "unknown"),
        (Report(S.FAILED, ""), "unknown"),
        (Report(S.FAILED, "no ack"), "no ack"),
        (Report(S.EXPIRED, "ttl 600 s"), "ttl 600 s"),
    ],
)
def test_failed_and_expired_carry_a_reason(report: Report, reason: str) -> None:
    assert apply(S.QUEUED, report).history == (Entry(report.status, reason),)


def test_expired_without_a_reason_still_carries_one() -> None:
    (entry,) = apply(S.PENDING, Report(S.EXPIRED)).history
    assert entry.status is S.EXPIRED
    assert entry.reason


def test_transmitted_then_failed_is_not_refunded() -> None:
    transition = apply(S.TRANSMITTED, Report(S.FAILED, "no ack"))
    assert (transition.after, transition.refund) == (S.FAILED, False)
    assert transition.history == (Entry(S.FAILED, "no ack"),)


@pytest.mark.parametrize("before", [S.PENDING, S.QUEUED])
@pytest.mark.parametrize("final", [S.FAILED, S.EXPIRED])
def test_a_message_that_never_reached_the_air_is_refunded(before: Status, final: Status) -> None:
    transition = apply(before, Report(final, "why"))
    assert (transition.after, transition.refund) == (final, True)


@pytest.mark.parametrize(
    ("reports", "final"),
    [
        ([S.FAILED, S.FAILED, S.EXPIRED, S.QUEUED, S.TRANSMITTED, S.DELIVERED], S.FAILED),
        ([S.QUEUED, S.EXPIRED, S.EXPIRED, S.FAILED, S.TRANSMITTED], S.EXPIRED),
    ],
)
def test_the_refund_happens_exactly_once(reports: list[Status], final: Status) -> None:
    status, _, refunds = run(S.PENDING, *(Report(report) for report in reports))
    assert (status, refunds) == (final, 1)


@pytest.mark.parametrize("report", [S.QUEUED, S.TRANSMITTED, S.DELIVERED, S.FAILED, S.EXPIRED])
def test_a_report_for_an_expired_message_is_only_a_note(report: Status) -> None:
    transition = apply(S.EXPIRED, Report(report, "late"))
    assert (transition.after, transition.refund) == (S.EXPIRED, False)
    assert transition.history == (Entry(report, "late", note=True),)


@pytest.mark.parametrize("before", [S.TRANSMITTED, S.DELIVERED])
def test_expired_does_not_apply_once_transmitted(before: Status) -> None:
    transition = apply(before, Report(S.EXPIRED, "ttl"))
    assert (transition.after, transition.history, transition.refund) == (before, (), False)


@pytest.mark.parametrize("status", [S.PENDING, S.RECEIVED])
def test_pending_and_received_are_not_reports(status: Status) -> None:
    with pytest.raises(InvalidReport):
        Report(status)


def test_an_inbound_message_takes_no_reports() -> None:
    with pytest.raises(InvalidReport):
        apply(S.RECEIVED, Report(S.QUEUED))


# A status read back from the database arrives as a plain ``str``: it must behave the same.


def test_a_plain_string_expired_status_still_records_the_note() -> None:
    expired: Status = "expired"  # type: ignore[assignment]
    assert apply(expired, Report(S.QUEUED)) == apply(S.EXPIRED, Report(S.QUEUED))


def test_a_plain_string_report_is_applied_like_the_enum() -> None:
    failed: Status = "failed"  # type: ignore[assignment]
    assert apply(S.PENDING, Report(failed)) == apply(S.PENDING, Report(S.FAILED))


def test_a_waiting_message_is_canceled_and_refunded() -> None:
    transition = cancel(S.PENDING, handed=False)
    assert (transition.before, transition.after, transition.refund) == (S.PENDING, S.CANCELED,
                                                                        True)
    assert transition.history == (Entry(S.CANCELED, "canceled"),)
    assert S.CANCELED in FINAL


@pytest.mark.parametrize(("before", "handed"), [
    (S.PENDING, True), *((status, handed) for status in (S.QUEUED, S.TRANSMITTED, S.DELIVERED,
                                                         S.FAILED, S.EXPIRED, S.CANCELED)
                         for handed in (False, True))])
def test_only_a_waiting_message_can_be_canceled(before: Status, handed: bool) -> None:
    transition = cancel(before, handed)
    assert not transition.changed
    assert (transition.after, transition.history, transition.refund) == (before, (), False)


@pytest.mark.parametrize("report", [S.QUEUED, S.TRANSMITTED, S.DELIVERED, S.FAILED, S.EXPIRED])
def test_a_report_for_a_canceled_message_is_only_a_note(report: Status) -> None:
    transition = apply(S.CANCELED, Report(report, "late"))
    assert (transition.after, transition.refund) == (S.CANCELED, False)
    assert [(e.status, e.note) for e in transition.history] == [(report, True)]


def test_canceled_is_not_a_report() -> None:
    with pytest.raises(InvalidReport):
        Report(S.CANCELED)
