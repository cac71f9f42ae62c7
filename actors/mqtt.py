"""The MQTT I/O actor: one paho-mqtt client, driven from the Trio thread.

Rules
- Threading. paho runs no thread of its own (no loop_start/loop_forever). Only the blocking
  `connect()` (DNS, TCP, TLS handshake, queueing CONNECT) runs in a worker thread; every paho
  callback is installed after it returns, so all of them run in the Trio thread, inside
  `loop_read`/`loop_write`/`loop_misc` or `publish`/`ack`/`disconnect` calls made from Trio.
- Ownership. Each connection attempt gets a NEW `Client` (a `Link`, numbered by `epoch`, in
  actors/mqtt_link.py with the TLS context), so paho never re-sends its old out-queue behind
  our back: callers of `publish()` see MqttUnavailable and re-publish themselves; consumers
  dedupe by message id. The session is persistent (fixed client id; MQTT 3.1.1
  clean_session=False, or MQTT 5 clean_start=False with a session that never expires) and
  inbound QoS 1 messages are acked by hand, only once the consumer has stored them: unacked
  ones come back after a reconnect. An inbound message names the client id it
  came to, and `ack()` acts only on its own (several actors may feed one consumer; the
  session drains of actors/session_drain.py do). `clean_session=True` is only for deleting a
  session: connect, then stop.
- Protocol. MQTT 3.1.1 by default; ``protocol="5"`` speaks MQTT 5, whose PUBACK says whether a
  subscription matched: reason code 16 (no matching subscribers) on a QoS 1 publish that is
  not retained makes ``publish()``/``Publication.wait()`` raise NoSubscribers (the broker
  dropped it; a retained one it keeps, so that is success). Other PUBACK reasons count as
  acknowledged, as MQTT 3.1.1 brokers drop what they refuse silently.
- Subscriptions are made at every CONNACK; `unsubscribe()` removes some from the session and
  from that list, and returns at the UNSUBACK.
- publish() calls paho directly rather than over a channel to the actor task: paho's publish is
  non-blocking (it queues the packet and asks us, via on_socket_register_write, to wait for
  writability), and between the `connected` check, `client.publish()` and registering the PUBACK
  waiter there is no await, so Trio's single thread is the lock and no PUBACK can be missed.
- Inbound policy. `on_message` runs inside `loop_read` and cannot await, so it puts the message in
  a bounded pending channel and the reader goes on: the reader never waits for the consumer, so
  the PUBACKs of a consumer that publishes while handling a message are always processed. A
  separate task moves pending messages into `inbound` with `await send` (backpressure). When
  the pending channel is nearly full the reader stops reading the socket until there is room,
  so the broker keeps what we have not read (brokers do not always keep to their in-flight
  window). Were it to fill anyway, a QoS 0 message is dropped (at most once anyway) and for
  QoS 1 we drop the connection so the broker redelivers later. While reading is paused, PUBACKs
  and ping answers wait too: a consumer stalled past the keepalive costs a reconnect. Messages
  still pending from a lost connection are delivered anyway; their acks are dropped and the
  broker redelivers them.
- Shutdown. Cancelling run() abandons a connect() in progress (the thread closes what it opened),
  sends DISCONNECT (the session stays, the will is discarded) within a shielded 1 s, closes the
  socket and closes `inbound`.
- Failure policy. Connection failures are retried forever with exponential backoff and jitter,
  one WARNING per attempt; a broker refusing our credentials or subscriptions is an ERROR (it
  will not heal by itself) and is retried too. Bugs (exceptions in callbacks) crash run().
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import trio
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, error_string
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from actors.mqtt_link import Link, tls_context
from kosmo.config import MqttEndpoint

log = logging.getLogger(__name__)

_PENDING_MAX = 1000  # received messages not yet taken by the consumer
_HEADROOM = 64  # reading pauses this far from full (one read hands over at most a few)
_HANDSHAKE_TIMEOUT = 10.0  # socket open -> CONNACK (+ SUBACK)
_CLOSE_TIMEOUT = 1.0  # flushing DISCONNECT on the way out
SESSION_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5 Session Expiry Interval: as MQTT 3.1.1 sessions
_NO_MATCHING_SUBSCRIBERS = 16  # MQTT 5 PUBACK reason code

Protocol = Literal["3.1.1", "5"]


@dataclass(frozen=True)
class MqttInbound:
    topic: str
    payload: bytes
    qos: int
    mid: int
    epoch: int
    client_id: str  # the session it came to: only that actor may acknowledge it


@dataclass(frozen=True)
class MqttStatistics:
    connected: bool
    epoch: int
    publishes_in_flight: int
    published: int
    received: int
    reconnects: int


class MqttUnavailable(Exception):
    """Not connected, or the connection was lost before the broker acknowledged."""


class NoSubscribers(Exception):
    """MQTT 5 only: the broker acknowledged a QoS 1 publish (not retained) that matched no
    subscription, so it reached nobody and is gone (PUBACK reason code 16)."""


class Publication:
    """A publish handed to the connection; ``wait()`` returns at its PUBACK."""

    def __init__(self, actor: MqttActor, link: Link, mid: int, acked: trio.Event, *,
                 topic: str, retain: bool) -> None:
        self._actor, self._link, self._mid, self._acked = actor, link, mid, acked
        self._topic, self._retain = topic, retain

    async def wait(self) -> None:
        actor, link = self._actor, self._link
        try:
            await self._acked.wait()
        finally:
            actor._in_flight -= 1
            unacked = link.waiters.pop(self._mid, None) is not None
            unmatched = self._mid in link.unmatched
            link.unmatched.discard(self._mid)
        if unacked:
            raise MqttUnavailable(f"connection to {actor._where} lost before the PUBACK")
        if unmatched and not self._retain:
            raise NoSubscribers(f"no subscription on {actor._where} matched {self._topic}")
        actor._published += 1


class MqttActor:
    def __init__(self, endpoint: MqttEndpoint, *, client_id: str,
                 subscriptions: Sequence[tuple[str, int]] = (),
                 inbound: trio.MemorySendChannel[MqttInbound] | None = None,
                 will: tuple[str, bytes, int, bool] | None = None,
                 keepalive: float = 30, backoff_min: float = 0.2,
                 backoff_max: float = 5.0, clean_session: bool = False,
                 protocol: Protocol = "3.1.1") -> None:
        if not client_id:
            raise ValueError("a persistent MQTT session needs a fixed, non-empty client id")
        self._endpoint, self._client_id, self._clean = endpoint, client_id, clean_session
        self._protocol = protocol
        self._subscriptions, self._inbound, self._will = list(subscriptions), inbound, will
        self._keepalive, self._backoff = max(1, round(keepalive)), (backoff_min, backoff_max)
        self._where = f"{endpoint.redacted()} as {client_id!r}"
        self._pending_send, self._pending_recv = trio.open_memory_channel[MqttInbound](_PENDING_MAX)
        self._room = trio.lowlevel.ParkingLot()
        self._link: Link | None = None  # the current connection, from socket open until lost
        self._connected, self._up = False, trio.Event()
        self._epoch = self._ready_count = self._in_flight = self._published = self._received = 0

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def connected(self) -> bool:
        return self._connected

    async def wait_connected(self) -> None:
        await self._up.wait()

    def statistics(self) -> MqttStatistics:
        return MqttStatistics(self._connected, self._epoch, self._in_flight, self._published,
                              self._received, max(0, self._ready_count - 1))

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False) -> None:
        """Return once the broker has the message (PUBACK; QoS 0: once written).

        Raises MqttUnavailable at once when not connected, or when the connection is lost
        before the PUBACK (the message may or may not have arrived: publish it again). With
        MQTT 5, raises NoSubscribers when the broker says no subscription matched (QoS 1, not
        retained): it reached nobody.
        """
        await trio.lowlevel.checkpoint()
        await self.start_publish(topic, payload, qos=qos, retain=retain).wait()

    def start_publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False) -> Publication:
        """Hand the message to the connection now, in call order, and write it at once;
        ``await publication.wait()`` for the PUBACK. Several may be in flight: the broker
        receives them in the order of these calls (one connection keeps order)."""
        link = self._link
        if link is None or not self._connected:
            raise MqttUnavailable(f"not connected to {self._where}")
        info = link.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttUnavailable(f"publish to {self._where} failed: {error_string(info.rc)}")
        acked = link.waiters[info.mid] = trio.Event()
        link.unmatched.discard(info.mid)  # left by a publication nobody waited for
        self._in_flight += 1
        if link.want_write and not link.lost:
            # Write now rather than one scheduler pass later; a short write leaves the rest
            # to the write loop, which is woken by paho's register-write hook as usual.
            self._check(link, link.client.loop_write())
        return Publication(self, link, info.mid, acked, topic=topic, retain=retain)

    async def ack(self, message: MqttInbound) -> None:
        """Acknowledge a stored message; one from an earlier connection, or that came to
        another client id, is dropped silently."""
        await trio.lowlevel.checkpoint()
        link = self._link
        if message.qos and link is not None and not link.lost and link.epoch == message.epoch \
                and message.client_id == self._client_id:
            link.client.ack(message.mid, message.qos)

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        """Remove ``topics`` from the session and from the subscriptions made at each connect;
        return at the broker's UNSUBACK. Raises MqttUnavailable when not connected, or when the
        connection is lost first (the session may or may not have them still: call again)."""
        await trio.lowlevel.checkpoint()
        link = self._link
        if link is None or not self._connected:
            raise MqttUnavailable(f"not connected to {self._where}")
        if not topics:
            return
        # Connected, so no SUBACK is awaited: _on_subscribe's list stays as it was sent.
        removed = set(topics)
        self._subscriptions = [s for s in self._subscriptions if s[0] not in removed]
        rc, mid = link.client.unsubscribe(list(topics))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttUnavailable(f"unsubscribe on {self._where} failed: {error_string(rc)}")
        done = link.waiters[mid] = trio.Event()  # mids are shared with publishes: no clash
        await done.wait()
        if link.waiters.pop(mid, None) is not None:
            raise MqttUnavailable(f"connection to {self._where} lost before the UNSUBACK")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep one connection up, forever; started() after the first CONNACK and SUBACK."""
        failures = 0
        try:
            async with trio.open_nursery() as nursery:
                if self._inbound is not None:
                    nursery.start_soon(self._deliver, self._inbound)
                while True:
                    link = self._new_link()
                    try:
                        await self._open(link)
                    except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError)
                        link.reason = str(exc) or type(exc).__name__
                    else:
                        await self._serve(link, task_status)
                    if link.ready.is_set():
                        failures = 0
                        log.warning("lost MQTT connection to %s: %s", self._where, link.reason)
                    else:
                        failures += 1
                    delay = min(self._backoff[1], self._backoff[0] * 2.0 ** min(failures, 30))
                    delay *= random.uniform(0.5, 1.0)
                    if failures:
                        log.warning("MQTT connect to %s failed (attempt %d): %s; retrying in %.1fs",
                                    self._where, failures, link.reason, delay)
                    await trio.sleep(delay)
        finally:
            if self._inbound is not None:
                self._inbound.close()

    async def _deliver(self, inbound: trio.MemorySendChannel[MqttInbound]) -> None:
        async for message in self._pending_recv:
            self._room.unpark_all()
            await inbound.send(message)

    async def _wait_for_room(self) -> None:
        """Read no further while the pending queue is nearly full: the broker keeps what we
        have not read, and we never have to drop a connection (and get it all again)."""
        while (self._inbound is not None and
               self._pending_send.statistics().current_buffer_used >= _PENDING_MAX - _HEADROOM):
            await self._room.park()

    def _new_link(self) -> Link:
        self._epoch += 1
        if self._protocol == "5":  # the session is asked for in connect()
            client = Client(CallbackAPIVersion.VERSION2, client_id=self._client_id,
                            protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
        else:
            client = Client(CallbackAPIVersion.VERSION2, client_id=self._client_id,
                            clean_session=self._clean, protocol=MQTTProtocolVersion.MQTTv311,
                            manual_ack=True)
        link = Link(client, self._epoch)
        client.user_data_set(link)
        if self._endpoint.username is not None:
            client.username_pw_set(self._endpoint.username, self._endpoint.password)
        if self._endpoint.tls:
            client.tls_set_context(tls_context())
        if self._will is not None:
            client.will_set(*self._will)
        return link

    def _connect_blocking(self, link: Link) -> None:
        # No callbacks are installed yet, so paho writes CONNECT itself, here.
        if self._protocol == "5":
            # clean_start=True with a zero expiry deletes the session, as clean_session=True.
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0 if self._clean else SESSION_NEVER_EXPIRES
            link.client.connect(self._endpoint.host, self._endpoint.port, self._keepalive,
                                clean_start=self._clean, properties=properties)
        else:
            link.client.connect(self._endpoint.host, self._endpoint.port, self._keepalive)
        with link.lock:
            if not link.abandoned:
                link.handed_over = True
                return
        link.client.disconnect()  # run() was cancelled meanwhile: close it from here

    async def _open(self, link: Link) -> None:
        try:
            await trio.to_thread.run_sync(self._connect_blocking, link, abandon_on_cancel=True)
        except trio.Cancelled:
            with link.lock:
                link.abandoned = True
                if link.handed_over:
                    link.client.disconnect()
            raise
        client = link.client
        client.on_connect, client.on_subscribe = self._on_connect, self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_publish, client.on_message = self._on_publish, self._on_message
        client.on_disconnect, client.on_socket_close = self._on_disconnect, self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        link.sock, link.want_write = client.socket(), client.want_write()
        # paho leaves Nagle on: a PUBACK written right after a PUBLISH would wait ~40 ms.
        link.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._link = link

    async def _serve(self, link: Link, task_status: trio.TaskStatus[None]) -> None:
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    for loop in (self._read_loop, self._write_loop, self._misc_loop):
                        nursery.start_soon(loop, link)
                    with trio.move_on_after(_HANDSHAKE_TIMEOUT):
                        await link.ready.wait()
                    if not link.ready.is_set():
                        self._lose(link, f"no CONNACK/SUBACK within {_HANDSHAKE_TIMEOUT:g}s")
                        return
                    self._connected, self._ready_count = True, self._ready_count + 1
                    self._up.set()
                    log.info("MQTT connected to %s (epoch %d)", self._where, link.epoch)
                    if self._ready_count == 1:
                        task_status.started()
                    await trio.sleep_forever()
        finally:
            self._lose(link, "shutting down")
            if link.sock is not None:  # polite close keeps the session and discards the will
                link.client.disconnect()
                with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    while link.sock is not None and link.client.want_write():
                        await trio.lowlevel.wait_writable(link.sock)
                        link.client.loop_write()
                if link.sock is not None:  # could not flush: close it hard
                    sock, link.sock = link.sock, None
                    trio.lowlevel.notify_closing(sock)
                    sock.close()

    async def _read_loop(self, link: Link) -> None:
        sock = link.sock
        try:
            while not link.lost:
                await self._wait_for_room()
                await trio.lowlevel.wait_readable(sock)
                while not link.lost:
                    self._check(link, link.client.loop_read())
                    # TLS may hold decrypted bytes that the selector cannot see.
                    if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                        break
        except trio.ClosedResourceError:
            pass

    async def _write_loop(self, link: Link) -> None:
        sock = link.sock
        try:
            while not link.lost:
                if not link.want_write:
                    await link.writable.park()
                    continue
                await trio.lowlevel.wait_writable(sock)
                self._check(link, link.client.loop_write())
        except trio.ClosedResourceError:
            pass

    async def _misc_loop(self, link: Link) -> None:
        while not link.lost:
            await trio.sleep(1)
            self._check(link, link.client.loop_misc())

    def _check(self, link: Link, rc: MQTTErrorCode) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lose(link, error_string(rc))

    def _lose(self, link: Link, reason: str | None) -> None:
        if link.reason is None:
            link.reason = reason
        if link.lost:
            return
        link.lost = True
        link.scope.cancel()
        for waiter in link.waiters.values():
            waiter.set()
        if self._link is link:
            self._link, self._connected = None, False
            if self._up.is_set():
                self._up = trio.Event()

    # paho callbacks: all run in the Trio thread (see the header), `userdata` is the Link.

    def _on_socket_close(self, client: Client, link: Link, sock: Any) -> None:
        if link.sock is sock:
            link.sock = None
            trio.lowlevel.notify_closing(sock)  # wakes our wait_readable/wait_writable
        self._lose(link, None)

    def _on_register_write(self, client: Client, link: Link, sock: Any) -> None:
        link.want_write = True
        link.writable.unpark_all()

    def _on_unregister_write(self, client: Client, link: Link, sock: Any) -> None:
        link.want_write = False

    def _on_disconnect(self, client: Client, link: Link, flags: DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        self._lose(link, None)  # the rc that loop_*() returns says more than `reason`

    def _on_connect(self, client: Client, link: Link, flags: ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:  # paho closes the socket next
            link.reason = f"broker refused the connection: {reason}"
            log.error("MQTT broker %s refused the connection: %s", self._where, reason)
        elif not self._subscriptions:
            link.ready.set()
        else:
            _rc, link.sub_mid = client.subscribe(self._subscriptions)

    def _on_subscribe(self, client: Client, link: Link, mid: int, reasons: list[ReasonCode],
                      properties: Properties | None) -> None:
        if mid != link.sub_mid:
            return
        pairs = zip(self._subscriptions, reasons, strict=False)
        refused = [topic for (topic, _qos), rc in pairs if rc.is_failure]
        if refused:
            log.error("MQTT broker %s refused subscriptions %s", self._where, refused)
            self._lose(link, f"subscriptions refused: {refused}")
        else:
            link.ready.set()

    def _on_publish(self, client: Client, link: Link, mid: int, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.value == _NO_MATCHING_SUBSCRIBERS and mid in link.waiters:
            link.unmatched.add(mid)
        _acknowledged(link, mid)

    def _on_unsubscribe(self, client: Client, link: Link, mid: int, reasons: list[ReasonCode],
                        properties: Properties | None) -> None:
        _acknowledged(link, mid)  # MQTT 3.1.1's UNSUBACK carries no reason; 5's are not checked

    def _on_message(self, client: Client, link: Link, msg: MQTTMessage) -> None:
        self._received += 1
        if self._inbound is None:  # nobody consumes: acknowledge and forget
            client.ack(msg.mid, msg.qos)
            return
        try:
            self._pending_send.send_nowait(
                MqttInbound(msg.topic, bytes(msg.payload), msg.qos, msg.mid, link.epoch,
                            self._client_id))
        except trio.WouldBlock:
            if msg.qos == 0:
                log.warning("MQTT inbound queue full on %s: dropped a QoS 0 message on %s",
                            self._where, msg.topic)
            else:
                self._lose(link, "inbound queue full; the broker will redeliver")


def _acknowledged(link: Link, mid: int) -> None:
    """A PUBACK or UNSUBACK: wake its waiter, which finds its entry gone."""
    waiter = link.waiters.pop(mid, None)
    if waiter is not None:
        waiter.set()
