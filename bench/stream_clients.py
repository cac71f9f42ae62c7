"""The websocket clients of bench/inbound.py: many live streams in one process, each event timed.

Opens one ``GET /api/v1/stream?user_id=...`` websocket per user given (trio-websocket over a
socket this process owns, as in tests/test_stream.py), at most ``--concurrency`` handshakes at
a time, then prints ``ready <connected> <failed> <seconds>``. Each frame is stored with
``time.monotonic()`` (a clock shared by all processes of the machine) as it arrives and parsed
only when asked, so that the clock readings are not delayed by our own parsing.

Commands on stdin, one per line:
- ``dump``: print one line per frame received since the last dump, then ``end``:
  ``i <seq> <t>`` for a reply (``message.inbound``, text ``bench <seq> ...``),
  ``s <message> <status> <t>`` for a ``message.status`` event on a bench message
  (its id ends with the message number in hex), ``o <type>`` for anything else,
  and ``c <code> <count>`` for streams the gateway closed (1013: too slow, cut off).
- stdin closing (or ``--max-seconds``): close every socket and exit.

A stream the gateway closes is counted and not reopened.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

PATH = "/api/v1/stream"


class Clients:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        parts = urlsplit(args.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.frames: list[tuple[float, str]] = []
        self.closed: Counter[int] = Counter()
        self.open: list[tuple[trio.SocketStream, WebSocketConnection]] = []
        self.failed = 0

    async def connect(self, nursery: trio.Nursery, user: str,
                      limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            stream = None
            try:
                with trio.fail_after(30):
                    stream = await trio.open_tcp_stream(self.host, self.port)
                    ws = await wrap_client_stream(nursery, stream, self.host,
                                                  f"{PATH}?user_id={user}",
                                                  message_queue_size=256)
            except (OSError, trio.TooSlowError, ConnectionClosed, Exception) as exc:
                self.failed += 1
                if self.failed <= 3:
                    print(f"stream_clients: connect failed: {exc!r}", file=sys.stderr)
                if stream is not None:
                    await stream.aclose()
                return
        self.open.append((stream, ws))
        nursery.start_soon(self.read, ws)

    async def read(self, ws: WebSocketConnection) -> None:
        append, clock = self.frames.append, time.monotonic
        try:
            while True:
                message = await ws.get_message()
                append((clock(), message))  # type: ignore[arg-type]
        except ConnectionClosed as exc:
            self.closed[exc.reason.code if exc.reason else 0] += 1

    def dump(self) -> str:
        frames = self.frames.copy()  # the readers hold this list: empty it in place
        self.frames.clear()
        out = []
        prefix = self.args.message_prefix
        for at, raw in frames:
            event = json.loads(raw)
            kind, message = event.get("type"), event.get("message", {})
            if kind == "message.inbound":
                text = message.get("text", "")
                if text.startswith("bench "):
                    out.append(f"i {text.split()[1]} {at!r}")
                    continue
            elif kind == "message.status" and message.get("message_id", "").startswith(prefix):
                number = int(message["message_id"][len(prefix):], 16)
                out.append(f"s {number} {message.get('status')} {at!r}")
                continue
            out.append(f"o {kind}")
        out.extend(f"c {code} {count}" for code, count in sorted(self.closed.items()))
        self.closed.clear()
        out.append("end")
        return "\n".join(out) + "\n"

    async def close_all(self) -> None:
        """Close every socket (the gateway sees the disconnect and unsubscribes). Called once
        the connections' tasks are cancelled: a websocket close handshake here would race the
        gateway's own frames (a ping answered in the closing state is an error in wsproto)."""
        for stream, _ws in self.open:
            await stream.aclose()
        self.open.clear()


async def main(args: argparse.Namespace) -> None:
    clients = Clients(args)
    users = [line for line in args.users.split(",") if line]
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    with trio.move_on_after(args.max_seconds):
        async with trio.open_nursery() as nursery:
            started = time.monotonic()
            limiter = trio.CapacityLimiter(args.concurrency)
            async with trio.open_nursery() as connecting:
                for user in users:
                    connecting.start_soon(clients.connect, nursery, user, limiter)
            await stdout.send_all(f"ready {len(clients.open)} {clients.failed} "
                                  f"{time.monotonic() - started:.3f}\n".encode())
            buffer = b""
            while True:
                if b"\n" not in buffer:
                    data = await stdin.receive_some(4096)
                    if not data:
                        break
                    buffer += data
                    continue
                line, buffer = buffer.split(b"\n", 1)
                if line.strip() == b"dump":
                    await stdout.send_all(clients.dump().encode())
            nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await clients.close_all()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the gateway, http://host:port")
    parser.add_argument("--users", required=True, help="user ids, comma-separated, one stream each")
    parser.add_argument("--message-prefix", required=True,
                        help="the bench's outbound message ids: this prefix, then hex digits")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes at a time")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    arguments = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    trio.run(main, arguments)
