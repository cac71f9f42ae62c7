"""One connection attempt of the MQTT actor (``actors.mqtt``): a fresh paho ``Client``, its
socket, and what the Trio side knows about it.

Rules
- One ``Link`` per attempt, numbered by ``epoch``, never reused: what belongs to a lost
  connection (its PUBACK waiters, the acks of its messages) is recognised by its link or epoch.
- Only the MQTT actor reads and writes a link, from the Trio thread; the one exception is the
  hand-over of the socket from the connect thread, under ``lock`` (``abandoned``/``handed_over``).
- ``lost`` is set once and never cleared; it cancels ``scope`` and wakes every PUBACK waiter.
  An entry left in ``waiters`` after that means "not acknowledged".
- TLS: the system's CAs and a verified host name (what paho's ``tls_set()`` builds), with a
  socket class that closes itself when its handshake fails (paho leaves it open: a file
  descriptor leaked per failed attempt).
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import trio
from paho.mqtt.client import Client


class Link:
    """One connection attempt: a fresh paho Client and what the Trio side knows about it."""

    def __init__(self, client: Client, epoch: int) -> None:
        self.client = client
        self.epoch = epoch
        self.sock: Any = None  # paho's SocketLike, until on_socket_close
        self.want_write = False
        self.writable = trio.lowlevel.ParkingLot()
        self.ready = trio.Event()  # CONNACK and SUBACK received
        self.lost = False
        self.reason: str | None = None
        self.scope = trio.CancelScope()  # cancelled when the connection is lost
        # mid -> publish() awaiting its PUBACK, or unsubscribe() its UNSUBACK. The answer
        # removes the entry and wakes the waiter; a lost connection only wakes it, so an entry
        # left behind means "not acked".
        self.waiters: dict[int, trio.Event] = {}
        self.unmatched: set[int] = set()  # mids whose MQTT 5 PUBACK said "no subscribers"
        self.sub_mid: int | None = None
        self.lock = threading.Lock()  # hands the socket over from the connect thread
        self.abandoned = self.handed_over = False


class _ClosingSSLSocket(ssl.SSLSocket):
    # paho does not close the socket when the TLS handshake fails (ResourceWarning, fd leak).
    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context() -> ssl.SSLContext:
    """What client.tls_set() builds (system CAs, verified host name), with the socket class
    above."""
    context = ssl.create_default_context()
    context.sslsocket_class = _ClosingSSLSocket
    return context
