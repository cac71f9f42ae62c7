"""The simulated radio on TCP, where a Meshtastic device serves its API (port 4403).

Rules:
- Thin I/O over ``SimRadio``: received bytes go to ``receive``, ``take_outgoing`` goes to the
  socket, and a clock task runs the radio's timers whether or not a client is connected (ACKs
  due while nobody is connected wait in the radio, as they wait in a real device).
- Simulated time is wall time since the start times ``time_scale``, never decreasing.
- One client at a time: a new connection replaces the previous one, as the firmware's TCP API
  does. (The meshtastic library reconnects by itself a second after losing its socket, so two
  library clients on one simulator keep replacing each other.)
- Backpressure: once ``MAX_BACKLOG`` messages wait for a client that does not read, the
  server stops reading from it until the writer has drained them.
- A client's EOF closes the connection at once: the library's ``close()`` waits for it.
- ``task_status.started(port)`` once the listener is bound.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import trio

from bridge.sim.config import OUR_NODE_NUM, SimConfig, make_nodes
from bridge.sim.protocol import FrameDecoder, parse_node_id
from bridge.sim.radio import SimRadio

log = logging.getLogger(__name__)

DEFAULT_PORT = 4403
READ_SIZE = 4096
MAX_BACKLOG = 256


class _Link:
    """One client connection: its stream, its cancel scope, its writer's wake-ups."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.cancel_scope = trio.CancelScope()
        self._dirty = trio.Event()
        self._drained = trio.Event()

    def poke(self) -> None:
        self._dirty.set()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    async def write_loop(self, radio: SimRadio) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()  # before taking: later output sets the new one
            data = radio.take_outgoing()
            if data:
                await self.stream.send_all(data)
            self._drained.set()
            self._drained = trio.Event()


class SimRadioServer:
    def __init__(self, radio: SimRadio, *, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError("time_scale must be positive")
        self.radio = radio
        self.time_scale = time_scale
        self.connections = 0  # accepted so far
        self._t0 = 0.0
        self._sim = 0.0
        self._wake = trio.Event()
        self._link: _Link | None = None

    def now(self) -> float:
        """Simulated seconds since ``run`` started."""
        self._sim = max(self._sim, (trio.current_time() - self._t0) * self.time_scale)
        return self._sim

    async def run(self, port: int = DEFAULT_PORT, *, host: str = "127.0.0.1",
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self._t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._clock)
            await nursery.start(trio.serve_listeners, self._serve_client, listeners)
            bound: int = listeners[0].socket.getsockname()[1]
            log.info("simulated radio listening on %s:%d", host, bound)
            task_status.started(bound)

    async def _clock(self) -> None:
        while True:
            self.radio.advance(self.now())
            if self._link is not None and self.radio.backlog:
                self._link.poke()
            deadline = self.radio.next_deadline()
            self._wake = trio.Event()
            wall = math.inf if deadline is None else self._t0 + deadline / self.time_scale
            with trio.move_on_at(wall) as waited:
                await self._wake.wait()
            if waited.cancelled_caught and deadline is not None:
                self._sim = max(self._sim, deadline)  # float rounding must not spin the loop

    def _poke(self) -> None:
        self._wake.set()
        if self._link is not None:
            self._link.poke()

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            link = _Link(stream)
            if self._link is not None:
                log.info("a new client replaces the connected one")
                self._link.cancel_scope.cancel()
            self._link = link
            self.connections += 1
            self.radio.connect(self.now())
            log.info("client connected")
            try:
                with link.cancel_scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(link.write_loop, self.radio)
                        await self._read_loop(link)
                        nursery.cancel_scope.cancel()
            except* trio.BrokenResourceError:
                log.info("client connection lost")
            finally:
                if self._link is link:
                    self._link = None
                    self.radio.disconnect(self.now())
                    log.info("client disconnected")

    async def _read_loop(self, link: _Link) -> None:
        decoder = FrameDecoder()
        while data := await link.stream.receive_some(READ_SIZE):
            now = self.now()
            for payload in decoder.feed(data):
                self.radio.receive(payload, now)
            self._poke()
            while self.radio.backlog > MAX_BACKLOG:
                await link.wait_drained()


async def serve_radio(radio: SimRadio, port: int = DEFAULT_PORT, *, host: str = "127.0.0.1",
                      time_scale: float = 1.0,
                      task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``radio`` (built by the caller, who keeps it to read ``radio.stats``)."""
    await SimRadioServer(radio, time_scale=time_scale).run(port, host=host,
                                                            task_status=task_status)


async def serve_sim_radio(port: int = DEFAULT_PORT, *, nodes: int = 3,
                          hears: Iterable[str | int] | None = None,
                          node_id: str | int = OUR_NODE_NUM, host: str = "127.0.0.1",
                          time_scale: float = 1.0, latency: float = 2.0, loss: float = 0.0,
                          unreachable: Iterable[str | int] = (), silent: Iterable[str | int] = (),
                          auto_reply: bool = True, seed: int | None = None,
                          task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve a simulated radio whose own node is ``node_id``, reaching exactly the nodes of
    ``hears`` if given, else ``nodes`` generated ones; ``started(port)`` when listening.

    ``hears``, ``unreachable`` and ``silent`` take node ids (``"!deadbeef"``) or numbers; ids
    of the last two not reached are added as extra known nodes.
    """
    config = SimConfig(
        nodes=make_nodes(nodes, hears=None if hears is None else map(_num, hears),
                         unreachable=map(_num, unreachable), silent=map(_num, silent),
                         auto_reply=auto_reply),
        my_node_num=_num(node_id), latency=latency, loss=loss, auto_reply=auto_reply,
        seed=seed)
    radio = SimRadio(config, epoch=time.time())
    await serve_radio(radio, port, host=host, time_scale=time_scale, task_status=task_status)


def _num(node: str | int) -> int:
    return node if isinstance(node, int) else parse_node_id(node)
