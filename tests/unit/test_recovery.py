"""The dispatcher's start on its own, with a fake store: what an earlier run held is left to the table,
and a Postgres away at start is no crash."""

from __future__ import annotations

import math

import pytest
import trio

from actors.config import EmitterConfig
from actors.dispatcher.gathering import Gatherer
from actors.dispatcher.recovery import leave_to_the_table
from actors.errors import StoreUnavailable
from actors.handoff import open_hand_off
from actors.messages import Outgoing

CONFIG = EmitterConfig(lease_duration=60.0, publish_timeout=5.0)


class _Store:
    def __init__(self, error: StoreUnavailable | None = None) -> None:
        self.error, self.asked = error, 0

    async def lapse_leases(self, owner: str, *, lease: float) -> tuple[int, int]:
        self.asked += 1
        if self.error:
            raise self.error
        return 3, 1234  # lapsed, and this run's floor


async def test_a_start_ends_the_leases_and_leaves_groups_committed_before_that_to_the_table(autojump_clock) -> None:
    store = _Store()
    start = await leave_to_the_table(store, CONFIG)  # type: ignore[arg-type]  # a fake store
    # A group whose commit was sent before the leases ended is stale; one sent after is not.
    assert store.asked == 1 and start.stale_before == trio.current_time() + 60 - 2 * 5
    assert start.run_floor == 1234  # claims older than this start are the earlier run's


async def test_a_start_survives_a_postgres_that_is_away_and_then_publishes_every_group_from_memory() -> None:
    away = _Store(StoreUnavailable("Postgres: connection refused"))  # no SQLSTATE: transient
    start = await leave_to_the_table(away, CONFIG)  # type: ignore[arg-type]
    assert (start.stale_before, start.run_floor) == (-math.inf, 0)

    refused = _Store(StoreUnavailable("Postgres: permission denied", sqlstate="42501"))
    with pytest.raises(StoreUnavailable):  # rights: a retry cannot help, the supervisor hears of it
        await leave_to_the_table(refused, CONFIG)  # type: ignore[arg-type]


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
