"""The dispatcher's Gatherer on its own: committed groups from a memory channel -> publish batches.

The hand-off channel is fed as the persister feeds it; time is trio's virtual clock.
"""

from __future__ import annotations

import math

import trio

from actors.dispatcher.gathering import Gatherer
from actors.handoff import HandOffSender, open_hand_off
from actors.messages import Outgoing

LINGER = 0.02


def committed(ids: str, *, size: int = 10, publish_by: float = math.inf) -> Outgoing:
    """A group commit of one event per letter of ``ids``, each ``size`` bytes."""
    return Outgoing(list(ids), [b"x" * size for _ in ids], publish_by)


def hand_over(send: HandOffSender, *groups: Outgoing) -> None:
    """What the persister does: reserve room for the group, then send it."""
    for group in groups:
        with send.reserve(len(group), sum(map(len, group.payloads))) as room:
            assert room is not None
            room.send(group)


async def gather_all(gatherer: Gatherer) -> list[str]:
    """Every batch until the inbox ends, each as its ids joined."""
    batches = []
    while await gatherer.wait_for_work():
        batches.append("".join((await gatherer.gather()).event_ids))
    return batches


async def test_groups_are_cut_into_batches_of_the_batch_size_and_the_budget_comes_back_as_they_leave_the_channel(
        autojump_clock) -> None:
    send, inbox = open_hand_off(max_events=100, max_bytes=10_000)
    hand_over(send, committed("abcde"), committed("fgh"))
    gatherer = Gatherer(inbox, batch_size=3, max_bytes=1_000_000, linger=LINGER)
    started = trio.current_time()
    assert "".join((await gatherer.gather()).event_ids) == "abc"
    assert trio.current_time() == started  # a full batch goes without waiting for the linger
    assert inbox.statistics().events == 3  # the first group left the channel: its room is back
    send.close()
    assert await gather_all(gatherer) == ["def", "gh"]  # a batch spans groups, in order
    assert (inbox.statistics().events, inbox.statistics().bytes) == (0, 0)


async def test_a_short_batch_waits_the_linger_for_more_and_takes_what_arrives_within_it(autojump_clock) -> None:
    send, inbox = open_hand_off(max_events=100, max_bytes=10_000)
    gatherer = Gatherer(inbox, batch_size=10, max_bytes=1_000_000, linger=LINGER)
    hand_over(send, committed("ab"))
    started = trio.current_time()
    assert (await gatherer.gather()).event_ids == ["a", "b"]
    assert trio.current_time() - started == LINGER  # waited the whole linger, no longer

    async def later() -> None:
        await trio.sleep(LINGER / 2)
        hand_over(send, committed("d"))
        await trio.sleep(LINGER)
        hand_over(send, committed("e"))  # after the linger: the next batch's

    hand_over(send, committed("c"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert (await gatherer.gather()).event_ids == ["c", "d"]
    send.close()
    assert await gather_all(gatherer) == ["e"]


async def test_a_group_whose_lease_runs_short_is_left_to_the_table_and_gives_its_room_back(autojump_clock) -> None:
    send, inbox = open_hand_off(max_events=100, max_bytes=10_000)
    now = trio.current_time()
    hand_over(send, committed("ab", publish_by=now - 1), committed("cd", publish_by=now + 60))
    send.close()
    gatherer = Gatherer(inbox, batch_size=10, max_bytes=1_000_000, linger=LINGER)
    assert await gather_all(gatherer) == ["cd"]
    assert inbox.statistics().events == 0


async def test_the_rest_of_a_group_whose_lease_ran_short_while_queued_is_left_to_the_table(autojump_clock) -> None:
    send, inbox = open_hand_off(max_events=100, max_bytes=10_000)
    hand_over(send, committed("abc", publish_by=trio.current_time() + 1), committed("d"))
    send.close()
    gatherer = Gatherer(inbox, batch_size=1, max_bytes=1_000_000, linger=LINGER)
    assert (await gatherer.gather()).event_ids == ["a"]
    await trio.sleep(2)  # virtual: "b" and "c" wait in memory past their publish_by
    assert await gather_all(gatherer) == ["d"]


async def test_batches_stay_under_the_byte_cap_and_an_event_alone_above_it_goes_alone(autojump_clock) -> None:
    send, inbox = open_hand_off(max_events=100, max_bytes=100_000)
    # 100-byte events are framed in 102 bytes: two fit in 250, three do not.
    hand_over(send, committed("abcde", size=100), committed("L", size=1000), committed("fg", size=100))
    send.close()
    gatherer = Gatherer(inbox, batch_size=10, max_bytes=250, linger=LINGER)
    assert await gather_all(gatherer) == ["ab", "cd", "e", "L", "fg"]
