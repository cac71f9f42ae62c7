"""kosmo.channels.take_waiting: what waits, up to the limit, never waiting, quiet at the end."""

import trio

from kosmo.channels import take_waiting


async def test_takes_what_waits_up_to_the_limit():
    send, receive = trio.open_memory_channel[int](10)
    for i in range(5):
        send.send_nowait(i)
    assert take_waiting(receive, [-1], 3) == [-1, 0, 1]
    assert take_waiting(receive, [], 10) == [2, 3, 4]
    assert take_waiting(receive, [], 10) == []  # nothing waits: no wait for more


async def test_a_closed_channel_ends_the_batch_and_the_next_receive_sees_it():
    send, receive = trio.open_memory_channel[int](10)
    send.send_nowait(1)
    send.close()
    assert take_waiting(receive, [], 10) == [1]
    assert [item async for item in receive] == []


async def test_a_full_batch_takes_nothing():
    send, receive = trio.open_memory_channel[int](10)
    send.send_nowait(1)
    assert take_waiting(receive, [7, 8], 2) == [7, 8]
    assert receive.receive_nowait() == 1


async def test_an_item_that_ends_a_batch_is_its_last():
    send, receive = trio.open_memory_channel[int](10)
    for i in (1, 0, 2, 3):
        send.send_nowait(i)
    assert take_waiting(receive, [], 10, ends_batch=lambda i: i == 0) == [1, 0]
    assert take_waiting(receive, [0], 10, ends_batch=lambda i: i == 0) == [0]
    assert take_waiting(receive, [], 10, ends_batch=lambda i: i == 0) == [2, 3]
