"""The acker's logic on its own: what it gathers from its inbox before one write, and how it writes
(split until a poison item is alone, retry transient failures with backoff, raise permanent ones),
with fake write functions and trio's virtual clock."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio

from actors.acker import _RETRY, _collect, _Writer
from actors.core.answers import Rejection
from actors.core.backoff import Backoff
from actors.errors import StoreUnavailable
from actors.messages import Barrier, Delivered, Outcome, Rejected


async def test_outcomes_queued_together_are_one_write_with_each_id_once() -> None:
    send, inbox = trio.open_memory_channel[Outcome](10)
    send.send_nowait(Delivered(("b", "c")))
    send.send_nowait(Rejected((Rejection("x", "SCHEMA_MISSING", "again"),)))
    send.send_nowait(Delivered(("a",)))
    delivered, rejected, barrier = _collect(Delivered(("a", "b")), inbox, limit=100)
    first = Rejected((Rejection("x", "SCHEMA_MISSING", "first"),))
    assert delivered == ["a", "b", "c"]
    assert rejected == [Rejection("x", "SCHEMA_MISSING", "again")]  # the last reason wins
    send.send_nowait(first)
    send.send_nowait(Delivered(("d",)))
    delivered, rejected, barrier = _collect(Delivered(tuple("pqr")), inbox, limit=2)
    assert (delivered, rejected, barrier) == (["p", "q", "r"], [], None)  # the limit: the rest waits for the next write
    assert inbox.receive_nowait() == first


async def test_a_barrier_ends_what_is_gathered_so_that_it_is_passed_once_those_are_written() -> None:
    send, inbox = trio.open_memory_channel[Outcome](10)
    barrier = Barrier(trio.Event())
    send.send_nowait(Delivered(("b",)))
    send.send_nowait(barrier)
    send.send_nowait(Delivered(("c",)))
    assert _collect(Delivered(("a",)), inbox, limit=100) == (["a", "b"], [], barrier)
    assert inbox.receive_nowait() == Delivered(("c",))  # after the barrier: the next write's


# -- the isolating writer, with fake writes --------------------------------------------

POISON, TRANSIENT, PERMANENT = "23514", "08006", "42501"  # check_violation, connection_failure, insufficient_privilege


class FakeWrites:
    """A write function that refuses any batch holding ``poison`` (SQLSTATE 23514) and records every call."""

    def __init__(self, poison: str = "bad") -> None:
        self.poison = poison
        self.calls: list[list[str]] = []
        self.written: list[str] = []

    async def write(self, items: Sequence[str]) -> int:
        self.calls.append(list(items))
        await trio.lowlevel.checkpoint()
        if self.poison in items:
            raise StoreUnavailable("new row violates check constraint", sqlstate=POISON)
        self.written += items
        return len(items)


async def isolating(write: Callable[[Sequence[str]], Awaitable[int]], items: Sequence[str],
                    last_resort: Callable[[str, StoreUnavailable], str] | None) -> int:
    """``_Writer.isolating`` with backoff 1 s x2 up to 10 s and a seeded jitter, within a virtual hour
    (on the autojump clock a writer that retries forever fails instead of hanging)."""
    writer = _Writer(Backoff(initial=1.0, multiplier=2.0, cap=10.0))
    writer.rng = random.Random(7)
    with trio.fail_after(3600):
        return await writer.isolating(write, items, last_resort)


async def test_a_poison_item_is_split_out_alone_and_only_it_is_written_in_its_plain_form(autojump_clock) -> None:
    writes = FakeWrites()
    items = ["a", "b", "c", "d", "e", "bad", "g", "h"]
    plain: list[str] = []

    def last_resort(item: str, error: StoreUnavailable) -> str:
        plain.append(item)
        assert error.sqlstate == POISON
        return f"plain {item}"

    assert await isolating(writes.write, items, last_resort) == 8
    assert plain == ["bad"]  # applied to exactly the poison item, once
    assert sorted(writes.written) == sorted([*"abcdegh", "plain bad"])  # everything else written as given, once
    # Halves containing the poison item are split again until it stands alone; the others go whole.
    assert writes.calls == [items, items[:4], items[4:], ["e", "bad"], ["e"], ["bad"], ["plain bad"], ["g", "h"]]


async def test_a_poison_item_with_no_plain_form_is_raised_once_alone_and_the_items_before_it_are_written(
        autojump_clock) -> None:
    writes = FakeWrites()
    with pytest.raises(StoreUnavailable) as raised:
        await isolating(writes.write, ["a", "b", "bad", "d"], None)
    assert raised.value.sqlstate == POISON
    assert writes.calls[-1] == ["bad"] and writes.written == ["a", "b"]


async def test_transient_failures_are_retried_with_backoff_then_the_write_succeeds(autojump_clock) -> None:
    failures = [StoreUnavailable("connection lost", sqlstate=TRANSIENT), StoreUnavailable("no answer", sqlstate=None),
                StoreUnavailable("lock timeout", sqlstate="55P03")]
    calls: list[float] = []

    async def write(items: Sequence[str]) -> int:
        calls.append(trio.current_time())
        if failures:
            raise failures.pop(0)
        return len(items)

    expected = Backoff(1.0, 2.0, 10.0)
    rng = random.Random(7)
    delays = [expected.delay(attempt, rng) for attempt in range(3)]  # the writer's own draws, in order
    start = trio.current_time()
    assert await isolating(write, ["a", "b"], None) == 2
    assert len(calls) == 4
    assert [round(t - start, 9) for t in calls] == [0.0, round(delays[0], 9), round(sum(delays[:2]), 9),
                                                    round(sum(delays), 9)]
    assert all(d <= expected.ceiling(i) for i, d in enumerate(delays)) and sum(delays) > 0


async def test_a_permanent_failure_is_raised_at_once_without_retrying_or_splitting(autojump_clock) -> None:
    calls: list[list[str]] = []

    async def write(items: Sequence[str]) -> int:
        calls.append(list(items))
        raise StoreUnavailable("permission denied for table chip_durable_events", sqlstate=PERMANENT)

    start = trio.current_time()
    with pytest.raises(StoreUnavailable, match="permission denied"):
        await isolating(write, ["a", "b", "c"], lambda item, error: item)
    assert calls == [["a", "b", "c"]] and trio.current_time() == start


async def test_a_transient_failure_inside_a_split_is_retried_there(autojump_clock) -> None:
    writes = FakeWrites()
    hiccup = [StoreUnavailable("connection lost", sqlstate=TRANSIENT)]

    async def write(items: Sequence[str]) -> int:
        if items == ["c", "bad"] and hiccup:  # the half holding the poison item meets a lost connection first
            raise hiccup.pop()
        return await writes.write(items)

    assert await isolating(write, ["a", "b", "c", "bad"], lambda item, error: f"plain {item}") == 4
    assert sorted(writes.written) == ["a", "b", "c", "plain bad"]


async def test_once_postgres_answers_again_deletes_follow_within_half_a_second(autojump_clock) -> None:
    """Delivered rows not yet deleted are what a host killed now would publish again: the acker's own
    retry schedule (not retry_max's 5 s) finds Postgres back within half a second."""
    back_at = 30.0  # Postgres away for the first 30 s (virtual)
    attempts: list[float] = []

    async def delete(items: Sequence[str]) -> int:
        attempts.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if trio.current_time() < back_at:
            raise StoreUnavailable("connection refused", sqlstate=TRANSIENT)
        return len(items)

    writer = _Writer(_RETRY)
    with trio.fail_after(3600):
        assert await writer.isolating(delete, ["a"], None) == 1
    assert attempts[-1] - back_at <= 0.5
    assert max(later - earlier for earlier, later in zip(attempts, attempts[1:], strict=False)) <= 0.5
