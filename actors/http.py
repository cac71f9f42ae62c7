"""The HTTP front as an actor: Hypercorn's trio server inside our nursery (no worker process).

Rules: ready (``started(binds)``) only once the socket is listening; it stops gracefully when
``shutdown`` is set, letting requests in progress finish within ``graceful_timeout`` seconds.
"""

from __future__ import annotations

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio


class HttpFront:
    def __init__(self, app: QuartTrio, bind: tuple[str, int], *, shutdown: trio.Event,
                 graceful_timeout: float = 5.0) -> None:
        self._app = app
        self._shutdown = shutdown
        host, port = bind
        self._config = Config()
        self._config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        self._config.accesslog = None
        self._config.errorlog = "-"
        self._config.graceful_timeout = graceful_timeout
        self._config.keep_alive_timeout = 30
        self._config.read_timeout = 30
        self._config.h11_max_incomplete_size = 16 * 1024
        # Streams are quiet for long stretches: ping them, so that a live client's pongs count
        # as reads for read_timeout and a dead one is noticed. Clients send nothing we read.
        self._config.websocket_ping_interval = 10
        self._config.websocket_max_message_size = 4 * 1024

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        await serve(self._app, self._config, shutdown_trigger=self._shutdown.wait,
                    task_status=task_status)
