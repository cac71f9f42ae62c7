"""The lifecycle of a message's row in the bridge's queue (``outbound`` in bridge/store.py).
Sans-IO: no clock, no radio, no database.

Theory of operation
-------------------
A message from the broker gets one row, keyed by its message id, which moves only forward:

    queued -> sending -> handed -> transmitted -> done
       |         |         |                      ^
       +---------+---------+----------------------+

    sending, handed -> queued    only when our own radio refused the text without sending it

Rules:
- A row is born ``queued``, or ``done`` for a message answered at once (expired, too long for
  the radio, unreadable).
- ``queued -> sending`` is the only way to the radio: committed, with the packet id the text
  will go as, before the hand-over (the at-most-once rule, bridge/sender.py). ``sending ->
  handed`` once the library took the text.
- ``sending``, ``handed`` and ``transmitted`` move on by the radio's results for that packet
  id (bridge/tracking.py): to ``transmitted`` (a neighbour or relay heard it) or ``done``. A
  row found ``sending`` at a start moves on as a ``handed`` one does: its packet may be out.
- Back to ``queued`` only from ``sending`` or ``handed``, and only for a refusal by our own
  radio that means the text never went on air (RATE_LIMIT_EXCEEDED, DUTY_CYCLE_LIMIT); a row
  ``transmitted`` went on air and never goes back.
- ``queued -> done``: expired while waiting, or right before the hand-over.
- ``done`` is final: any later change of a ``done`` row changes nothing (so each message gets
  one final report). Any other move is a bug and raises ``IllegalMove``.
- The values are the strings stored in SQLite: a state directory written by an earlier bridge
  reads the same.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class RowState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    HANDED = "handed"
    TRANSMITTED = "transmitted"
    DONE = "done"


MOVES: Mapping[RowState, frozenset[RowState]] = {
    RowState.QUEUED: frozenset({RowState.SENDING, RowState.DONE}),
    RowState.SENDING: frozenset({RowState.HANDED, RowState.TRANSMITTED, RowState.DONE,
                                 RowState.QUEUED}),
    RowState.HANDED: frozenset({RowState.TRANSMITTED, RowState.DONE, RowState.QUEUED}),
    RowState.TRANSMITTED: frozenset({RowState.DONE}),
    RowState.DONE: frozenset(),
}


class IllegalMove(RuntimeError):
    """A row asked to move where its lifecycle does not go."""


def applies(before: RowState, after: RowState) -> bool:
    """Whether moving a row from ``before`` to ``after`` changes it: False for a ``done`` row
    (final), True for a legal move; ``IllegalMove`` for any other."""
    before, after = RowState(before), RowState(after)
    if before is RowState.DONE:
        return False
    if after not in MOVES[before]:
        raise IllegalMove(f"a row {before} cannot become {after}")
    return True
