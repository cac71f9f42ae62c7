"""The table of conversation actors: which nodes have one, which of those are quiescent, and
which nodes wait in the database for one, under a bound. Sans-IO: no Trio, no clock, no database.

Theory of operation
-------------------
The conversations router owns one table and tells it what happens; each method returns what
the router must do (a frozen decision), and the router does it before its next event. An
actor is named by its node and a generation (``Actor``): an event from an actor the table no
longer holds (stopped, or replaced by a newer one for the same node) changes nothing.

    dispatch(node)   a stored message for ``node``      -> Deliver | Start | WaitInDatabase
    busy(actor)      the router gave the actor work     -> (no decision)
    quiescent(actor) it took and handed out everything  -> Handover | None
    idle(actor)      no work for the idle period        -> Stop | None
    failed(actor)    it failed and is ending            -> Stop | None

Rules:
- At most ``max_actors`` actors; a node has at most one. Only ``dispatch`` and a hand-over
  start one.
- A message for a node with an actor is delivered to it. For a node without one, below the
  bound an actor starts; at the bound the actor quiescent the longest is stopped first
  (eviction, ``Start.evict``); if none is quiescent no actor starts and the node *waits in the
  database* (its messages are stored there already), first come first served.
- An actor is quiescent from ``quiescent`` until ``busy``. Only a quiescent actor is stopped
  (evicted, reaped by ``idle``, or handing over), so no actor holds work when it stops. A
  failed actor stops too, and its node waits in the database: what it held is stored there.
- When an actor becomes quiescent at the bound while nodes wait, it stops and hands its place
  to the first waiting node (``Handover``). Below the bound a waiting node gets an actor with
  its next message (the outbox hands pending messages out again).
- The actor of a node that waited in the database starts by reading it
  (``Start.read_database_first``), before any newer message: a node's order holds.
- ``WaitInDatabase.first`` marks the first node to wait since every waiting node last had an
  actor, ``Start.all_served`` the start that gives the last one its actor (for the log).
- Memory: one entry per actor and one per waiting node.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """One actor of a node: a node's next actor has a greater generation."""

    node_id: str
    generation: int


@dataclass(frozen=True)
class Deliver:
    """The node has an actor: give the message to it."""

    actor: Actor


@dataclass(frozen=True)
class Start:
    """Start ``actor`` (after stopping ``evict``, if any), then give it the message if any."""

    actor: Actor
    read_database_first: bool = False
    evict: Actor | None = None
    all_served: bool = False


@dataclass(frozen=True)
class WaitInDatabase:
    """No room: the node waits in the database for an actor; its message is not handed out."""

    node_id: str
    first: bool = False


@dataclass(frozen=True)
class Stop:
    """Stop ``actor`` (close its channel)."""

    actor: Actor


@dataclass(frozen=True)
class Handover:
    """Stop the quiescent ``stop`` and start the first waiting node in its place."""

    stop: Actor
    start: Start


class NodeTable:
    def __init__(self, max_actors: int) -> None:
        if max_actors < 1:
            raise ValueError(f"max_actors must be at least 1, not {max_actors}")
        self.max_actors = max_actors
        self._actors: dict[str, Actor] = {}
        self._quiescent: OrderedDict[str, None] = OrderedDict()  # longest quiescent first
        self._waiting: OrderedDict[str, None] = OrderedDict()  # first come first served
        self._generation = 0
        self._overflowing = False  # nodes waited since every waiting node last had an actor
        self.evicted = 0  # quiescent actors stopped to make room for another node
        self.refused = 0  # messages left in the database because no actor could start

    def actors(self) -> list[Actor]:
        return list(self._actors.values())

    def quiescent_nodes(self) -> list[str]:
        """Nodes whose actor is quiescent, longest quiescent first."""
        return list(self._quiescent)

    def waiting_nodes(self) -> list[str]:
        """Nodes without an actor that wait in the database for one, first come first."""
        return list(self._waiting)

    def dispatch(self, node_id: str) -> Deliver | Start | WaitInDatabase:
        """A stored message for ``node_id``: who takes it."""
        actor = self._actors.get(node_id)
        if actor is not None:
            return Deliver(actor)
        evict = None
        if len(self._actors) >= self.max_actors:
            if not self._quiescent:
                self.refused += 1
                self._waiting.setdefault(node_id)
                first, self._overflowing = not self._overflowing, True
                return WaitInDatabase(node_id, first)
            evict = self._forget(next(iter(self._quiescent)))
            self.evicted += 1
        return self._start(node_id, evict)

    def busy(self, actor: Actor) -> None:
        """The router gave ``actor`` work: it is quiescent no longer."""
        if self._holds(actor):
            self._quiescent.pop(actor.node_id, None)

    def quiescent(self, actor: Actor) -> Handover | None:
        """``actor`` handed out all it was given and waits for more."""
        if not self._holds(actor):
            return None
        if self._waiting and len(self._actors) >= self.max_actors:
            self._forget(actor.node_id)
            self.evicted += 1
            return Handover(actor, self._start(next(iter(self._waiting)), None))
        self._quiescent.setdefault(actor.node_id)  # one already quiescent keeps its place
        return None

    def idle(self, actor: Actor) -> Stop | None:
        """``actor`` had no work for the idle period: stopped if it is still quiescent."""
        if not self._holds(actor) or actor.node_id not in self._quiescent:
            return None
        return Stop(self._forget(actor.node_id))

    def failed(self, actor: Actor) -> Stop | None:
        """``actor`` failed: it is forgotten and its node waits in the database."""
        if not self._holds(actor):
            return None
        self._forget(actor.node_id)
        self._waiting.setdefault(actor.node_id)
        return Stop(actor)

    def _holds(self, actor: Actor) -> bool:
        return self._actors.get(actor.node_id) == actor

    def _forget(self, node_id: str) -> Actor:
        self._quiescent.pop(node_id, None)
        return self._actors.pop(node_id)

    def _start(self, node_id: str, evict: Actor | None) -> Start:
        self._generation += 1
        actor = self._actors[node_id] = Actor(node_id, self._generation)
        read_first = node_id in self._waiting
        self._waiting.pop(node_id, None)
        all_served = self._overflowing and not self._waiting
        if all_served:
            self._overflowing = False
        return Start(actor, read_first, evict, all_served)
