"""The database poller of the inbound benchmark (a thread): when each reply and each status
change became visible in the database."""

from __future__ import annotations

import threading
import time

import psycopg
from inbound_setup import MESSAGE_PREFIX  # bench/ is on sys.path when run as a script

_VISIBLE = """
    SELECT h.id, m.direction, h.status, m.packet_id, m.id::text,
           extract(epoch FROM m.created_at)::float8, m.user_id IS NOT NULL
    FROM message_status_history h JOIN messages m ON m.id = h.message_id
    WHERE h.id > %s AND NOT h.note ORDER BY h.id LIMIT 20000"""


class Poller:
    """When did each reply and each status change become visible in the database?

    History ids follow commit order (writers hold an advisory lock until they commit), so
    ``id > last`` misses nothing. A row first seen by a query was committed before that query
    started: ``seen`` is the start of the first query that returned it, at most one interval
    after the commit (plus the query's own time)."""

    def __init__(self, db_url: str, interval: float) -> None:
        self._conn = psycopg.connect(db_url, autocommit=True, connect_timeout=5,
                                     prepare_threshold=None)
        # The tables grow faster than their statistics: with stale ones the planner picks a
        # hash join over all messages (hundreds of ms per poll). Index lookups, always.
        for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
            self._conn.execute(f"SET {setting} = off")
        self._conn.execute("SET max_parallel_workers_per_gather = 0")
        self._interval = interval
        self._last = 0
        self.replies: dict[int, tuple[float, float, bool]] = {}  # seq -> (seen, created, owned)
        self.changes: dict[tuple[int, str], float] = {}  # (message, status) -> seen
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.durations: list[float] = []  # of each poll, s: the granularity actually had

    def run(self, deadline: float) -> None:
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                rows = self._conn.execute(_VISIBLE, (self._last,)).fetchall()
                self.durations.append(time.monotonic() - started)
                for hid, direction, status, packet_id, message_id, created, owned in rows:
                    if direction == "inbound":
                        self.replies.setdefault(packet_id, (started, created, owned))
                    elif message_id.startswith(MESSAGE_PREFIX):
                        number = int(message_id[len(MESSAGE_PREFIX):], 16)
                        self.changes.setdefault((number, status), started)
                    self._last = hid
                if len(rows) < 20000:
                    self.stop.wait(max(0.0, self._interval - (time.monotonic() - started)))
        except BaseException as exc:  # reported by the bench, which then stops
            self.error = exc
        finally:
            self._conn.close()
