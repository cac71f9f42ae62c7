"""A webhook receiver for tests: a real HTTP server on 127.0.0.1, in its own thread.

It records every request (headers, body, arrival time) and answers with the next status of
``answers`` (then ``default``); ``hang`` makes it accept requests and never answer (until
closed). ``verified`` checks each recorded request with the reference Standard Webhooks
verifier, unchanged.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import standardwebhooks


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, answers: list[int] | None = None, *, default: int = 200,
                 hang: bool = False) -> None:
        self.answers = list(answers or [])
        self.default = default
        self.hang = hang
        self.received: list[Received] = []
        self._closed = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.received.append(Received(
                        {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                    status = receiver.answers.pop(0) if receiver.answers else receiver.default
                if receiver.hang:
                    receiver._closed.wait(60)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def verified(self, secret: str) -> list[Any]:
        """Every request's body as JSON, each verified with ``secret`` (raises if one fails), in
        event order (deliveries run concurrently, so they may arrive in another order)."""
        hook = standardwebhooks.Webhook(secret)
        return [hook.verify(r.body, r.headers)
                for r in sorted(self.received, key=lambda r: r.id)]

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def receiving(answers: list[int] | None = None, **kw: Any) -> Iterator[Receiver]:
    receiver = Receiver(answers, **kw)
    try:
        yield receiver
    finally:
        receiver.close()
