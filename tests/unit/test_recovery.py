"""The dispatcher's start on its own, with a fake store: what an earlier run held is left to the table,
and a Postgres away at start is no crash."""

from __future__ import annotations

import pytest
import trio

from actors.config import EmitterConfig
from actors.dispatcher.gathering import Gatherer
from actors.dispatcher.recovery import leave_to_the_table
from actors.errors import StoreUnavailable
from actors.handoff import open_hand_off
from actors.messages import Barrier, Delivered, Outcome, Outgoing

CONFIG = EmitterConfig(lease_duration=60.0, publish_timeout=5.0)


class _Store:
    def __init__(self, error: StoreUnavailable | None = None) -> None:
        self.error, self.asked = error, 0

    async def lapse_leases(self, owner: str, *, lease: float) -> tuple[int, int]:
        self.asked += 1
        if self.error:
            raise self.error
        return 3, 1234  # lapsed, and this run's floor


async def _acker(inbox: trio.MemoryReceiveChannel[Outcome], written: list[object]) -> None:
    """An acker that writes each outcome (records it) and passes each barrier after what came before."""
    async for item in inbox:
        if isinstance(item, Barrier):
            item.passed.set()
        written.append(item)


async def test_a_start_ends_the_leases_once_the_acker_wrote_what_the_earlier_run_told_it(autojump_clock) -> None:
    store, written = _Store(), []
    send, inbox = trio.open_memory_channel[Outcome](10)
    send.send_nowait(Delivered(("delivered by the earlier run",)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acker, inbox, written)
        start = await leave_to_the_table(store, CONFIG, send)  # type: ignore[arg-type]  # a fake store
        nursery.cancel_scope.cancel()
    assert isinstance(written[0], Delivered) and isinstance(written[1], Barrier)  # deleted before the lapse
    # A group whose commit was sent before the leases ended is stale; one sent after is not.
    assert store.asked == 1 and start.stale_before == trio.current_time() + 60 - 2 * 5
    assert start.run_floor == 1234  # claims older than this start are the earlier run's


async def test_a_start_survives_a_postgres_that_is_away_and_then_leaves_earlier_groups_to_the_table(
        autojump_clock) -> None:
    send, inbox = trio.open_memory_channel[Outcome](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acker, inbox, [])
        away = _Store(StoreUnavailable("Postgres: connection refused"))  # no SQLSTATE: transient
        start = await leave_to_the_table(away, CONFIG, send)  # type: ignore[arg-type]
        assert away.asked > 1  # asked again, within commit_timeout
        assert start.run_floor == 0 and start.stale_before == trio.current_time() + 60 - 2 * 5

        refused = _Store(StoreUnavailable("Postgres: permission denied", sqlstate="42501"))
        with pytest.raises(StoreUnavailable):  # rights: a retry cannot help, the supervisor hears of it
            await leave_to_the_table(refused, CONFIG, send)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


async def test_groups_committed_before_a_restart_ended_the_leases_go_to_the_table_not_to_chip(
        autojump_clock) -> None:
    send, inbox = open_hand_off(10, 100)
    left: list[list[str]] = []

    async def leave(ids: list[str]) -> None:
        left.append(ids)

    def hand_over(ids: list[str], publish_by: float) -> None:
        with send.reserve(len(ids), len(ids)) as room:
            assert room is not None
            room.send(Outgoing(ids, [b"x"] * len(ids), publish_by))

    stale_before = trio.current_time() + 50  # the restart's lapse answered now
    hand_over(["before"], stale_before - 0.001)  # sent before the lapse answered: maybe lapsed
    hand_over(["after"], stale_before + 0.001)
    gatherer = Gatherer(inbox, 10, 1000, 0.0, stale_before=stale_before, leave=leave)
    batch = await gatherer.gather()
    assert batch.event_ids == ["after"] and left == [["before"]]


async def test_groups_past_their_lease_margin_go_to_the_table_together_not_one_lease_at_a_time(
        autojump_clock) -> None:
    """They waited while Chip was away: left to their leases, they would come back one by one."""
    send, inbox = open_hand_off(100, 1000)
    left: list[list[str]] = []

    async def leave(ids: list[str]) -> None:
        left.append(ids)

    for name in ("a", "b", "c"):
        with send.reserve(1, 1) as room:
            assert room is not None
            room.send(Outgoing([name], [b"x"], trio.current_time() + 1))  # publish_by in a second
    await trio.sleep(2)  # Chip was away meanwhile
    with send.reserve(1, 1) as room:
        assert room is not None
        room.send(Outgoing(["fresh"], [b"x"], trio.current_time() + 50))
    gatherer = Gatherer(inbox, 10, 1000, 0.0, leave=leave)
    batch = await gatherer.gather()
    assert batch.event_ids == ["fresh"] and left == [["a", "b", "c"]]  # one statement for the three
