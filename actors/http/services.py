"""What the HTTP app talks to: the handles the gateway supervisor gives it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from actors.events import EventBus
from actors.ledger import Ledger
from kosmo.db import Database


@dataclass(frozen=True)
class Services:
    """What the HTTP front talks to; owned by the gateway supervisor."""

    db: Database
    ledger: Ledger
    broker_connected: Callable[[], bool]
    events: EventBus
    shutdown: trio.Event  # set when the gateway stops: long-lived connections close
    bridges: Callable[[], list[dict[str, Any]]] = list  # latest state of each bridge
