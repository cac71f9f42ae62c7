"""The simulated Meshtastic device: a sans-IO state machine. Frames in, frames out, time passed in.

Theory of operation. A client links (``connect``), sends ``ToRadio`` frames (``receive``) and
collects ``FromRadio`` frames (``take_outgoing``). ``want_config_id`` is answered with the config
dump at once; after it, packets flow. A text the client sends goes through the firmware's checks
in the firmware's order, is answered by a ``QueueStatus``, and if accepted waits in a 16-slot TX
queue for the one radio. Each transmission lasts the packet's LoRa airtime; then the mesh decides
(``loss``, the destination's ``Reach``) whether anyone heard it. Heard: the ACKs and the reply
follow, ``latency`` apart. Not heard: the firmware retransmits after its retransmission delay,
``retries`` times, then NAKs ``MAX_RETRANSMIT``. Timed work sits on a heap; ``advance(now)`` runs
what is due, each step at its own due time, so results do not depend on when the caller polls.

Rules:
- No I/O, no clock, no Trio: every call takes ``now`` in simulated seconds, never decreasing.
  ``next_deadline()`` says when ``advance`` has work.
- Checks on a packet from the client, in the firmware's order (PhoneAPI, then Router::send):
  a packet id seen recently is dropped without a reply; a text within 2 s of the last accepted
  text gets ``QueueStatus(res=0)`` then a RATE_LIMIT_EXCEEDED NAK (positions, telemetry and
  traceroutes are rate limited silently); a packet for our own node is not handled
  (``res=35``); over the hourly duty cycle -> DUTY_CYCLE_LIMIT NAK plus a client notification;
  ``Data`` over 239 bytes once the firmware adds its bitfield -> TOO_LARGE NAK (so a 233-byte
  text is already too large); a direct message to a known node whose public key we lack
  (``SimNode.has_key``) -> ``QueueStatus(res=39)`` and a PKI_SEND_FAIL_PUBLIC_KEY NAK, nothing
  on air, as firmware 2.7 refuses to fall back to the channel key (traceroutes, positions and
  node infos are exempt); a full TX queue -> ``QueueStatus(res=32)`` and nothing else.
- Each text going on air, retransmissions included, is passed to ``on_air`` (the air log).
- NAKs and implicit ACKs come from our own node; the delivery ACK and the reply come from the
  destination. Packets for the client wait (at most 32, oldest dropped) while no client is
  linked or the config dump is in progress, as they do in the firmware.
- Rate-limit memory belongs to the link: a new connection starts afresh, as in the firmware.
- Anything not understood is counted and ignored; malformed frames never raise.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from meshtastic.protobuf import mesh_pb2, portnums_pb2

from bridge.sim import device
from bridge.sim.air import AirRecord, SimStats
from bridge.sim.config import Reach, SimConfig, SimNode
from bridge.sim.device import Message
from bridge.sim.protocol import BROADCAST_NUM, encode_frame
from kosmo.airtime import (
    HEADER_BYTES,
    MAX_LORA_PAYLOAD,
    PRESETS,
    retransmission_delay,
)
from kosmo.airtime import data_airtime as packet_airtime

ERRNO_OK = 0
ERRNO_UNKNOWN = 32  # the TX queue refused the packet
ERRNO_SHOULD_RELEASE = 35  # the packet was for our own node
TO_PHONE_MAX = 32
SEEN_MAX = 64
HOUR = 3600.0
REPLY_MAX_BYTES = 200
DEFAULT_EPOCH = 1_750_000_000.0  # UNIX time at simulated time 0 unless told otherwise

Error = mesh_pb2.Routing.Error
Port = portnums_pb2.PortNum
# sent without public-key encryption even to a single node (the firmware's wouldEncryptWithPKC)
NO_PKC_PORTS = frozenset({Port.TRACEROUTE_APP, Port.NODEINFO_APP, Port.ROUTING_APP,
                          Port.POSITION_APP})
# portnum -> (minimum spacing in seconds, NAK when violated)
RATE_LIMITS: dict[int, tuple[float, bool]] = {
    Port.TEXT_MESSAGE_APP: (2.0, True),
    Port.POSITION_APP: (10.0, False), Port.WAYPOINT_APP: (10.0, False),
    Port.ALERT_APP: (10.0, False), Port.TELEMETRY_APP: (10.0, False),
    Port.TRACEROUTE_APP: (30.0, False),
}


class SimRadioError(RuntimeError):
    """The caller broke the protocol of this class (not the client: the client cannot)."""


@dataclass
class _Tx:
    packet: Message
    text: str | None
    data_size: int
    retries_left: int


class SimRadio:
    def __init__(self, config: SimConfig | None = None, *, epoch: float = DEFAULT_EPOCH,
                 on_air: Callable[[AirRecord], None] | None = None) -> None:
        self.config = config or SimConfig()
        self.stats = SimStats()
        self._on_air_hook = on_air  # each text as it goes on air (bridge/sim/air.py)
        self._epoch = epoch
        self._rng = random.Random(self.config.seed)
        self._modem = PRESETS[self.config.modem_preset]
        self._now = 0.0
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._pending: dict[int, _Tx] = {}
        self._tx_queue: deque[int] = deque()
        self._on_air: int | None = None
        self._tx_log: deque[tuple[float, float]] = deque()  # (end, airtime) in the last hour
        self._reported_free = self.config.tx_queue_len
        self._linked = False
        self._ready = False  # config dump sent: packets flow to the client
        self._session: deque[Message] = deque()  # answers to this link's requests
        self._to_phone: deque[Message] = deque(maxlen=TO_PHONE_MAX)
        self._last_by_port: dict[int, float] = {}
        self._seen: deque[int] = deque(maxlen=SEEN_MAX)
        self._from_radio_id = 0

    # -- the link -------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """A client opened the link (replacing any previous one)."""
        self.advance(now)
        self._linked, self._ready = True, False
        self._session.clear()
        self._last_by_port.clear()

    def disconnect(self, now: float) -> None:
        self.advance(now)
        self._linked = self._ready = False
        self._session.clear()
        self._last_by_port.clear()

    def receive(self, payload: bytes, now: float) -> None:
        """Handle one ``ToRadio`` frame payload from the linked client."""
        if not self._linked:
            raise SimRadioError("receive() without connect()")
        self.advance(now)
        msg = mesh_pb2.ToRadio()
        try:
            msg.ParseFromString(payload)
        except DecodeError:
            self.stats.malformed += 1
            return
        kind = msg.WhichOneof("payload_variant")
        if kind == "want_config_id":
            self._ready = False
            self._session.extend(device.config_dump(self.config, msg.want_config_id,
                                                    self._epoch + now))
            self._ready = True
        elif kind == "packet":
            self._from_client(msg.packet, now)
        elif kind == "heartbeat":
            self.stats.heartbeats += 1
            self._queue_status(ERRNO_OK, 0)
        elif kind == "disconnect":
            self.disconnect(now)
            self._linked = True  # the firmware forgets the session; the socket stays open
        else:
            self.stats.ignored += 1

    def take_outgoing(self) -> bytes:
        """The framed ``FromRadio`` messages ready for the client, oldest first."""
        out = bytearray()
        while self._session:
            out += self._encode(self._session.popleft())
        while self._ready and self._to_phone:
            out += self._encode(device.from_radio(packet=self._to_phone.popleft()))
        return bytes(out)

    @property
    def backlog(self) -> int:
        """Messages waiting for ``take_outgoing``."""
        return len(self._session) + (len(self._to_phone) if self._ready else 0)

    # -- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def advance(self, now: float) -> None:
        """Run everything due at or before ``now``."""
        if now < self._now:
            raise SimRadioError(f"time went backwards: {now} < {self._now}")
        self._now = now
        while self._timers and self._timers[0][0] <= now:
            due, _, action = heapq.heappop(self._timers)
            action(due)

    def _at(self, due: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self._timers, (due, next(self._seq), action))

    def utilization(self, now: float) -> float:
        """Percent of the last hour we spent transmitting."""
        while self._tx_log and self._tx_log[0][0] <= now - HOUR:
            self._tx_log.popleft()
        return 100.0 * sum(air for _, air in self._tx_log) / HOUR

    # -- packets from the client ------------------------------------------------------------

    def _from_client(self, pkt: Message, now: float) -> None:
        self.stats.received += 1
        if pkt.WhichOneof("payload_variant") != "decoded":
            self.stats.ignored += 1
            return
        pkt.id = pkt.id or self._new_id()
        if pkt.id in self._seen:
            self.stats.duplicates += 1
            return
        self._seen.append(pkt.id)
        port = pkt.decoded.portnum
        spacing, nak = RATE_LIMITS.get(port, (0.0, False))
        last = self._last_by_port.get(port)
        if last is not None and now - last < spacing:
            self._queue_status(ERRNO_OK, pkt.id)
            if nak:
                self._nak(pkt, Error.RATE_LIMIT_EXCEEDED, now)
            return
        self._last_by_port[port] = now
        if pkt.to in (0, self.config.my_node_num):
            self.stats.ignored += 1  # admin and other local requests are not simulated
            self._queue_status(ERRNO_SHOULD_RELEASE, pkt.id)
            return
        if self._over_duty_cycle(pkt, now):
            self._queue_status(Error.DUTY_CYCLE_LIMIT, pkt.id)
            return
        data_size = _data_size(pkt)
        if data_size + HEADER_BYTES > MAX_LORA_PAYLOAD:
            self._queue_status(Error.TOO_LARGE, pkt.id)
            self._nak(pkt, Error.TOO_LARGE, now)
            return
        if self._lacks_key(pkt):
            self._queue_status(Error.PKI_SEND_FAIL_PUBLIC_KEY, pkt.id)
            self._nak(pkt, Error.PKI_SEND_FAIL_PUBLIC_KEY, now)
            return
        if len(self._tx_queue) >= self.config.tx_queue_len:
            self.stats.queue_rejects += 1
            self._queue_status(ERRNO_UNKNOWN, pkt.id)
            return
        text = None
        if port == Port.TEXT_MESSAGE_APP:
            text = pkt.decoded.payload.decode(errors="replace")
        self._pending[pkt.id] = _Tx(pkt, text, data_size, self.config.retries)
        if text is not None:
            self.stats.accepted_by_text[text] += 1
        self._tx_queue.append(pkt.id)
        self._queue_status(ERRNO_OK, pkt.id)
        self._start_tx(now)

    def _over_duty_cycle(self, pkt: Message, now: float) -> bool:
        limit = self.config.duty_cycle_limit
        used = self.utilization(now)
        if limit is None or used <= limit:
            return False
        wait = max(1, round((used - limit) / limit * 60))  # roughly the firmware's silent minutes
        self._to_session(device.client_notification(
            reply_id=pkt.id, at=self._epoch + now,
            message=f"Duty cycle limit exceeded. You can send again in {wait} mins"))
        self._nak(pkt, Error.DUTY_CYCLE_LIMIT, now)
        return True

    def _lacks_key(self, pkt: Message) -> bool:
        """A direct message firmware 2.7 would encrypt for the destination, whose key we lack."""
        node = self.config.node(pkt.to)
        return node is not None and not node.has_key and pkt.decoded.portnum not in NO_PKC_PORTS

    # -- the radio and the mesh ---------------------------------------------------------------

    def _start_tx(self, now: float) -> None:
        if self._on_air is not None or not self._tx_queue:
            return
        packet_id = self._on_air = self._tx_queue.popleft()
        if self._reported_free == 0:  # MeshService::loop tells the client space came free
            self._queue_status(ERRNO_OK, 0)
        tx = self._pending[packet_id]
        airtime = packet_airtime(tx.data_size, self._modem)
        if tx.text is not None and self._on_air_hook is not None:
            self._on_air_hook(AirRecord(self._epoch + now, packet_id, tx.packet.to, tx.text))
        self._at(now + airtime, lambda t: self._tx_done(packet_id, airtime, t))

    def _tx_done(self, packet_id: int, airtime: float, now: float) -> None:
        self._on_air = None
        tx = self._pending[packet_id]
        self.stats.transmissions[packet_id] += 1
        if tx.text is not None:
            self.stats.transmissions_by_text[tx.text] += 1
        self.stats.airtime += airtime
        self._tx_log.append((now, airtime))
        pkt = tx.packet
        lost = self.config.loss > 0 and self._rng.random() < self.config.loss
        self.stats.lost += int(lost)
        node = self.config.node(pkt.to)
        if pkt.to == BROADCAST_NUM:
            heard = any(n.reach is not Reach.UNREACHABLE for n in self.config.nodes)
        else:
            heard = node is not None and node.reach is not Reach.UNREACHABLE
        if lost or not heard:
            if pkt.want_ack:
                delay = self.config.retry_interval
                if delay is None:
                    delay = retransmission_delay(tx.data_size, self._modem)
                self._at(now + delay, lambda t: self._retry(packet_id, t))
            else:
                del self._pending[packet_id]
        else:
            del self._pending[packet_id]
            self._heard(pkt, node, tx.text, now)
        self._start_tx(now)

    def _retry(self, packet_id: int, now: float) -> None:
        tx = self._pending[packet_id]
        if tx.retries_left == 0:
            del self._pending[packet_id]
            self._nak(tx.packet, Error.MAX_RETRANSMIT, now)
        elif self._over_duty_cycle(tx.packet, now):
            del self._pending[packet_id]
        else:
            tx.retries_left -= 1
            self._tx_queue.append(packet_id)
            self._start_tx(now)

    def _heard(self, pkt: Message, node: SimNode | None, text: str | None, now: float) -> None:
        """Someone heard ``pkt``: schedule what the mesh answers."""
        if text is not None:
            self.stats.heard_by_text[text] += 1
        step = self.config.latency
        relayed = node is None or node.reach is Reach.SILENT or node.hops_away > 0
        if pkt.want_ack and relayed:
            self._at(now + step, lambda t: self._ack(pkt, None, t))
        if node is None or node.reach is not Reach.REACHABLE:
            return
        if pkt.want_ack:
            self._at(now + 2 * step, lambda t: self._ack(pkt, node, t))
        if text is not None and self.config.auto_reply and node.auto_reply:
            self._at(now + 3 * step, lambda t: self._reply(pkt, node, text, t))

    def _ack(self, pkt: Message, node: SimNode | None, now: float) -> None:
        me = self.config.my_node_num
        self.stats.acks["implicit" if node is None else "delivered"] += 1
        if node is not None and pkt.decoded.portnum == Port.TEXT_MESSAGE_APP:
            self.stats.delivered_by_text[pkt.decoded.payload.decode(errors="replace")] += 1
        self._to_client(device.routing_packet(
            packet_id=self._new_id(), sender=node.num if node else me, to=me,
            request_id=pkt.id, error=Error.NONE, channel=pkt.channel, at=self._epoch + now,
            hops_away=node.hops_away if node else None, hop_limit=self.config.hop_limit))

    def _reply(self, pkt: Message, node: SimNode, text: str, now: float) -> None:
        self.stats.replies += 1
        self._to_client(device.text_packet(
            packet_id=self._new_id(), sender=node.num, to=self.config.my_node_num,
            text=_truncate(f"ack: {text}", REPLY_MAX_BYTES), channel=pkt.channel,
            at=self._epoch + now, hops_away=node.hops_away, hop_limit=self.config.hop_limit,
            reply_id=pkt.id))

    def _nak(self, pkt: Message, error: int, now: float) -> None:
        me = self.config.my_node_num
        self.stats.naks[Error.Name(error)] += 1
        self._to_client(device.routing_packet(
            packet_id=self._new_id(), sender=me, to=me, request_id=pkt.id, error=error,
            channel=pkt.channel, at=self._epoch + now))

    # -- output ---------------------------------------------------------------------------

    def _to_client(self, packet: Message) -> None:
        if len(self._to_phone) == TO_PHONE_MAX:
            self.stats.to_phone_dropped += 1  # the deque drops the oldest
        self._to_phone.append(packet)

    def _queue_status(self, res: int, packet_id: int) -> None:
        free = self.config.tx_queue_len - len(self._tx_queue)
        self._reported_free = free
        self._to_session(device.queue_status(
            res=res, free=free, maxlen=self.config.tx_queue_len, packet_id=packet_id))

    def _to_session(self, msg: Message) -> None:
        if self._linked:  # what a link asked for dies with the link
            self._session.append(msg)

    def _encode(self, msg: Message) -> bytes:
        self._from_radio_id += 1
        msg.id = self._from_radio_id
        return encode_frame(msg.SerializeToString())

    def _new_id(self) -> int:
        return self._rng.randrange(1, 0xFFFFFFFF)


def _data_size(pkt: Message) -> int:
    """Bytes of the packet's ``Data`` on air: the firmware always adds its bitfield."""
    data = mesh_pb2.Data()
    data.CopyFrom(pkt.decoded)
    data.bitfield = data.bitfield  # mark the optional field present, as nanopb encodes it
    return len(data.SerializeToString())


def _truncate(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")
