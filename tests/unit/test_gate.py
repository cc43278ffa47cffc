"""The delivery gate on its own, with a fake Chip, on trio's virtual clock."""

from __future__ import annotations

import random

import trio

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
