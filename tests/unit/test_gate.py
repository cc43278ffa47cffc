"""The delivery gate on its own, with a fake Chip, on trio's virtual clock."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from actors.core.backoff import Backoff
from actors.core.failures import CallFailed
from actors.dispatcher.gate import DeliveryGate
from actors.statistics import DispatcherState


class _Chip:
    def __init__(self) -> None:
        self.probes = 0

    async def probe(self, timeout: float) -> CallFailed | None:
        self.probes += 1
        return None


async def test_a_publish_that_works_while_the_prober_sleeps_ends_probing_without_a_ping(autojump_clock) -> None:
    chip = _Chip()
    async with trio.open_nursery() as nursery:
        gate = DeliveryGate(chip, DispatcherState(), failures_to_pause=3,  # type: ignore[arg-type]  # a fake Chip
                            probe_backoff=Backoff(1.0, 2.0, 5.0), probe_timeout=1.0, rng=random.Random(1),
                            nursery=nursery)
        for _ in range(3):
            gate.call_answered(CallFailed("UNAVAILABLE", "down"))
        assert not gate.open and gate.paused
        await trio.sleep(0.01)  # the prober is asleep before its first ping (its delay is at least 0.5 s)
        gate.call_answered(None)  # a publish sent before the pause came back answered
        assert gate.open and not gate.paused
        await trio.sleep(10)  # well past the prober's first delay
        assert chip.probes == 0
        gate.call_answered(CallFailed("UNAVAILABLE", "down"))
        assert gate.open  # one failure after delivery is up does not pause it: failures_to_pause holds


def _gate(chip: _Chip, nursery: trio.Nursery) -> DeliveryGate:
    return DeliveryGate(chip, DispatcherState(), failures_to_pause=3,  # type: ignore[arg-type]  # a fake Chip
                        probe_backoff=Backoff(1.0, 2.0, 5.0), probe_timeout=1.0, rng=random.Random(1),
                        nursery=nursery)


async def _answered_later(done: list[str]) -> None:
    """A sibling batch: Chip answered it, and it has yet to tell the acker (cancelled now, it is sent again)."""
    await trio.sleep(1)
    done.append("delivered")


async def test_closing_while_paused_lets_held_batches_leave_and_calls_in_flight_finish(autojump_clock) -> None:
    chip, done, left = _Chip(), [], []

    async def held() -> None:
        await gate.wait_open()
        left.append((trio.current_time(), gate.holds))

    async with trio.open_nursery() as nursery:
        gate = _gate(chip, nursery)
        for _ in range(3):
            gate.call_answered(CallFailed("UNAVAILABLE", "down"))
        nursery.start_soon(held)
        nursery.start_soon(_answered_later, done)
        await trio.testing.wait_all_tasks_blocked()
        closing = trio.current_time()
        gate.stop(5.0)
    assert left == [(closing, True)]  # at once, still held: it leaves (its rows stay in the table)
    assert done == ["delivered"]  # the answer in flight was handled
    assert trio.current_time() - closing == 1.0 and chip.probes == 0  # nor did the prober hold the close up


async def test_a_pause_while_closing_cancels_no_call_in_flight(autojump_clock) -> None:
    chip, done = _Chip(), []
    async with trio.open_nursery() as nursery:
        gate = _gate(chip, nursery)
        nursery.start_soon(_answered_later, done)
        await trio.testing.wait_all_tasks_blocked()
        gate.stop(5.0)
        gate.call_answered(CallFailed("UNAUTHENTICATED", "refused"))  # another batch's call: delivery pauses
        assert gate.paused and gate.holds
    assert done == ["delivered"] and chip.probes == 0


async def test_a_retrys_backoff_is_cut_short_where_the_close_leaves_no_time_for_it(autojump_clock) -> None:
    woke = []
    async with trio.open_nursery() as nursery:
        gate = _gate(_Chip(), nursery)

        async def backoff() -> None:
            await gate.sleep(10.0)
            woke.append(trio.current_time())

        nursery.start_soon(backoff)
        await trio.sleep(1.0)
        gate.stop(5.0)  # done within 5 s, half a second of it kept to hand rows back
    assert woke == [pytest.approx(1.0 + 4.5)]
