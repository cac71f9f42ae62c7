"""The baseline of bench/accept.py: a hello-world POST route on the gateway's HTTP stack.

Same stack and settings as the gateway's HTTP front: Quart on quart-trio, served in this
process by Hypercorn's trio worker through ``actors.http.server.HttpFront`` (the gateway's own
Hypercorn configuration). The route has the gateway's path, reads and parses the JSON body and
answers a small JSON 201, so the two servers differ only in what the gateway does per send.

Prints ``listening <url>`` once the socket listens; stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal

import trio
from quart import Response, request
from quart_trio import QuartTrio

from actors.http.server import HttpFront
from kosmo.config import parse_bind


def create_app() -> QuartTrio:
    app = QuartTrio("hello")
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024, BODY_TIMEOUT=10)

    @app.post("/api/v1/messages")
    async def hello() -> Response:
        fields = json.loads(await request.get_data(cache=False))
        body = {"hello": fields.get("target_node_id"), "status": "pending"}
        return Response(json.dumps(body), status=201, mimetype="application/json")

    return app


async def serve(bind: tuple[str, int]) -> None:
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    shutdown.set()  # the front then finishes requests in progress and returns
                    return

            nursery.start_soon(watch)
            front = HttpFront(create_app(), bind, shutdown=shutdown, graceful_timeout=1.0)
            binds = await nursery.start(front.run)
            print("listening", binds[0], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", type=parse_bind, default=("127.0.0.1", 0), help="HOST:PORT")
    trio.run(serve, parser.parse_args().bind)


if __name__ == "__main__":
    main()
