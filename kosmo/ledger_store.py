"""The ledger's SQL: check, debit and store sends; apply delivery reports, cancels and refunds.

Rules:
- Everything here runs inside the caller's transaction (``Database.run``): a batch of sends
  (or of reports) commits together or not at all, so a message is never stored without its
  debit nor debited without its row. With ``commit`` (the ledger's lanes), ``accept_sends``
  and ``apply_reports`` commit it themselves, in the same pipelined round trip as their last
  writes (the caller's commit then has nothing left to do), and return only once committed.
- The debit is a conditional upsert on ``quota_usage`` (``used < limit``). PostgreSQL re-checks
  the condition on the locked row, so the rule stays exact when several gateway processes share
  one database: no check-then-write in process memory. Debits and refunds lock usage rows in
  user order, so a sends batch and a reports or cancel batch may commit concurrently.
- A refund is guarded by ``messages.charged``: the flag is cleared and the usage decremented in
  one transaction, so no message is refunded twice, whatever the reports.
- History rows are appended through ``record_history``, which assigns their ids (event ids)
  in commit order.
- A cancel locks the message's row (``FOR UPDATE``) and decides with ``delivery.cancel`` on
  what it reads there: the dispatcher's claim (``... WHERE status = 'pending' AND handed_at IS
  NULL``) takes the same row lock, so of a cancel and a claim racing exactly one wins: a claim
  that waited finds the row canceled and skips it, a cancel that waited finds it handed.
- A send with an Idempotency-Key claim is stored only while its claim still holds (its row
  locked first, ``kosmo.idempotency.hold``), and its answer is stored with it (``complete``):
  a message and its stored answer commit together or not at all.
- Subscription and plan rules live in ``kosmo.domain``; state transitions in ``kosmo.delivery``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from uuid import UUID

import psycopg

from kosmo import delivery, idempotency
from kosmo.db import default_plans, generic_plans
from kosmo.delivery import Status
from kosmo.domain import Quota, Refusal, Scope, Subscription, check_scope
from kosmo.events import CHANNEL, Event, lock_event_order, make_event
from kosmo.messages import NewMessage, StatusReport
from kosmo.views import Direction, MessageView


@dataclass(frozen=True)
class Accepted:
    message: NewMessage
    quota: Quota


@dataclass(frozen=True)
class Refused:
    refusal: Refusal
    quota: Quota | None = None
    retry_after: float | None = None  # seconds, for a refusal that passes (mesh-congested)


@dataclass(frozen=True)
class CancelRequest:
    user_id: UUID
    message_id: UUID


@dataclass(frozen=True)
class Canceled:
    message: MessageView  # as it is now: canceled


class CancelRefusal(enum.StrEnum):
    """Why a cancel changed nothing; each value is the last segment of a problem type URI."""

    NOT_FOUND = "not-found"  # unknown, inbound, or another user's
    ALREADY_ON_AIR = "already-on-air"  # handed to a bridge, or finished


@dataclass(frozen=True)
class Applied:
    """What a report did. ``message`` is None when the message id is unknown."""

    report: StatusReport
    transition: delivery.Transition | None
    user_id: UUID | None = None
    node_id: str | None = None
    since: datetime | None = None  # when the message entered ``transition.before``


# One round trip: each user's current subscription (the active one if any, else the latest),
# the usage row of every active subscription's period locked (created where missing, locked in
# one order so concurrent batches of several processes cannot deadlock) with its count, and
# which of the batch's nodes are on the user's whitelist.
_CHECK_AND_LOCK = """
WITH subs AS (
    SELECT DISTINCT ON (s.user_id)
           s.user_id, p.code, p.scope, s.status, s.current_period_start AS period_start,
           s.current_period_end AS period_end,
           COALESCE(s.quota_override, p.monthly_quota) AS quota_limit,
           (s.status IN ('active', 'trialing') AND s.current_period_start <= %(now)s
            AND %(now)s < s.current_period_end) AS active,
           p.airtime_weight AS weight
    FROM subscriptions s JOIN plans p ON p.code = s.plan_code
    WHERE s.user_id = ANY(%(users)s)
    ORDER BY s.user_id, 8 DESC, s.current_period_end DESC
), locked AS (
    INSERT INTO quota_usage AS q (user_id, period_start, period_end, used)
    SELECT user_id, period_start, period_end, 0 FROM subs
    WHERE active AND scope <> 'none' ORDER BY user_id
    ON CONFLICT (user_id, period_start) DO UPDATE SET used = q.used
    RETURNING user_id, used
)
SELECT subs.user_id, subs.code, subs.scope, subs.status, subs.period_start, subs.period_end,
       subs.quota_limit, locked.used,
       ARRAY(SELECT w.node_id FROM node_whitelist w
             WHERE w.user_id = subs.user_id AND w.node_id = ANY(%(nodes)s)) AS whitelisted,
       subs.weight
FROM subs LEFT JOIN locked USING (user_id)
"""

# The usage counts as debited, and the messages, in one statement.
_DEBIT_AND_INSERT = """
WITH usage AS (
    UPDATE quota_usage AS q SET used = t.used
    FROM unnest(%b::uuid[], %b::timestamptz[], %b::integer[]) AS t (u, s, used)
    WHERE q.user_id = t.u AND q.period_start = t.s
)
INSERT INTO messages (id, direction, user_id, node_id, text, status, created_at, updated_at,
                      expires_at, debit_period_start, charged, queue_position,
                      estimated_transmit_at)
SELECT i, 'outbound', u, n, t, 'pending', c, c, e, p, true, q, w
FROM unnest(%b::uuid[], %b::uuid[], %b::text[], %b::text[], %b::timestamptz[],
            %b::timestamptz[], %b::timestamptz[], %b::integer[], %b::timestamptz[])
     AS x (i, u, n, t, c, e, p, q, w)
"""

_INSERT_HISTORY = """
INSERT INTO message_status_history (message_id, user_id, status, reason, note, at, bridge_id,
                                    queue_position, estimated_transmit_at)
SELECT m, u, s, r, n, a, b, q, e
FROM unnest(%b::uuid[], %b::uuid[], %b::text[], %b::text[], %b::boolean[], %b::timestamptz[],
            %b::text[], %b::integer[], %b::timestamptz[])
     WITH ORDINALITY AS x (m, u, s, r, n, a, b, q, e, ord)
ORDER BY ord
RETURNING id
"""
# The same insert, and a notification on ``kosmo.events.CHANNEL`` carrying the largest id it
# wrote: PostgreSQL delivers it at commit, in commit order, to every listening gateway process.
_INSERT_HISTORY_AND_NOTIFY = f"""
WITH written AS ({_INSERT_HISTORY}),
told AS (SELECT pg_notify('{CHANNEL}', max(id)::text) FROM written)
SELECT id FROM written, told
"""

# Give back one message each to the period it was debited in, once per message: the
# ``charged`` flag is cleared where still set, and only those rows are counted. The usage rows
# are locked in user order first, the order in which a batch of sends locks them, so a refund
# and a debit of the same users never wait for each other in a circle.
_REFUND = """
WITH refunded AS (
    UPDATE messages SET charged = false WHERE id = ANY(%s) AND charged
    RETURNING user_id, debit_period_start AS period_start
), owed AS (
    SELECT user_id, period_start, count(*) AS n FROM refunded GROUP BY user_id, period_start
), locked AS MATERIALIZED (
    SELECT q.user_id, q.period_start FROM quota_usage q JOIN owed USING (user_id, period_start)
    ORDER BY q.user_id, q.period_start FOR UPDATE OF q
)
UPDATE quota_usage AS q SET used = q.used - owed.n
FROM owed JOIN locked USING (user_id, period_start)
WHERE q.user_id = owed.user_id AND q.period_start = owed.period_start
"""

# A message that left ``pending`` no longer waits: its queue position goes.
_UPDATE_STATUS = """
UPDATE messages AS m SET status = x.s, reason = x.r, updated_at = x.a,
       packet_id = COALESCE(x.p, m.packet_id), bridge_id = COALESCE(x.b, m.bridge_id),
       queue_position = CASE WHEN x.s = 'pending' THEN m.queue_position END
FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::timestamptz[], %b::bigint[], %b::text[])
     AS x (i, s, r, a, p, b)
WHERE m.id = x.i
"""


@dataclass(frozen=True)
class HistoryRow:
    """One status-history line to write: the message as it was at that line (its status, reason
    and ``updated_at`` are the line's), which is also what the line's event says."""

    user_id: UUID | None
    message: MessageView
    note: bool = False


def record_history(conn: psycopg.Connection, rows: list[HistoryRow], *,
                   commit: bool = False) -> list[Event]:
    """Append history rows (ids in commit order) and notify listeners of the largest id at
    commit; return the events of those a user sees. With ``commit`` (in pipeline mode), the
    transaction commits in the same round trip as the insert, so the event-order lock is held
    for no round trip of its own."""
    if not rows:
        if commit:
            conn.commit()
        return []
    lock_event_order(conn)
    written = conn.execute(_INSERT_HISTORY_AND_NOTIFY, (
        [r.message.message_id for r in rows], [r.user_id for r in rows],
        [r.message.status.value for r in rows], [r.message.reason for r in rows],
        [r.note for r in rows], [r.message.updated_at for r in rows],
        [r.message.bridge_id for r in rows], [r.message.queue_position for r in rows],
        [r.message.estimated_transmit_at for r in rows]))
    if commit:
        conn.commit()  # queued behind the insert; its sync fetches the insert's rows too
    ids = sorted(r[0] for r in written.fetchall())
    # One statement assigns ids in its row order, so the ascending ids follow ``rows``.
    return [make_event(history_id, row.user_id, row.message)
            for history_id, row in zip(ids, rows, strict=True)
            if row.user_id is not None and not row.note]


def accept_sends(conn: psycopg.Connection, sends: list[NewMessage], now: datetime,
                 claims: Sequence[idempotency.Claim | None] = (), *, commit: bool = False
                 ) -> tuple[list[Accepted | Refused], list[Event]]:
    """Check, debit and store each send, in order; one result per send, and the events.
    ``claims``: each send's Idempotency-Key claim (or None); empty when none has one. With
    ``commit``, the transaction commits before this returns, pipelined with the writes.

    Two round trips whatever the batch size, the commit included: the subscriptions are read
    and the usage rows locked at once, the debits decided here in order, and the writes
    pipelined with the commit. One more, first, when a send has a claim: its row is locked.
    """
    if not sends:
        return [], []
    keyed = [c for c in claims if c is not None]
    held = idempotency.hold(conn, keyed) if keyed else set()
    # The check looks rows up by user only, the writes insert from arrays: planned once
    # (kosmo.db). Left to choose, PostgreSQL planned the check and the usage update again at
    # every run (0.3 and 0.15 ms).
    with conn.pipeline():  # the setting and the check in one round trip
        generic_plans(conn)
        checked = conn.execute(_CHECK_AND_LOCK, {
            "users": list({s.user_id for s in sends}),
            "nodes": list({s.node_id for s in sends}), "now": now})
    rows = checked.fetchall()
    subs = {row[0]: Subscription(user_id=row[0], plan=row[1], scope=Scope(row[2]),
                                 status=row[3], period_start=row[4], period_end=row[5],
                                 quota_limit=row[6]) for row in rows}
    used = {row[0]: int(row[7]) for row in rows if row[7] is not None}
    weights = {row[0]: int(row[9]) for row in rows}
    whitelisted = {(row[0], node) for row in rows for node in row[8]}
    debited = dict(used)
    results: list[Accepted | Refused] = []
    stored: list[NewMessage] = []
    answers: list[tuple[idempotency.Claim, idempotency.Answer, UUID]] = []
    for index, send in enumerate(sends):
        claim = claims[index] if claims else None
        if claim is not None and claim not in held:
            results.append(Refused(Refusal.IDEMPOTENCY_KEY_IN_FLIGHT))
            continue
        sub = subs.get(send.user_id)
        refusal = check_scope(sub, (send.user_id, send.node_id) in whitelisted, now)
        if refusal is not None or sub is None:
            results.append(Refused(refusal or Refusal.SUBSCRIPTION_INACTIVE))
            continue
        count = debited[send.user_id]
        if sub.quota_limit is not None and count >= sub.quota_limit:
            results.append(Refused(Refusal.QUOTA_EXCEEDED,
                                   Quota(count, sub.quota_limit, sub.period_end)))
            continue
        debited[send.user_id] = count + 1
        send = replace(send, weight=weights[send.user_id])  # its share of a radio, for the queue
        quota = Quota(count + 1, sub.quota_limit, sub.period_end)
        results.append(Accepted(send, quota))
        stored.append(send)
        if claim is not None:
            answers.append((claim, idempotency.created_answer(send, quota), send.message_id))
    if not stored:
        if not commit:
            default_plans(conn)  # the caller's transaction goes on
        return results, []
    changed = [u for u in debited if debited[u] != used[u]]
    with conn.pipeline():
        conn.execute(_DEBIT_AND_INSERT, (
            changed, [subs[u].period_start for u in changed], [debited[u] for u in changed],
            [m.message_id for m in stored], [m.user_id for m in stored],
            [m.node_id for m in stored], [m.text for m in stored],
            [m.created_at for m in stored], [m.expires_at for m in stored],
            [subs[m.user_id].period_start for m in stored],
            [m.queue_position for m in stored], [m.estimated_transmit_at for m in stored]))
        # Only the history insert (from arrays, no lookup) may follow under generic plans:
        # the answers' update looks keys up in a table that grows with the traffic, and a
        # caller's transaction that goes on gets its own choice back.
        if answers or not commit:
            default_plans(conn)
        idempotency.complete(conn, answers)
        events = record_history(conn, [HistoryRow(m.user_id, MessageView.accepted(m))
                                       for m in stored], commit=commit)
    return results, events


def apply_reports(conn: psycopg.Connection, reports: list[StatusReport], *,
                  commit: bool = False) -> tuple[list[Applied], list[Event]]:
    """Run each report through the delivery state machine, in order; refund where it says.
    With ``commit``, the transaction commits before this returns, pipelined with the writes."""
    if not reports:
        return [], []
    rows = conn.execute(
        "SELECT id, status, user_id, node_id, text, created_at, bridge_id,"
        " estimated_transmit_at, updated_at FROM messages"
        " WHERE id = ANY(%s) AND direction = 'outbound' ORDER BY id FOR UPDATE",
        (list({r.message_id for r in reports}),)).fetchall()
    found = {row[0]: row for row in rows}
    status = {row[0]: Status(row[1]) for row in rows}
    bridge: dict[UUID, str | None] = {row[0]: row[6] for row in rows}
    entered = {row[0]: row[8] for row in rows}  # when each entered its status
    final: dict[UUID, tuple[str, str | None, datetime, int | None, str | None]] = {}
    applied: list[Applied] = []
    history: list[HistoryRow] = []
    refunds: list[UUID] = []
    for item in reports:
        row = found.get(item.message_id)
        if row is None:
            applied.append(Applied(item, None))
            continue
        transition = delivery.apply(status[item.message_id], item.report)
        owner, node_id, text, created_at, _, estimated, _ = row[2:]
        since = entered[item.message_id]
        if transition.changed and item.bridge_id is not None:
            bridge[item.message_id] = item.bridge_id
        history.extend(
            HistoryRow(owner, MessageView(item.message_id, Direction.OUTBOUND, node_id, text,
                                          e.status, created_at, item.at, e.reason,
                                          bridge[item.message_id],
                                          estimated_transmit_at=estimated), e.note)
            for e in transition.history)
        if transition.changed:
            status[item.message_id] = transition.after
            entered[item.message_id] = item.at
            before = final.get(item.message_id)
            final[item.message_id] = (
                transition.after.value, transition.history[-1].reason, item.at,
                item.packet_id if item.packet_id is not None else before and before[3],
                item.bridge_id if item.bridge_id is not None else before and before[4])
        if transition.refund:
            refunds.append(item.message_id)
        applied.append(Applied(item, transition, row[2], row[3], since))
    with conn.pipeline():
        if all(r.report.status is Status.QUEUED for r in reports):
            # Losing a ``queued`` mark in a crash is harmless (the outbox publishes the
            # message again and consumers dedupe), so these commits need not wait for disk.
            conn.execute("SET LOCAL synchronous_commit = off")
        if final:
            ids = list(final)
            conn.execute(_UPDATE_STATUS, (
                ids, [final[i][0] for i in ids], [final[i][1] for i in ids],
                [final[i][2] for i in ids], [final[i][3] for i in ids],
                [final[i][4] for i in ids]))
        if refunds:
            conn.execute(_REFUND, (refunds,))
        events = record_history(conn, history, commit=commit)
    return applied, events


_CANCEL = """
UPDATE messages SET status = 'canceled', reason = %s, updated_at = %s, queue_position = NULL,
       estimated_transmit_at = NULL
WHERE id = ANY(%s)
"""


def cancel_messages(conn: psycopg.Connection, cancels: list[CancelRequest], now: datetime
                    ) -> tuple[list[Canceled | CancelRefusal], list[Event]]:
    """Cancel each waiting message asked for, in order; one result per request, the events."""
    if not cancels:
        return [], []
    rows = conn.execute(
        "SELECT id, user_id, status, handed_at IS NOT NULL, node_id, text, created_at"
        " FROM messages WHERE id = ANY(%s) AND direction = 'outbound' ORDER BY id FOR UPDATE",
        (list({c.message_id for c in cancels}),)).fetchall()
    found = {row[0]: row for row in rows}
    status = {row[0]: Status(row[2]) for row in rows}
    results: list[Canceled | CancelRefusal] = []
    history: list[HistoryRow] = []
    refunds: list[UUID] = []
    for item in cancels:
        row = found.get(item.message_id)
        if row is None or row[1] != item.user_id:
            results.append(CancelRefusal.NOT_FOUND)
            continue
        transition = delivery.cancel(status[item.message_id], handed=row[3])
        if not transition.changed:
            results.append(CancelRefusal.ALREADY_ON_AIR)
            continue
        status[item.message_id] = transition.after
        (entry,) = transition.history
        view = MessageView(item.message_id, Direction.OUTBOUND, row[4], row[5], entry.status,
                           row[6], now, entry.reason)
        results.append(Canceled(view))
        history.append(HistoryRow(item.user_id, view))
        if transition.refund:
            refunds.append(item.message_id)
    if history:
        with conn.pipeline():
            conn.execute(_CANCEL, (delivery.CANCELED_REASON, now,
                                   [h.message.message_id for h in history]))
            conn.execute(_REFUND, (refunds,))
            return results, record_history(conn, history)
    return results, []


def pending_messages(conn: psycopg.Connection, handed_before: datetime, process_id: UUID,
                     limit: int = 10_000) -> list[NewMessage]:
    """Outbound messages of the nodes ``process_id`` publishes, handed to a bridge (claimed)
    before ``handed_before`` but still ``pending``: the broker has not acknowledged their
    publish on that bridge's topic."""
    rows = conn.execute(
        "SELECT m.id, m.user_id, m.node_id, m.text, m.created_at, m.expires_at, m.bridge_id"
        " FROM messages m JOIN node_publishers p ON p.node_id = m.node_id"
        " WHERE p.process_id = %s AND m.status = 'pending' AND m.handed_at IS NOT NULL"
        " AND m.handed_at < %s AND m.direction = 'outbound'"
        " ORDER BY m.created_at, m.id LIMIT %s", (process_id, handed_before, limit)).fetchall()
    return [NewMessage(*row) for row in rows]


def expired_messages(conn: psycopg.Connection, now: datetime, limit: int = 1000) -> list[UUID]:
    """Outbound messages that did not reach the air before their ``expires_at``."""
    rows = conn.execute(
        "SELECT id FROM messages WHERE status IN ('pending', 'queued') AND expires_at <= %s"
        " ORDER BY expires_at LIMIT %s", (now, limit)).fetchall()
    return [row[0] for row in rows]


_UNACKED_OF_NODE = """
SELECT m.id, m.user_id, m.node_id, m.text, m.created_at, m.expires_at, m.bridge_id
FROM messages m JOIN node_publishers p ON p.node_id = m.node_id
WHERE p.node_id = %s AND p.process_id = %s
  AND m.status = 'pending' AND m.handed_at IS NOT NULL AND m.direction = 'outbound'
  AND (m.created_at, m.id) > (%s, %s)
ORDER BY m.created_at, m.id LIMIT %s
"""
_FIRST_KEY = (datetime.min.replace(tzinfo=UTC), UUID(int=0))  # before every message


def pending_for_node(conn: psycopg.Connection, node_id: str,
                     after: tuple[datetime, UUID] | None, limit: int,
                     process_id: UUID) -> list[NewMessage]:
    """A node's messages handed to a bridge and still ``pending``, in creation order, after
    the key (created_at, id) ``after`` (from the first when None); none unless ``process_id``
    publishes the node. Read through ``messages_pending``, whose entries are the messages
    still ``pending`` (waiting for a bridge, or handed and not yet acknowledged), never a
    node's history."""
    created, message_id = after or _FIRST_KEY
    rows = conn.execute(_UNACKED_OF_NODE,
                        (node_id, process_id, created, message_id, limit)).fetchall()
    return [NewMessage(*row) for row in rows]
