"""The bridge's local queue and outbox: one SQLite file in the state directory.

Rules:
- Synchronous and blocking, one connection; the daemon calls it from worker threads one call at
  a time (a CapacityLimiter of 1). WAL journal, ``synchronous=FULL``: a call that returned has
  reached the disk, so an MQTT message is acknowledged to the broker only after ``accept``.
- One bridge per state directory: an exclusive ``flock`` on ``lock`` is held while it is open.
- ``outbound`` is keyed by ``message_id``: a message is stored once however often it arrives,
  and its row moves only forward, ``queued -> sending -> handed -> transmitted -> done``, except
  that a text the radio refused without sending may go back to ``queued``: the lifecycle of
  bridge/rows.py, which ``apply`` enforces (the states are its ``RowState``, passed to SQL as
  parameters). A row past ``queued`` is never handed to the radio again (see bridge/sender.py
  for the at-most-once rule). The packet id is chosen before the hand-over and committed with
  ``sending``; a row ``sending`` without one was written by an older bridge. Finished rows are
  kept until a day after the message expired, so a late copy is still recognised (and after
  that it would be reported expired, never sent).
- ``outbox`` holds status reports and received texts until the broker acknowledged them.
  A row's state change and the report it causes are written in one transaction; a change to a
  row already ``done`` is dropped with its report, so each message has one final report.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bridge import rows
from bridge.rows import RowState
from kosmo.airtime import MAX_TEXT_BYTES
from kosmo.wire import Outbound

OutboxItem = tuple[str, bytes]  # (topic, payload)
# (message_id, status, reason, packet_id) -> the report to publish
Reporter = Callable[[str, str, str | None, int | None], OutboxItem]

DB_NAME = "bridge.sqlite3"
KEEP_AFTER_EXPIRY = 86400.0
_SCHEMA_VERSION = 1
# DDL takes no parameters: the states are written in from RowState, as an earlier bridge wrote
# them.
_SCHEMA = f"""
CREATE TABLE outbound (
    message_id  TEXT PRIMARY KEY,
    target      TEXT NOT NULL,
    text        TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    received_at REAL NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ({", ".join(f"'{state}'" for state in RowState)})),
    attempts    INTEGER NOT NULL DEFAULT 0,
    packet_id   INTEGER,
    sent_at     REAL,  -- wall clock at the start of the last hand-over
    airtime     REAL,  -- its airtime, radio seconds
    outcome     TEXT   -- how it ended, for operators
);
CREATE INDEX outbound_open ON outbound (state) WHERE state <> '{RowState.DONE}';
CREATE INDEX outbound_sent ON outbound (sent_at) WHERE sent_at IS NOT NULL;
CREATE TABLE outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "message_id, target, text, expires_at, state, attempts, packet_id"


class StoreLocked(Exception):
    """Another bridge holds the state directory."""


@dataclass(frozen=True)
class Row:
    message_id: str
    target: str
    text: str
    expires_at: float
    state: RowState
    attempts: int
    packet_id: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", RowState(self.state))


@dataclass(frozen=True)
class Change:
    """A row's new state and the reports it causes, written together."""

    message_id: str
    state: RowState
    outcome: str | None = None
    reports: tuple[OutboxItem, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", RowState(self.state))


class Store:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self._lock = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise StoreLocked(f"another bridge is using the state directory {state_dir}") from None
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            with self._tx() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        elif version != _SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema version {version}; this bridge "
                               f"knows {_SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()
        os.close(self._lock)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- intake -----------------------------------------------------------------------------

    def accept(self, messages: Sequence[Outbound], rejected: Sequence[tuple[str, str]],
               now: float, report: Reporter) -> int:
        """Store new messages (``queued``) and answer at once those that are expired, too long
        or unreadable (``rejected``: message id, reason). Duplicates change nothing.
        Returns how many were queued."""
        queued = 0
        with self._tx() as db:
            for m in messages:
                reason = ("expired" if m.expires_at <= now
                          else "TOO_LARGE" if len(m.text.encode()) > MAX_TEXT_BYTES else None)
                cur = db.execute(
                    "INSERT OR IGNORE INTO outbound (message_id, target, text, expires_at,"
                    " received_at, state, outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (m.message_id, m.target, m.text, m.expires_at, now,
                     RowState.DONE if reason else RowState.QUEUED,
                     f"failed: {reason}" if reason else None))
                if cur.rowcount and reason:
                    self._outbox(db, [report(m.message_id, "failed", reason, None)])
                elif cur.rowcount:
                    queued += 1
            for message_id, reason in rejected:
                cur = db.execute(
                    "INSERT OR IGNORE INTO outbound (message_id, target, text, expires_at,"
                    " received_at, state, outcome) VALUES (?, '', '', ?, ?, ?, ?)",
                    (message_id, now, now, RowState.DONE, f"failed: invalid_payload: {reason}"))
                if cur.rowcount:
                    self._outbox(db, [report(message_id, "failed", "invalid_payload", None)])
        return queued

    def expire_queued(self, now: float, report: Reporter) -> int:
        """Answer ``failed``/``expired`` for queued messages past their expiry."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT message_id FROM outbound WHERE state = ? AND expires_at <= ?",
                (RowState.QUEUED, now))]
            for message_id in ids:
                db.execute("UPDATE outbound SET state = ?, outcome = 'failed: expired' "
                           "WHERE message_id = ?", (RowState.DONE, message_id))
                self._outbox(db, [report(message_id, "failed", "expired", None)])
        return len(ids)

    # --- sending ----------------------------------------------------------------------------

    def next_queued(self) -> Row | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM outbound WHERE state = ? "
                               "ORDER BY rowid LIMIT 1", (RowState.QUEUED,)).fetchone()
        return None if row is None else Row(*row)

    def begin_send(self, message_id: str, packet_id: int, at: float, airtime: float) -> None:
        """Committed before the hand-over, with the packet id the text will go as: from here
        on the message is never handed again, and a restart knows its routing results."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE outbound SET state = ?, attempts = attempts + 1, sent_at = ?,"
                " airtime = ?, packet_id = ? WHERE message_id = ? AND state = ?",
                (RowState.SENDING, at, airtime, packet_id, message_id, RowState.QUEUED))
            if cur.rowcount != 1:
                raise RuntimeError(f"message {message_id} is not queued")

    def handed(self, message_id: str, packet_id: int) -> None:
        """The radio took it, as ``packet_id`` (the id chosen at ``begin_send`` unless the
        library sent it under another)."""
        with self._tx() as db:
            db.execute("UPDATE outbound SET state = ?, packet_id = ? "
                       "WHERE message_id = ? AND state = ?",
                       (RowState.HANDED, packet_id, message_id, RowState.SENDING))

    def apply(self, changes: Sequence[Change]) -> None:
        """Move open rows on and queue their reports. A change to a finished row (or an unknown
        one) writes nothing: a message gets one final report, whatever comes later. A move the
        lifecycle does not allow (bridge/rows.py) raises ``IllegalMove`` and writes nothing."""
        with self._tx() as db:
            for change in changes:
                found = db.execute("SELECT state FROM outbound WHERE message_id = ?",
                                   (change.message_id,)).fetchone()
                if found is None or not rows.applies(RowState(found[0]), change.state):
                    continue
                db.execute("UPDATE outbound SET state = ?, outcome = COALESCE(?, outcome) "
                           "WHERE message_id = ?",
                           (change.state, change.outcome, change.message_id))
                self._outbox(db, change.reports)

    def open_flights(self) -> list[Row]:
        """Rows handed (or being handed) to the radio and not finished, oldest first."""
        return [Row(*r) for r in self._db.execute(
            f"SELECT {_COLUMNS} FROM outbound WHERE state IN (?, ?, ?) ORDER BY rowid",
            (RowState.SENDING, RowState.HANDED, RowState.TRANSMITTED))]

    def recent_sends(self, since: float) -> list[tuple[float, float]]:
        """(wall-clock start, airtime) of hand-overs after ``since``."""
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT sent_at, airtime FROM outbound WHERE sent_at > ? AND airtime IS NOT NULL",
            (since,))]

    def queued_count(self) -> int:
        return int(self._db.execute(
            "SELECT COUNT(*) FROM outbound WHERE state = ?", (RowState.QUEUED,)).fetchone()[0])

    def queued_sizes(self, limit: int) -> tuple[int, list[int]]:
        """How many messages wait, and the UTF-8 sizes of the first ``limit`` of them."""
        count = self.queued_count()
        sizes = [r[0] for r in self._db.execute(
            "SELECT length(CAST(text AS BLOB)) FROM outbound WHERE state = ? "
            "ORDER BY rowid LIMIT ?", (RowState.QUEUED, limit))]
        return count, sizes

    def prune(self, now: float) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM outbound WHERE state = ? AND expires_at < ?",
                              (RowState.DONE, now - KEEP_AFTER_EXPIRY)).rowcount

    # --- outbox -----------------------------------------------------------------------------

    def add_outbox(self, items: Sequence[OutboxItem]) -> None:
        with self._tx() as db:
            self._outbox(db, items)

    def outbox_head(self, limit: int) -> list[tuple[int, str, bytes]]:
        return [(r[0], r[1], bytes(r[2])) for r in self._db.execute(
            "SELECT id, topic, payload FROM outbox ORDER BY id LIMIT ?", (limit,))]

    def outbox_done(self, ids: Sequence[int]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def outbox_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @staticmethod
    def _outbox(db: sqlite3.Connection, items: Sequence[OutboxItem]) -> None:
        db.executemany("INSERT INTO outbox (topic, payload) VALUES (?, ?)", items)
