"""Admission (``max_pending``) and the memory budget of the persister -> dispatcher hand-off.

Neither keeps a count that several actors write. Admission derives the
pending-row estimate from three counts, each with one writer: the sampler's
last count of the table, the persister's commits and the acker's removals
since that count began. The memory budget is the hand-off channel's bound,
counted in events and bytes: room is taken for a group before its commit and
given back the moment the dispatcher takes the group off the channel, so no
actor holds a share it could die with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..errors import BacklogFull
from .instruments import Tally


@dataclass(frozen=True, slots=True)
class TableSample:
    """One count of the whole table, with the local tallies as they stood when it began."""

    rows: int = 0
    payload_bytes: int = 0
    oldest_age_seconds: float = 0.0
    committed_before: int = 0
    settled_before: int = 0


def pending_estimate(sample: TableSample, committed: int, settled: int) -> int:
    """The last count, plus what this instance committed since it began, minus what it removed."""
    return max(0, sample.rows + (committed - sample.committed_before) - (settled - sample.settled_before))


class Admission:
    """Lets ``emit`` through while fewer than ``limit`` rows are pending; else waits, then refuses."""

    def __init__(self, limit: int, sample: Callable[[], TableSample], committed: Tally, settled: Tally,
                 resample_interval: float) -> None:
        self.limit = limit
        self._sample = sample
        self._committed = committed
        self._settled = settled
        self._resample_interval = resample_interval

    @property
    def pending(self) -> int:
        return pending_estimate(self._sample(), self._committed.value, self._settled.value)

    async def wait_for_room(self, timeout: float) -> None:
        """Return at once below the limit; else wait up to ``timeout``, then raise :class:`BacklogFull`.

        Room appears when the acker removes rows (it wakes us) or when a new
        count shows other instances removed some (checked every resample).
        """
        if self.pending < self.limit:
            return
        with trio.move_on_after(timeout):
            while self.pending >= self.limit:
                with trio.move_on_after(self._resample_interval):
                    await self._settled.moved()
            return
        raise BacklogFull(
            f"{self.pending} events are pending (max_pending={self.limit}) and none drained "
            f"for {timeout:g}s: Chip is down or slower than the emit rate; nothing was written"
        )


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    events: int
    bytes: int
    max_events: int
    max_bytes: int


class MemoryBudget:
    """Events and payload bytes waiting in the hand-off channel.

    Past either limit the persister writes groups "spilled" (claimable at
    once) and the dispatcher reads them back from the table, so neither many
    small events nor a few large ones pile up in memory. The dispatcher holds
    at most one group beyond the budget while it cuts it into batches.
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events = 0
        self._bytes = 0

    def try_take(self, events: int, size: int) -> bool:
        if self._events + events > self.max_events or self._bytes + size > self.max_bytes:
            return False
        self._events += events
        self._bytes += size
        return True

    def give_back(self, events: int, size: int) -> None:
        self._events -= events
        self._bytes -= size

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(self._events, self._bytes, self.max_events, self.max_bytes)
