"""The fair share of one radio: a weighted deficit round robin over users, by airtime. Pure: no
I/O, no clock, no Trio.

Theory of operation
-------------------
Each entry is a message waiting to be handed to one radio's bridge, with its airtime (``cost``,
seconds) and its user's plan weight. The queue decides which entry goes next, as the deficit
round robin of Shreedhar and Varghese, over users:

- The *active* users (those with entries waiting) form a list in the order they became active;
  a user that becomes active joins at the tail.
- When a user's turn comes, its deficit grows by ``quantum * weight``. It then hands out its
  head entries, one per ``pop()``, while the head's cost is at most its deficit, each taking its
  cost off the deficit. When the head costs more than what is left, the turn passes to the next
  user and this one moves to the tail, keeping what is left of its deficit for its next turn.
- A user whose queue empties leaves the list and its deficit returns to 0.
- Within a user: FIFO by ``(created_at, message_id)``. Entries may be pushed out of that order
  (loaded from the database); each is inserted in its place. Messages from one user to one node
  therefore leave in the order they were accepted.
- ``push`` with a weight other than the user's earlier entries: the latest weight applies, from
  the user's next turn.
- ``remove`` (cancel, reroute, expiry) takes one entry out and moves nothing else; removing a
  user's last entry makes the user inactive (deficit 0).
- When a whole round passes without any user able to send (costs above ``quantum * weight``),
  the rounds in which nobody could send are counted at once rather than one by one: the order
  is the same.

``order()`` and ``place()`` predict ``pop()`` exactly. To make that exact rather than nearly so,
costs and the quantum are counted in whole microseconds inside the queue (integer arithmetic:
the prediction sums what ``pop()`` subtracts). ``order()`` simulates, O(n). ``place()`` does
not: in the fixed cyclic order of turns, the entry of user t pushed now leaves in t's turn J,
the first whose accumulated allowance (deficit + J quanta) covers the sum of t's costs up to and
including it; every other user u has then had J turns (if before t in the list) or J - 1 (if
after), and has sent the longest prefix of its entries whose cost sum fits its own allowance
after those turns: a bisection in u's prefix sums. O(users * log(entries)).

The bound
---------
A user's turn ends with less deficit left than its head's cost, so less than the largest cost
``c_max``. Hence a user with nothing waiting who pushes an entry costing at most
``quantum * weight`` gets it out within one round: before it, every other active user u has at
most one turn, in which it hands out at most ``quantum * weight_u`` plus the deficit it carried
(< ``c_max``). The airtime ahead of the new entry is at most
``sum over the other active users u of (quantum * weight_u + c_max)``, however long their
backlogs. With ``quantum`` the largest cost (as the dispatcher sets it), every user sends at
least one text per round, and a user's airtime stays within ``quantum * weight + c_max`` of its
weighted share while all are backlogged.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

_MICROS = 1_000_000


def micros(seconds: float) -> int:
    """Airtime in whole microseconds, at least 1, as the queue counts it."""
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"airtime must be a positive finite number of seconds, not {seconds!r}")
    return max(1, round(seconds * _MICROS))


@dataclass(frozen=True)
class Entry:
    message_id: UUID
    user_id: UUID
    node_id: str
    created_at: datetime  # FIFO key within a user (ties: message_id)
    cost: float  # seconds of airtime of this text (> 0)
    weight: int  # the user's plan weight (>= 1): wanderer 1, guardian 2, sanctuary 4

    def __post_init__(self) -> None:
        micros(self.cost)
        if self.weight < 1:
            raise ValueError(f"weight must be at least 1, not {self.weight}")

    @property
    def key(self) -> tuple[datetime, UUID]:
        return (self.created_at, self.message_id)


@dataclass
class _User:
    """One user's waiting entries, in FIFO order, with their costs and lazy prefix sums."""

    weight: int
    entries: list[Entry] = field(default_factory=list)
    keys: list[tuple[datetime, UUID]] = field(default_factory=list)
    costs: list[int] = field(default_factory=list)
    # sums[i] - base = costs[0] + ... + costs[i]; None when an insert or removal in the middle
    # made it stale (rebuilt when place() needs it).
    sums: list[int] | None = field(default_factory=list)
    base: int = 0

    def insert(self, entry: Entry) -> None:
        cost = micros(entry.cost)
        at = bisect.bisect_right(self.keys, entry.key)
        self.entries.insert(at, entry)
        self.keys.insert(at, entry.key)
        self.costs.insert(at, cost)
        if self.sums is not None and at == len(self.sums):
            self.sums.append((self.sums[-1] if self.sums else self.base) + cost)
        else:
            self.sums = None

    def take(self, at: int) -> Entry:
        entry = self.entries.pop(at)
        del self.keys[at]
        cost = self.costs.pop(at)
        if self.sums is not None and at == 0:
            del self.sums[0]
            self.base += cost
        else:
            self.sums = None
        return entry

    def index(self, entry: Entry) -> int:
        return bisect.bisect_left(self.keys, entry.key)

    def _sums(self) -> list[int]:
        if self.sums is None:
            self.base, total, self.sums = 0, 0, []
            for cost in self.costs:
                total += cost
                self.sums.append(total)
        return self.sums

    def total(self) -> int:
        """The cost of all the user's entries."""
        sums = self._sums()
        return sums[-1] - self.base if sums else 0

    def fits(self, allowance: int) -> int:
        """How many head entries an allowance covers (their cost sum at most ``allowance``)."""
        return bisect.bisect_right(self._sums(), allowance + self.base)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class FairQueue:
    def __init__(self, quantum: float) -> None:
        # quantum: airtime seconds a weight-1 user may spend per round
        self._quantum = micros(quantum)
        self._users: dict[UUID, _User] = {}
        self._entries: dict[UUID, Entry] = {}
        self._active: deque[UUID] = deque()  # users with entries, in turn order
        self._deficit: dict[UUID, int] = {}  # of each active user
        self._started = False  # the head of _active has received its quantum this turn

    @property
    def quantum(self) -> float:
        return self._quantum / _MICROS

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._entries

    def backlogged(self) -> dict[UUID, int]:
        """User -> entries waiting."""
        return {user_id: len(user.entries) for user_id, user in self._users.items()}

    def push(self, entry: Entry) -> bool:
        """Queue an entry in its user's FIFO place; False if that message is already in."""
        if entry.message_id in self._entries:
            return False
        user = self._users.get(entry.user_id)
        if user is None:
            user = self._users[entry.user_id] = _User(entry.weight)
            self._active.append(entry.user_id)
            self._deficit[entry.user_id] = 0
        user.weight = entry.weight
        user.insert(entry)
        self._entries[entry.message_id] = entry
        return True

    def remove(self, message_id: UUID) -> Entry | None:
        """Take one entry out (cancel, reroute, expiry); the others keep their places."""
        entry = self._entries.pop(message_id, None)
        if entry is None:
            return None
        user = self._users[entry.user_id]
        user.take(user.index(entry))
        if not user.entries:
            self._leave(entry.user_id)
        return entry

    def pop(self) -> Entry | None:
        """The next entry to hand out, advancing the round."""
        if not self._active:
            return None
        user_id, self._started = _step(self._quantum, self._users, self._active,
                                       self._deficit, self._started, {})
        user = self._users[user_id]
        entry = user.take(0)
        del self._entries[entry.message_id]
        if not user.entries:
            del self._users[user_id]
        return entry

    def order(self, limit: int | None = None) -> list[Entry]:
        """What successive ``pop()`` calls would return if nothing else changed."""
        active, deficit, started = deque(self._active), dict(self._deficit), self._started
        taken: dict[UUID, int] = {}
        out: list[Entry] = []
        while active and (limit is None or len(out) < limit):
            user_id, started = _step(self._quantum, self._users, active, deficit, started, taken)
            out.append(self._users[user_id].entries[taken[user_id] - 1])
        return out

    def place(self, user_id: UUID, weight: int, cost: float) -> int:
        """How many entries ``pop()`` would hand out before a new entry of this user pushed now
        with this weight and cost (its ``created_at`` later than all the user's entries)."""
        if weight < 1:
            raise ValueError(f"weight must be at least 1, not {weight}")
        mine = self._users.get(user_id)
        if mine is None:  # joins at the tail, deficit 0
            position, ahead, deficit, started = len(self._active), 0, 0, False
            need = micros(cost)
        else:
            position = self._active.index(user_id)
            ahead = len(mine.entries)
            deficit = self._deficit[user_id]
            started = position == 0 and self._started
            need = mine.total() + micros(cost)
        turn = _turns_to_cover(need, deficit, self._quantum * weight, started)
        for at, other_id in enumerate(self._active):
            if other_id == user_id:
                continue
            other = self._users[other_id]
            turns = turn if at < position else turn - 1
            if turns == 0:
                continue
            head_started = at == 0 and self._started
            allowance = self._deficit[other_id] + self._quantum * other.weight * (
                turns - 1 if head_started else turns)
            ahead += other.fits(allowance)
        return ahead

    def _leave(self, user_id: UUID) -> None:
        del self._users[user_id]
        del self._deficit[user_id]
        if self._active[0] == user_id:
            self._started = False
        self._active.remove(user_id)


def _turns_to_cover(need: int, deficit: int, quantum: int, started: bool) -> int:
    """The first turn (1 = the next, or the current one when ``started``) after which a user's
    allowance covers ``need``: its deficit, plus ``quantum`` at the start of each turn."""
    if started:
        return 1 if need <= deficit else 1 + _ceil_div(need - deficit, quantum)
    return max(1, _ceil_div(need - deficit, quantum))


def _step(quantum: int, users: dict[UUID, _User], active: deque[UUID],
          deficit: dict[UUID, int], started: bool, taken: dict[UUID, int]) -> tuple[UUID, bool]:
    """One ``pop()`` of the round robin over ``active`` (non-empty), changing ``active`` and
    ``deficit`` in place. ``taken[u]`` counts the entries of user u already handed out by this
    simulation (``pop()`` passes an empty dict: it removes each entry as it goes); it is
    advanced for the chosen user. Returns that user and whether its turn goes on."""
    fruitless = 0  # turns in a row that sent nothing
    while True:
        user_id = active[0]
        user = users[user_id]
        if not started:
            deficit[user_id] += quantum * user.weight
            started = True
        done = taken.get(user_id, 0)
        cost = user.costs[done]
        if cost <= deficit[user_id]:
            deficit[user_id] -= cost
            taken[user_id] = done + 1
            if done + 1 == len(user.costs):  # empty: leaves, deficit back to 0
                active.popleft()
                del deficit[user_id]
                started = False
            return user_id, started
        active.rotate(-1)
        started = False
        fruitless += 1
        if fruitless == len(active):
            # A whole round sent nothing: skip the further rounds in which nobody could send.
            skip = min(_ceil_div(users[u].costs[taken.get(u, 0)] - deficit[u],
                                 quantum * users[u].weight) for u in active) - 1
            for u in active:
                deficit[u] += skip * quantum * users[u].weight
            fruitless = 0
