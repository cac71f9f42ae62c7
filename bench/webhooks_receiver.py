"""The webhook receivers of bench/webhooks.py: when did each delivery reach its endpoint?

Runs in its own process (Trio and h11), so neither the gateway nor the event producer delays
its clock readings. It listens on ``--live`` ports of 127.0.0.1 that answer every POST ``200``
at once (keep-alive) and on one *dead* port that accepts connections, reads what comes and never
answers. It prints ``ready <live port> ... <dead port>``, then reads commands on stdin:

- ``dump``: one line per request received since the last dump, ``<webhook-id> <live port index>
  <monotonic seconds of arrival>`` (``time.monotonic()``, a clock shared by all processes of the
  machine), then ``end``.
- end of stdin: exit.

The arrival time is taken when the request is complete (head and body), before the answer.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial

import h11
import trio

ANSWER_HEADERS = [("content-type", "text/plain"), ("content-length", "2")]


class Receiver:
    def __init__(self) -> None:
        self.seen: list[tuple[bytes, int, float]] = []
        self.dead_connections = 0

    async def live(self, index: int, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        webhook_id = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    webhook_id = dict(event.headers).get(b"webhook-id", b"-")
                elif isinstance(event, h11.EndOfMessage):
                    self.seen.append((webhook_id, index, time.monotonic()))
                    out = conn.send(h11.Response(status_code=200, headers=ANSWER_HEADERS))
                    out += conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def dead(self, stream: trio.SocketStream) -> None:
        self.dead_connections += 1
        try:
            while await stream.receive_some(65536):
                pass  # read and drop; never answer
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


async def main(live: int) -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        ports: list[int] = []
        for index in range(live):
            listeners = await nursery.start(partial(
                trio.serve_tcp, _bind(receiver.live, index), 0, host="127.0.0.1"))
            ports.append(listeners[0].socket.getsockname()[1])
        listeners = await nursery.start(partial(trio.serve_tcp, receiver.dead, 0,
                                                host="127.0.0.1"))
        ports.append(listeners[0].socket.getsockname()[1])
        print("ready", *ports, flush=True)
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        buffer = b""
        while data := await stdin.receive_some(4096):
            buffer += data
            *commands, buffer = buffer.split(b"\n")
            for command in commands:
                if command.strip() == b"dump":
                    seen, receiver.seen = receiver.seen, []
                    lines = [f"{w.decode()} {i} {t:.6f}" for w, i, t in seen]
                    sys.stdout.write("".join(line + "\n" for line in lines) + "end\n")
                    sys.stdout.flush()
        nursery.cancel_scope.cancel()


def _bind(handler: Callable[[int, trio.SocketStream], Awaitable[None]],
          index: int) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def serve(stream: trio.SocketStream) -> None:
        await handler(index, stream)
    return serve


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, default=2, help="live endpoints (default 2)")
    trio.run(main, parser.parse_args().live)
