"""The web console at ``/``, its files, and the API reference page at ``/docs``.

Rules:
- The console is static files shipped in the package (``kosmo/console/``: HTML, CSS, plain
  JavaScript, no build step) and talks to the gateway only through the public HTTP API and the
  websocket stream, like any other client. It learns how to sign in from the one public route
  ``GET /api/v1/console-config``.
- Nothing is loaded from another host: the console's page carries a Content-Security-Policy that
  allows only this origin (and websockets back to it); so does ``/docs``, a small page of
  this package (``reference.html``/``.js``) that renders ``/openapi.json``.
- ``/console/<name>`` serves only the files listed in the package's folder, by exact name: no
  paths, no directory listing, 404 problem for anything else.
- These routes are public and left out of the OpenAPI document (they are not the API), except
  ``/api/v1/console-config``, which is part of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from quart import Response, request, send_file
from quart_schema import document_response, hide, security_scheme

from kosmo.api import schemas
from kosmo.api.problems import Problem

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from kosmo.config import Settings

ASSETS = "/console"
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")


def _files() -> Path:
    import kosmo

    return Path(kosmo.__file__).resolve().parent / "console"


def register_console(app: QuartTrio, settings: Settings) -> None:
    """Add ``/``, ``/docs``, ``/console/<name>`` and ``/api/v1/console-config`` to ``app``."""
    folder = _files()
    served = {path.name for path in folder.iterdir() if path.is_file()}

    async def page(name: str) -> Response:
        response = await send_file(folder / name, mimetype="text/html")
        response.headers["Content-Security-Policy"] = PAGE_POLICY.format(host=request.host)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/")
    @hide
    async def console_page() -> Response:
        return await page("index.html")

    @app.get("/docs")
    @hide
    async def reference_page() -> Response:
        return await page("reference.html")

    @app.get(f"{ASSETS}/<name>")
    @hide
    async def console_file(name: str) -> Response:
        if name not in served:
            raise Problem(404, "not-found", "no such file")
        response = await send_file(folder / name)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/api/v1/console-config")
    @document_response(schemas.ConsoleConfig)
    @security_scheme([])
    async def console_config() -> dict[str, Any]:
        """How a client signs in here and the longest text a message may have (UTF-8 bytes)."""
        return {"auth_mode": settings.auth_mode, "max_text_bytes": settings.max_text_bytes}
