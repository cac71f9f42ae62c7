"""The radio link: a ``meshtastic`` SerialInterface or TCPInterface, driven from Trio.

Rules:
- Threads. The library connects and downloads the radio's configuration synchronously (up to
  ``connect_timeout``), reads on its own reader thread and publishes events through pypubsub on
  its single "publishing" thread. We build the interface with ``connectNow=False`` (so we know
  the object before its first event), connect it in a worker thread and call ``sendText`` in a
  worker thread, one call at a time (``_send_limiter``). A connect still running when we stop
  is abandoned; the thread closes what it opened.
- pypubsub keeps weak references: we subscribe bound methods of this object, which the daemon
  keeps alive, and unsubscribe when ``run`` ends. Events of any interface but the current one
  (an older link, another bridge in the same process) are ignored.
- Events to Trio. Routing results and received texts become frozen dataclasses sent on the
  ``events`` channel with ``trio.from_thread.run``, which blocks the publishing thread while the
  channel is full. Policy: never drop a routing result or a text. A slow consumer (it only
  writes to SQLite) slows the library's publishing thread and the backlog waits in the
  library's own queue. Events that arrive once the Trio run has ended are dropped: the bridge
  is stopping, and the next start reconciles its SQLite state.
- Link lifecycle. Connect with backoff (doubling, jitter); a lost link (reader thread ended:
  unplugged, TCP closed, or ``mark_broken`` after a failed write) is closed in a worker thread,
  bounded by ``close_timeout``, and a new interface is connected. The library's own TCP
  reconnect (it re-opens the socket once after EOF) is left alone: when it succeeds the link
  simply goes on.
- Each received packet's sender goes to ``heard`` in the Trio thread (bridge/coverage.py).
- Each connect reads what the radio says about itself (node, region, modem preset, queue
  size: bridge/radio_info.py) into the link's ``info``.
- ``serial:auto`` picks the one Meshtastic serial port found; none or several is a failed
  attempt (the radio may be plugged in later), logged with the ports seen.
- The library re-sends every packet the radio has not confirmed with a QueueStatus at each
  later write; Meshtastic firmware confirms every packet, so a packet reaches the radio once.
- Packet ids are chosen before the hand-over (``new_packet_id``), so the sender can commit a
  text's id with its ``sending`` mark and a restart knows which routing results are its own.
  The library has no parameter for the id (``sendData`` always takes the next one from
  ``MeshInterface._generatePacketId``), so ``send_as`` overrides that method on the interface
  *instance* for the one ``sendText`` call and removes the override after it. This is the one
  place the bridge reaches into the library. It is safe because every draw and every send on
  an interface hold ``_send_limiter`` (a capacity of 1; an abandoned send keeps it until its
  thread ends), and the library draws ids only when asked to send a packet (its heartbeats
  and configuration requests are not mesh packets). ``new_packet_id`` draws from the
  library's own generator, so its id scheme is kept. tests/test_bridge_units.py and
  tests/test_bridge.py fail if a library upgrade breaks this; should it break unnoticed, the
  text goes out under the library's id, which ``send_text`` logs and returns (only a restart
  between the hand-over and its record then falls back to ``unknown_after_restart``).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from bridge.coverage import packet_heard
from bridge.radio_info import RadioInfo, radio_info
from kosmo.clock import utcnow
from kosmo.wire import Heard

log = logging.getLogger(__name__)

TOPIC_ROUTING = "meshtastic.receive.routing"
TOPIC_TEXT = "meshtastic.receive.text"
TOPIC_LOST = "meshtastic.connection.lost"
TOPIC_RECEIVE = "meshtastic.receive"  # every packet received: the parent of text and routing


class RadioUnavailable(Exception):
    """No radio link right now, or the hand-over failed."""


@dataclass(frozen=True)
class Device:
    kind: str  # "tcp" or "serial"
    host: str | None = None
    port: int = 4403
    path: str | None = None  # None with serial: the one port found

    @classmethod
    def parse(cls, text: str) -> Device:
        kind, sep, rest = text.partition(":")
        if kind == "tcp" and sep and rest:
            host, colon, port = rest.rpartition(":")
            if colon and port.isascii() and port.isdigit() and host and 0 < int(port) < 65536:
                return cls("tcp", host=host.strip("[]"), port=int(port))
            if not colon or not (port.isascii() and port.isdigit()):
                return cls("tcp", host=rest.strip("[]"))
        if kind == "serial" and sep and rest:
            return cls("serial", path=None if rest == "auto" else rest)
        raise ValueError(f"{text!r} is not tcp:HOST[:PORT], serial:PATH or serial:auto")

    def __str__(self) -> str:
        if self.kind == "tcp":
            return f"tcp:{self.host}:{self.port}"
        return f"serial:{self.path or 'auto'}"


@dataclass(frozen=True)
class RoutingResult:
    link: int
    packet_id: int  # the request id: our packet
    from_node: int
    error: str  # Routing.Error name; NONE is an acknowledgement


@dataclass(frozen=True)
class TextReceived:
    link: int
    from_node: int
    to_node: int
    packet_id: int
    text: str
    reply_id: int | None


RadioEvent = RoutingResult | TextReceived


class Link:
    """One connected interface."""

    def __init__(self, epoch: int, iface: Any, info: RadioInfo) -> None:
        self.epoch, self.iface, self.info = epoch, iface, info
        self.lost = trio.Event()
        self.reason: str | None = None

    def queue_free(self) -> int | None:
        """Free places in the radio's transmit queue, as it last reported (None: not yet)."""
        status = getattr(self.iface, "queueStatus", None)
        return None if status is None else int(status.free)


class _Attempt:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.lock = threading.Lock()
        self.abandoned = False
        self.result: tuple[Any, RadioInfo] | None = None


def next_packet_id(iface: Any) -> int:
    """Draw a packet id from the interface's generator (never 0: the firmware's "unset")."""
    return int(iface._generatePacketId() or iface._generatePacketId())


def send_as(iface: Any, packet_id: int, destination: str, text: str) -> int:
    """``sendText`` with ``packet_id`` as the packet's id; return the id the packet went as.
    Callers hold the radio's send limiter (see the module docstring)."""
    iface._generatePacketId = lambda: packet_id
    try:
        packet = iface.sendText(text, destinationId=destination, wantAck=True)
    finally:
        del iface._generatePacketId  # the class's own generator again
    return int(packet.id)


class Radio:
    def __init__(self, device: Device, events: trio.MemorySendChannel[RadioEvent], *,
                 connect_timeout: int = 30, close_timeout: float = 3.0,
                 backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.device = device
        self._events = events
        self._connect_timeout, self._close_timeout = connect_timeout, close_timeout
        self._backoff = backoff
        self._link: Link | None = None
        self._up = trio.Event()
        self._epoch = 0
        self._current: tuple[Any, int] | None = None  # the interface events are taken from
        self._current_lock = threading.Lock()
        self._send_limiter = trio.CapacityLimiter(1)
        self._token: trio.lowlevel.TrioToken | None = None
        self._dead: set[int] = set()  # epochs whose connection the library reported lost
        self.changed: Callable[[], None] = lambda: None  # called when a link comes or goes
        self.heard: Callable[[Heard | None], None] = lambda _: None  # a packet's sender

    @property
    def link(self) -> Link | None:
        return self._link

    async def wait_link(self) -> Link:
        while self._link is None or self._link.lost.is_set():
            await self._up.wait()
        return self._link

    def mark_broken(self, link: Link, reason: str) -> None:
        if not link.lost.is_set():
            link.reason = reason
            link.lost.set()

    async def new_packet_id(self, link: Link) -> int:
        """The packet id for the next text on ``link``, from the library's own generator."""
        async with self._send_limiter:
            try:
                return next_packet_id(link.iface)
            except Exception as exc:  # MeshInterfaceError: the interface is not connected
                raise RadioUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def send_text(self, link: Link, destination: str, text: str, packet_id: int) -> int:
        """Hand a text to the radio as packet ``packet_id``, asking for an acknowledgement;
        return the packet id it went as (``packet_id`` unless the library ignored it)."""
        if link.lost.is_set():
            raise RadioUnavailable(f"radio link to {self.device} is down")
        try:
            sent_as = await trio.to_thread.run_sync(
                send_as, link.iface, packet_id, destination, text,
                limiter=self._send_limiter, abandon_on_cancel=True)
        except Exception as exc:  # the library raises OSError, MeshInterfaceError, ...
            raise RadioUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if sent_as != packet_id:
            log.error("the meshtastic library sent packet %d instead of the chosen %d: its "
                      "packet id generation changed (see bridge/radio.py)", sent_as, packet_id)
        return sent_as

    async def run(self, *, task_status: trio.TaskStatus[RadioInfo] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep one link up, forever; started(info) once the first link is connected."""
        from pubsub import pub  # comes with meshtastic, which only a bridge needs

        self._token = trio.lowlevel.current_trio_token()
        for listener, topic in self._listeners():
            pub.subscribe(listener, topic)
        failures, started = 0, False
        try:
            with self._events:
                while True:
                    link = await self._connect(failures)
                    if link is None:
                        failures += 1
                        continue
                    failures = 0
                    self._link = link
                    if link.epoch in self._dead:  # lost before we took it over
                        self.mark_broken(link, "the radio closed the connection")
                    self._up.set()
                    self.changed()
                    info = link.info
                    log.info("radio %s connected: %s (%s), region %s, preset %s (%s)",
                             self.device, info.node_id, info.long_name, info.region,
                             info.modem_preset or "custom", info.lora.describe())
                    if not started:
                        started = True
                        task_status.started(info)
                    try:
                        await link.lost.wait()
                    finally:
                        self._drop(link)
                        with trio.CancelScope(shield=True):
                            await self._close(link.iface)
                    log.warning("radio %s link lost: %s; reconnecting", self.device,
                                link.reason or "closed")
        finally:
            for listener, topic in self._listeners():
                pub.unsubscribe(listener, topic)

    def _listeners(self) -> list[tuple[Callable[..., None], str]]:
        return [(self._on_routing, TOPIC_ROUTING), (self._on_text, TOPIC_TEXT),
                (self._on_lost, TOPIC_LOST), (self._on_packet, TOPIC_RECEIVE)]

    def _drop(self, link: Link) -> None:
        if self._link is link:
            self._link = None
            self._up = trio.Event()
            self.changed()
        with self._current_lock:
            if self._current is not None and self._current[0] is link.iface:
                self._current = None

    async def _connect(self, failures: int) -> Link | None:
        if failures:
            delay = min(self._backoff[1], self._backoff[0] * 2.0 ** min(failures - 1, 20))
            await trio.sleep(delay * random.uniform(0.75, 1.0))
        self._epoch += 1
        attempt = _Attempt(self._epoch)
        try:
            await trio.to_thread.run_sync(self._connect_blocking, attempt,
                                          abandon_on_cancel=True)
        except trio.Cancelled:
            with attempt.lock:
                attempt.abandoned = True
                result, attempt.result = attempt.result, None
            if result is not None:
                self._close_now(result[0])
            raise
        except Exception as exc:  # OSError, serial errors, MeshInterfaceError, ...
            log.warning("radio %s: connect failed (attempt %d): %s: %s", self.device,
                        failures + 1, type(exc).__name__, exc)
            return None
        assert attempt.result is not None
        iface, info = attempt.result
        return Link(attempt.epoch, iface, info)

    def _make_interface(self) -> Any:
        if self.device.kind == "tcp":
            from meshtastic.tcp_interface import TCPInterface

            return TCPInterface(self.device.host or "", portNumber=self.device.port,
                                connectNow=False, timeout=self._connect_timeout)
        from meshtastic.serial_interface import SerialInterface
        from meshtastic.util import findPorts

        path = self.device.path
        if path is None:
            ports = findPorts(True)
            if len(ports) != 1:
                raise RadioUnavailable(f"serial:auto found {len(ports)} Meshtastic ports "
                                       f"{ports}: name one with serial:PATH" if ports else
                                       "serial:auto found no Meshtastic serial port")
            path = ports[0]
        return SerialInterface(path, connectNow=False, timeout=self._connect_timeout)

    def _connect_blocking(self, attempt: _Attempt) -> None:
        iface = self._make_interface()
        with self._current_lock:
            self._current = (iface, attempt.epoch)
        try:
            iface.connect()
            iface.waitForConfig()
            info = radio_info(iface)
        except BaseException:
            self._close_now(iface)
            raise
        with attempt.lock:
            if not attempt.abandoned:
                attempt.result = (iface, info)
                return
        self._close_now(iface)  # run() was cancelled meanwhile

    async def _close(self, iface: Any) -> None:
        with trio.move_on_after(self._close_timeout):
            await trio.to_thread.run_sync(self._close_now, iface, abandon_on_cancel=True)

    @staticmethod
    def _close_now(iface: Any) -> None:
        try:
            iface.close()
        except Exception as exc:  # closing a broken link may fail in many ways; it is gone
            log.debug("closing the radio interface: %s: %s", type(exc).__name__, exc)

    # --- pypubsub listeners: they run on the library's publishing thread ------------------

    def _epoch_of(self, interface: Any) -> int | None:
        with self._current_lock:
            if self._current is not None and self._current[0] is interface:
                return self._current[1]
        return None

    def _to_trio(self, event: RadioEvent) -> None:
        token = self._token
        if token is None:
            return
        try:
            trio.from_thread.run(self._events.send, event, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled, trio.BrokenResourceError,
                trio.ClosedResourceError):
            log.debug("radio event dropped while stopping: %s", event)

    def _on_routing(self, packet: dict[str, Any], interface: Any) -> None:
        epoch = self._epoch_of(interface)
        decoded = packet.get("decoded") or {}
        request_id = decoded.get("requestId")
        if epoch is None or request_id is None:
            return
        error = (decoded.get("routing") or {}).get("errorReason", "NONE")
        self._to_trio(RoutingResult(epoch, int(request_id), int(packet.get("from", 0)),
                                    str(error)))

    def _on_text(self, packet: dict[str, Any], interface: Any) -> None:
        epoch = self._epoch_of(interface)
        decoded = packet.get("decoded") or {}
        text = decoded.get("text")
        if epoch is None or not isinstance(text, str):
            return
        reply_id = decoded.get("replyId")
        self._to_trio(TextReceived(epoch, int(packet.get("from", 0)), int(packet.get("to", 0)),
                                   int(packet.get("id", 0)), text,
                                   int(reply_id) if reply_id else None))

    def _on_packet(self, packet: dict[str, Any], interface: Any) -> None:
        if self._epoch_of(interface) is not None:
            self._run_sync(self.heard, packet_heard(packet, utcnow()))

    def _on_lost(self, interface: Any) -> None:
        if (epoch := self._epoch_of(interface)) is not None:
            self._run_sync(self._lost, epoch)

    def _run_sync(self, fn: Callable[[Any], None], arg: Any) -> None:
        token = self._token
        if token is not None:
            try:
                trio.from_thread.run_sync(fn, arg, trio_token=token)
            except trio.RunFinishedError:
                pass

    def _lost(self, epoch: int) -> None:
        self._dead = {e for e in self._dead if e >= self._epoch - 1} | {epoch}
        link = self._link
        if link is not None and link.epoch == epoch:
            self.mark_broken(link, "the radio closed the connection")
