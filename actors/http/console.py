"""The web console at ``/``, its files, and the locally served Swagger UI behind ``/docs``.

Rules:
- The console is static files shipped in the package (``kosmo/console/``: HTML, CSS, plain
  JavaScript, no build step) and talks to the gateway only through the public HTTP API and the
  websocket stream, like any other client. It learns how to sign in from the one public route
  ``GET /api/v1/console-config``.
- Nothing is loaded from another host: the console's page carries a Content-Security-Policy that
  allows only this origin (and websockets back to it), and ``/docs`` uses the vendored
  swagger-ui-dist files (licence kept beside them) instead of quart-schema's CDN defaults.
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
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"


def _files() -> Path:
    import kosmo

    return Path(kosmo.__file__).resolve().parent / "console"


def register_console(app: QuartTrio, settings: Settings) -> None:
    """Add ``/``, ``/console/<name>`` and ``/api/v1/console-config`` to ``app``, and point
    quart-schema's Swagger UI at the vendored files."""
    folder = _files()
    served = {path.name for path in folder.iterdir() if path.is_file()}
    app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = f"{ASSETS}/{SWAGGER_JS}"
    app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = f"{ASSETS}/{SWAGGER_CSS}"

    @app.get("/")
    @hide
    async def console_page() -> Response:
        response = await send_file(folder / "index.html", mimetype="text/html")
        host = request.host
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            f"connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")
        response.headers["Cache-Control"] = "no-cache"
        return response

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
