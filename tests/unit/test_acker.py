"""The acker's logic on its own: what it gathers from its inbox before one write."""

from __future__ import annotations

import trio

from actors.acker import _collect
from actors.core.events import Rejection
from actors.messages import Delivered, Outcome, Rejected


async def test_outcomes_queued_together_are_one_write_with_each_id_once() -> None:
    send, inbox = trio.open_memory_channel[Outcome](10)
    send.send_nowait(Delivered(("b", "c")))
    send.send_nowait(Rejected((Rejection("x", "SCHEMA_MISSING", "again"),)))
    send.send_nowait(Delivered(("a",)))
    delivered, rejected = _collect(Delivered(("a", "b")), inbox, limit=100)
    first = Rejected((Rejection("x", "SCHEMA_MISSING", "first"),))
    assert delivered == ["a", "b", "c"]
    assert rejected == [Rejection("x", "SCHEMA_MISSING", "again")]  # the last reason wins
    send.send_nowait(first)
    send.send_nowait(Delivered(("d",)))
    delivered, rejected = _collect(Delivered(tuple("pqr")), inbox, limit=2)
    assert (delivered, rejected) == (["p", "q", "r"], [])  # the limit reached: the rest waits for the next write
    assert inbox.receive_nowait() == first
