"""What the simulated radio is: its own node, the remote nodes it knows, and the mesh's behaviour.

Rules:
- Frozen values; a radio is built from one ``SimConfig`` and never changes it.
- Our own node is ``!0a0a0a0a`` unless told otherwise; the first generated remote node is
  always ``!a1b2c3d4``.
- A remote node is reached in one of three ways (``Reach``):
  ``REACHABLE``: a relay rebroadcasts (implicit ACK) and the node acknowledges (delivered);
  a direct neighbour (``hops_away == 0``) has no relay, so it sends only its own ACK.
  ``UNREACHABLE``: nobody hears us; the firmware retries, then NAKs ``MAX_RETRANSMIT``.
  ``SILENT``: a relay rebroadcasts (implicit ACK) but the node never answers, and no NAK
  follows: the sender stops retrying once it heard the rebroadcast, as real firmware does.
- A remote node without a public key (``has_key=False``: we never heard its NodeInfo) gets
  no direct message: our radio refuses it, as firmware 2.7 does (bridge/sim/radio.py).
- The remote nodes a radio reaches are its own: several radios (each its own ``SimConfig``)
  may share some, and a node one radio does not know is out of its reach (its texts are
  retried, then NAKed ``MAX_RETRANSMIT``).
- Times are simulated seconds; the server maps them to wall time with its ``time_scale``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from meshtastic.protobuf import config_pb2

from bridge.sim.protocol import BROADCAST_NUM, node_id
from kosmo.airtime import PRESETS
from kosmo.airtime import REGION_DUTY_PERCENT as DUTY_CYCLE

OUR_NODE_NUM = 0x0A0A0A0A
FIRST_NODE_NUM = 0xA1B2C3D4
NODE_STEP = 0x01010101  # !a1b2c3d4, !a2b3c4d5, !a3b4c5d6, ...


class Reach(enum.Enum):
    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"
    SILENT = "silent"


@dataclass(frozen=True)
class SimNode:
    num: int
    long_name: str
    short_name: str
    reach: Reach = Reach.REACHABLE
    hops_away: int = 1
    auto_reply: bool = True
    has_key: bool = True  # we hold its public key, so a direct message to it can be sent

    @property
    def id(self) -> str:
        return node_id(self.num)


def _default_nodes() -> tuple[SimNode, ...]:
    return make_nodes(3)


@dataclass(frozen=True)
class SimConfig:
    nodes: tuple[SimNode, ...] = field(default_factory=_default_nodes)
    my_node_num: int = OUR_NODE_NUM
    long_name: str = "KosmoConnect Gateway"
    short_name: str = "KOSM"
    latency: float = 2.0  # from one event of a delivery to the next (rebroadcast, ACK, reply)
    loss: float = 0.0  # probability that one transmission is heard by nobody
    auto_reply: bool = True  # nodes with auto_reply answer each text with "ack: <text>"
    region: str = "EU_868"
    modem_preset: str = "LONG_FAST"
    hop_limit: int = 3
    duty_cycle: float | None = None  # percent per hour; None: the region's limit
    retries: int = 3  # the firmware's NUM_RELIABLE_RETX
    retry_interval: float | None = None  # None: the firmware's delay for the packet's airtime
    tx_queue_len: int = 16
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.modem_preset not in PRESETS:
            raise ValueError(f"unknown modem preset {self.modem_preset!r}")
        if self.region not in config_pb2.Config.LoRaConfig.RegionCode.keys():
            raise ValueError(f"unknown region {self.region!r}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss must be between 0 and 1")
        if self.latency < 0 or self.tx_queue_len < 1 or self.retries < 0:
            raise ValueError("latency, tx_queue_len and retries must not be negative")
        nums = [n.num for n in self.nodes]
        if len(set(nums)) != len(nums) or self.my_node_num in nums:
            raise ValueError("node numbers must be unique and differ from our own")
        if {0, BROADCAST_NUM} & {*nums, self.my_node_num}:
            raise ValueError("0 and 0xffffffff are not node numbers")

    @property
    def duty_cycle_limit(self) -> float | None:
        """Percent of an hour we may transmit, or None for no limit."""
        limit = self.duty_cycle if self.duty_cycle is not None else DUTY_CYCLE.get(self.region)
        return limit if limit is not None and limit < 100.0 else None

    def node(self, num: int) -> SimNode | None:
        return next((n for n in self.nodes if n.num == num), None)


def make_nodes(count: int, *, hears: Iterable[int] | None = None,
               unreachable: Iterable[int] = (), silent: Iterable[int] = (),
               no_key: Iterable[int] = (), auto_reply: bool = True) -> tuple[SimNode, ...]:
    """The remote nodes a radio knows: those it reaches, then the ``unreachable``, ``silent``
    and ``no_key`` node numbers not among them (each marked so either way).

    The nodes it reaches are ``hears`` (in that order) if given, else ``count`` nodes starting
    at ``!a1b2c3d4``. A node both heard and unreachable is a contradiction (``ValueError``).
    Hops vary so the mesh has both shapes: the second node is a direct neighbour (no implicit
    ACK), the others are one or two hops away.
    """
    unreachable, no_key = set(unreachable), set(no_key)
    marks = {num: Reach.UNREACHABLE for num in unreachable} | {num: Reach.SILENT for num in silent}
    if hears is None:
        heard = [(FIRST_NODE_NUM + i * NODE_STEP) & 0xFFFFFFFF for i in range(count)]
    else:
        heard = list(dict.fromkeys(hears))
        if both := unreachable & set(heard):
            raise ValueError(f"{', '.join(map(node_id, sorted(both)))} both heard and "
                             "unreachable")
    nodes = [_node(num, hops=(1, 0, 2)[i % 3], auto_reply=auto_reply)
             for i, num in enumerate(heard)]
    extra = [num for num in [*marks, *no_key] if num not in {n.num for n in nodes}]
    nodes += [_node(num, hops=1, auto_reply=auto_reply) for num in dict.fromkeys(extra)]
    return tuple(replace(n, reach=marks.get(n.num, Reach.REACHABLE), has_key=n.num not in no_key)
                 for n in nodes)


def _node(num: int, *, hops: int, auto_reply: bool) -> SimNode:
    tail = f"{num:08x}"[-4:]
    return SimNode(num, f"Sim Node {tail}", tail, hops_away=hops, auto_reply=auto_reply)
