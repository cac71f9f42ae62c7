"""The PostgreSQL advisory lock keys, in one place: two concerns that shared a key would
serialize each other's transactions, and a try-lock of one would fail while the other runs.

- ``MIGRATION``: a session lock over a whole ``kosmo migrate`` (kosmo/migrate.py).
- ``EVENT_ORDER``: taken by every transaction that writes history, just before the insert,
  until its commit: history ids follow commit order (kosmo/events.py).
- ``HAND_OVER``: one hand-over at a time across gateway processes: claims, estimates and
  adoption try it and skip their round when it is taken; a process leaving waits for it
  (kosmo/dispatch_store.py, kosmo/process_store.py). A claim writes no history, so it never
  needs ``EVENT_ORDER``.
"""

from __future__ import annotations

MIGRATION = 0x6B6F736D6F  # "kosmo"
EVENT_ORDER = 0x6B6F736D6F_01
HAND_OVER = 0x6B6F736D6F_02
