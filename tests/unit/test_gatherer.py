"""The dispatcher's Gatherer on its own: committed groups from a memory channel -> publish batches.

A memory channel and a MemoryBudget stand in for the persister; time is trio's virtual clock.
"""

from __future__ import annotations

import math

import trio

from actors.core.admission import MemoryBudget
from actors.dispatcher import Gatherer
from actors.messages import CommittedGroup, Outgoing

LINGER = 0.02


def committed(ids: str, *, size: int = 10, publish_by: float = math.inf) -> CommittedGroup:
    """A group commit of one event per letter of ``ids``, each ``size`` bytes."""
    payloads = [b"x" * size for _ in ids]
    return CommittedGroup(Outgoing(list(ids), payloads, publish_by), sum(map(len, payloads)))


def hand_over(budget: MemoryBudget, send: trio.MemorySendChannel[CommittedGroup], *groups: CommittedGroup) -> None:
    """What the persister does: take room in the budget, then put the group on the channel."""
    for group in groups:
        assert budget.try_take(len(group.events), group.size)
        send.send_nowait(group)


async def gather_all(gatherer: Gatherer) -> list[str]:
    """Every batch until the inbox ends, each as its ids joined."""
    batches = []
    while await gatherer.wait_for_work():
        batches.append("".join((await gatherer.gather()).event_ids))
    return batches


async def test_groups_are_cut_into_batches_of_the_batch_size_and_the_budget_comes_back_as_they_leave_the_channel(
        autojump_clock) -> None:
    send, inbox = trio.open_memory_channel[CommittedGroup](10)
    budget = MemoryBudget(max_events=100, max_bytes=10_000)
    hand_over(budget, send, committed("abcde"), committed("fgh"))
    gatherer = Gatherer(inbox, budget, batch_size=3, max_bytes=1_000_000, linger=LINGER)
    assert "".join((await gatherer.gather()).event_ids) == "abc"
    assert budget.statistics().events == 3  # the first group left the channel: its room is back
    send.close()
    assert await gather_all(gatherer) == ["def", "gh"]  # a batch spans groups, in order
    assert (budget.statistics().events, budget.statistics().bytes) == (0, 0)


async def test_a_short_batch_waits_the_linger_for_more_and_takes_what_arrives_within_it(autojump_clock) -> None:
    send, inbox = trio.open_memory_channel[CommittedGroup](10)
    budget = MemoryBudget(max_events=100, max_bytes=10_000)
    gatherer = Gatherer(inbox, budget, batch_size=10, max_bytes=1_000_000, linger=LINGER)
    hand_over(budget, send, committed("ab"))
    started = trio.current_time()
    assert (await gatherer.gather()).event_ids == ["a", "b"]
    assert trio.current_time() - started == LINGER  # waited the whole linger, no longer

    async def later() -> None:
        await trio.sleep(LINGER / 2)
        hand_over(budget, send, committed("d"))
        await trio.sleep(LINGER)
        hand_over(budget, send, committed("e"))  # after the linger: the next batch's

    hand_over(budget, send, committed("c"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert (await gatherer.gather()).event_ids == ["c", "d"]
    send.close()
    assert await gather_all(gatherer) == ["e"]


async def test_a_group_whose_lease_runs_short_is_left_to_the_table_and_gives_its_room_back(autojump_clock) -> None:
    send, inbox = trio.open_memory_channel[CommittedGroup](10)
    budget = MemoryBudget(max_events=100, max_bytes=10_000)
    now = trio.current_time()
    hand_over(budget, send, committed("ab", publish_by=now - 1), committed("cd", publish_by=now + 60))
    send.close()
    gatherer = Gatherer(inbox, budget, batch_size=10, max_bytes=1_000_000, linger=LINGER)
    assert await gather_all(gatherer) == ["cd"]
    assert budget.statistics().events == 0


async def test_the_rest_of_a_group_whose_lease_ran_short_while_queued_is_left_to_the_table(autojump_clock) -> None:
    send, inbox = trio.open_memory_channel[CommittedGroup](10)
    budget = MemoryBudget(max_events=100, max_bytes=10_000)
    hand_over(budget, send, committed("abc", publish_by=trio.current_time() + 1), committed("d"))
    send.close()
    gatherer = Gatherer(inbox, budget, batch_size=1, max_bytes=1_000_000, linger=LINGER)
    assert (await gatherer.gather()).event_ids == ["a"]
    await trio.sleep(2)  # virtual: "b" and "c" wait in memory past their publish_by
    assert await gather_all(gatherer) == ["d"]


async def test_batches_stay_under_the_byte_cap_and_an_event_alone_above_it_goes_alone(autojump_clock) -> None:
    send, inbox = trio.open_memory_channel[CommittedGroup](10)
    budget = MemoryBudget(max_events=100, max_bytes=100_000)
    # 100-byte events are framed in 102 bytes: two fit in 250, three do not.
    hand_over(budget, send, committed("abcde", size=100), committed("L", size=1000), committed("fg", size=100))
    send.close()
    gatherer = Gatherer(inbox, budget, batch_size=10, max_bytes=250, linger=LINGER)
    assert await gather_all(gatherer) == ["ab", "cd", "e", "L", "fg"]
