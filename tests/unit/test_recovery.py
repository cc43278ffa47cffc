"""The dispatcher's start on its own, with a fake store: a Postgres away at start is no crash."""

from __future__ import annotations

import pytest

from actors.dispatcher.recovery import leave_to_the_table
from actors.errors import StoreUnavailable
from actors.handoff import open_hand_off
from actors.messages import Outgoing


class _Store:
    def __init__(self, error: StoreUnavailable | None) -> None:
        self.error, self.asked = error, 0

    async def lapse_leases(self, owner: str) -> int:
        self.asked += 1
        if self.error:
            raise self.error
        return 3


async def test_a_start_leaves_memory_to_the_table_and_survives_a_postgres_that_is_away() -> None:
    send, inbox = open_hand_off(10, 100)
    with send.reserve(1, 1) as room:
        assert room is not None
        room.send(Outgoing(["a"], [b"x"], 1.0))
    away = _Store(StoreUnavailable("Postgres: connection refused"))  # no SQLSTATE: transient
    await leave_to_the_table(away, inbox, "me")  # type: ignore[arg-type]  # a fake store
    assert away.asked == 1 and inbox.statistics().events == 0  # the group was left to the table

    refused = _Store(StoreUnavailable("Postgres: permission denied", sqlstate="42501"))
    with pytest.raises(StoreUnavailable):  # rights: a retry cannot help, the supervisor hears of it
        await leave_to_the_table(refused, inbox, "me")  # type: ignore[arg-type]
