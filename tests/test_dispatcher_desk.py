"""The dispatcher answers admissions without waiting for the database: while its hand-over task
is stuck on a read of the queue, an admission is answered, sees the sends accepted meanwhile,
and counts the messages the bridge has credit for as handed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

import psycopg
import trio

from actors.dispatcher import Dispatcher
from actors.ledger import Ledger
from kosmo import wire
from kosmo.clock import utcnow
from kosmo.ledger_store import Accepted
from kosmo.messages import NewMessage
from tests.conftest import WANDERER
from tests.dispatching import dispatching

NODE = "!a1b2c3d4"


async def _blocked_on_a_lock(sql: psycopg.Connection[Any]) -> None:
    """Returns once another session waits for a lock (the dispatcher's read of the queue)."""
    with trio.fail_after(10):
        while True:
            row = sql.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type ="
                              " 'Lock' AND datname = current_database()").fetchone()
            if row is not None and row[0] > 0:
                return
            await trio.sleep(0.01)


async def test_an_admission_is_answered_while_a_hand_over_waits_for_the_database(
        database_url: str) -> None:
    async with dispatching(database_url, "desk") as setup:
        db, membership, handed = setup.db, setup.membership, setup.handed
        dispatcher = Dispatcher(db, hand=setup.hand, message_ttl=3600, refresh=3600,
                                process_id=membership.process_id)
        ledger = Ledger(db, dispatch=dispatcher.accepted, message_ttl=3600)
        with psycopg.connect(database_url, autocommit=True) as sql, \
                psycopg.connect(database_url, autocommit=True) as locker:
            sql.execute("INSERT INTO coverage (bridge_id, node_id, last_heard, hops_away,"
                        " updated_at) VALUES ('b1', %s, now(), 0, now())", (NODE,))
            async with trio.open_nursery() as nursery:
                await nursery.start(membership.run)
                await nursery.start(dispatcher.run)
                await nursery.start(ledger.run)
                await dispatcher.bridge_state("b1", wire.BridgeState("b1", "online", {"credit": 1}))
                for text in ("first", "second"):
                    assert isinstance(await ledger.send(WANDERER, NODE, text), Accepted)
                await dispatcher.synced()
                assert [m.text for m in handed] == ["first"]  # the bridge's credit is 1
                assert dispatcher.waiting() == {"b1": 1}

                locker.execute("BEGIN")
                locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                try:
                    await dispatcher.settled()  # a read of the queue, which waits for the lock
                    await _blocked_on_a_lock(sql)

                    with trio.fail_after(5):
                        admission = await dispatcher.admit(WANDERER, NODE, "third")
                    assert (admission.bridge_id, admission.queue_position) == ("b1", 2)

                    # A send the ledger accepted meanwhile is in the queue the next admission sees.
                    now = utcnow()
                    await dispatcher.accepted([NewMessage(uuid4(), WANDERER, NODE, "third", now,
                                                          now + timedelta(hours=1))])
                    with trio.fail_after(5):
                        admission = await dispatcher.admit(WANDERER, NODE, "fourth")
                    assert (admission.bridge_id, admission.queue_position) == ("b1", 3)

                    # The bridge's credit grew to 3: the next claim hands both waiting messages,
                    # not yet run, so a new one would be the next to be handed.
                    await dispatcher.bridge_state("b1", wire.BridgeState("b1", "online",
                                                                         {"credit": 3}))
                    with trio.fail_after(5):
                        admission = await dispatcher.admit(WANDERER, NODE, "fifth")
                    assert (admission.bridge_id, admission.queue_position) == ("b1", 1)
                finally:
                    locker.execute("ROLLBACK")  # else the read waits forever
                await dispatcher.synced()
                # The second now fits the credit; the third was never stored (the claim finds it
                # gone, and the dispatcher forgets it).
                assert [m.text for m in handed] == ["first", "second"]
                assert dispatcher.waiting() == {}
                nursery.cancel_scope.cancel()
