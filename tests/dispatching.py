"""What a dispatcher test starts with: an open database, this process's membership and the
messages handed so far (what the dispatcher gave the conversations actor)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from actors.membership import Membership
from kosmo.db import Database
from kosmo.messages import NewMessage


@dataclass
class Setup:
    db: Database
    membership: Membership
    handed: list[NewMessage] = field(default_factory=list)

    async def hand(self, messages: list[NewMessage]) -> None:
        """What the dispatcher calls with the messages it handed."""
        self.handed.extend(messages)


@asynccontextmanager
async def dispatching(database_url: str, client_id: str) -> AsyncIterator[Setup]:
    """Open the database and a membership (run it in the test's nursery); leave and close on
    the way out."""
    db = Database(database_url, size=4)
    await db.open()
    setup = Setup(db, Membership(db, client_id=client_id))
    try:
        yield setup
    finally:
        await setup.membership.leave()
        await db.close()
