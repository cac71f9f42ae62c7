"""What the HTTP app talks to: the handles the gateway supervisor gives it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import trio

from actors.events import EventBus
from actors.ledger import Ledger
from actors.metrics import GatewayMetrics
from kosmo.db import Database
from kosmo.messages import Admission


async def _no_bridges() -> list[dict[str, Any]]:
    return []


async def _admit_all(user_id: UUID, node_id: str, text: str) -> Admission:
    return Admission()  # accepted, no estimate


@dataclass(frozen=True)
class Services:
    """What the HTTP front talks to; owned by the gateway supervisor."""

    db: Database
    ledger: Ledger
    broker_connected: Callable[[], bool]
    events: EventBus
    shutdown: trio.Event  # set when the gateway stops: long-lived connections close
    bridges: Callable[[], Awaitable[list[dict[str, Any]]]] = _no_bridges  # latest states
    # The dispatcher's admission of a send (user, node, text), asked before any debit.
    admit: Callable[[UUID, str, str], Awaitable[Admission]] = _admit_all
    # Where the front counts the accept latency and the refusals it answers itself.
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
