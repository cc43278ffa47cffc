"""Admission (``max_pending``): whether an emit may add a row now.

It keeps no count that several actors write: it derives the pending-row
estimate from three counts, each with one writer: the sampler's last count of
the table, the persister's commits and the acker's removals since that count
began. (The memory budget of the hand-off is :mod:`actors.handoff`'s.)
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
