"""The live stream: ``GET /api/v1/stream`` (websocket). Being written."""

from __future__ import annotations

from typing import Any


def register_stream(app: Any, settings: Any, services: Any) -> None:
    """Add the websocket route to ``app``."""
