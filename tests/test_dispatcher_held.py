"""What the bridges hold is read in aggregate: a dispatcher that starts (a restart, another
process) sees every held message of a conversation, counts them against the credit and lays
its queue after them."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio

from actors.dispatcher import Dispatcher
from actors.ledger import Ledger
from kosmo import wire
from kosmo.clock import utcnow
from kosmo.ledger_store import Accepted
from tests.conftest import WANDERER
from tests.dispatching import dispatching

NODE = "!a1b2c3d4"
CREDIT = 3
GAP = 2.0  # the pace's minimum gap, longer than a short text's airtime on LONG_FAST


async def test_a_fresh_dispatcher_counts_every_held_message_of_a_conversation(
        database_url: str) -> None:
    online = wire.BridgeState("b1", "online", {"credit": CREDIT, "min_gap_s": GAP})
    async with dispatching(database_url, "held") as setup, trio.open_nursery() as nursery:
        first = Dispatcher(setup.db, hand=setup.hand, message_ttl=3600, refresh=3600,
                           process_id=setup.membership.process_id)
        ledger = Ledger(setup.db, dispatch=first.accepted, message_ttl=3600)
        await nursery.start(setup.membership.run)
        async with trio.open_nursery() as before:
            await before.start(first.run)
            await before.start(ledger.run)
            await first.bridge_state("b1", online)
            for _ in range(5):  # one user, one node, one text size: one aggregate row
                assert isinstance(await ledger.send(WANDERER, NODE, "same size"), Accepted)
            await first.synced()
            assert len(setup.handed) == CREDIT
            assert (first.held(), first.waiting()) == ({"b1": CREDIT}, {"b1": 2})
            before.cancel_scope.cancel()

        fresh = Dispatcher(setup.db, hand=setup.hand, message_ttl=3600, refresh=3600,
                           process_id=setup.membership.process_id)
        await nursery.start(fresh.run)
        await fresh.bridge_state("b1", online)
        await fresh.synced()
        assert len(setup.handed) == CREDIT  # nothing more: the credit is spent
        assert (fresh.held(), fresh.waiting()) == ({"b1": CREDIT}, {"b1": 2})
        now = utcnow()
        admission = await fresh.admit(WANDERER, NODE, "same size")
        assert (admission.bridge_id, admission.queue_position) == ("b1", 3)
        # Laid after the three held and the two waiting, one gap each.
        assert admission.estimated_transmit_at is not None
        assert admission.estimated_transmit_at - now == pytest.approx(
            timedelta(seconds=5 * GAP), abs=timedelta(seconds=1))
        nursery.cancel_scope.cancel()
